"""The report job: gather the night's inputs, analyse, draw, and publish report.html, report.png, report.json.

    python -m beam_jobs.report --output_root /data/out --ds 2026-11-20 [--model_id M] [--window_days 7]

Not a Beam job: the heavy part (``analysis``) reads tonight twice and each earlier night once, block by
block, in one process. The output folder is staged and swapped in whole, like the jobs' outputs.
"""

from __future__ import annotations

import json
import logging
import time
from typing import Any

from beam_jobs import storage
from beam_jobs.config import UsageError
from beam_jobs.contract import (
    JOB_REPORT,
    MANIFEST,
    REPORT_HTML,
    REPORT_JSON,
    REPORT_PNG,
    REPORT_SECTIONS,
    ReportJson,
    embeddings_dir,
    run_record_path,
)
from beam_jobs.report import inputs as inp
from beam_jobs.report import plots
from beam_jobs.report import vectors as vec
from beam_jobs.report.analysis import Analysis, analyse, map_layers
from beam_jobs.report.config import ReportConfig
from beam_jobs.report.render import Pictures, basename, render_html

LOG = logging.getLogger(__name__)
TEXT_RESERVE = 80_000  # bytes of the page that are not pictures (tables, styles)
NO_DATA_THUMBS = 6  # per duplicate group


class ReportInputError(UsageError):
    """The night has no extraction output at all, or --model_id names a model the night does not hold."""


def choose_model(cfg: ReportConfig, manifest: dict | None, counts: dict[str, int]) -> str | None:
    known = set(counts) | set(inp.model_names(manifest))
    if cfg.model_id:
        if known and cfg.model_id not in known:
            raise ReportInputError(
                f"--model_id {cfg.model_id!r} is not a model of ds={cfg.ds}; it holds {sorted(known)}"
            )
        return cfg.model_id
    if manifest and manifest.get("model_id"):
        return manifest["model_id"]
    return max(counts, key=lambda m: (counts[m], m)) if counts else None


def window_nights(cfg: ReportConfig, model_id: str) -> tuple[dict[str, list[str]], dict[str, int]]:
    """The earlier nights holding rows of ``model_id``: (ds -> files, ds -> its rows of the model)."""
    nights, counts = {}, {}
    for day in inp.earlier_days(cfg.ds, cfg.window_days):
        files = vec.embedding_files(embeddings_dir(cfg.output_root, day))
        count = vec.model_rows(files).get(model_id, 0) if files else 0
        if count:
            nights[day], counts[day] = files, count
    return nights, counts


def thumbnail_uris(analysis: Analysis, duplicates: dict[str, list], movers: int) -> list[str]:
    """Every image the page shows, in priority order (the budget may stop before the last)."""
    uris = [item["image_uri"] for item in analysis.new_tonight]
    for cluster in analysis.clusters[:movers]:
        uris += cluster["examples"]
    for kind in ("exact", "near"):
        for group in duplicates.get(kind) or []:
            uris += group["image_uris"][:NO_DATA_THUMBS]
    return list(dict.fromkeys(uris))


def gather(cfg: ReportConfig, uris: list[str], budget: int):
    from beam_jobs.thumbnails import ThumbnailParams, gather_thumbnails

    params = ThumbnailParams(
        size=cfg.thumbnail_size,
        budget_bytes=max(budget, 0),
        read_timeout_s=cfg.thumbnail_timeout_s,
        time_budget_s=cfg.thumbnail_time_budget_s,
        threads=8,
    )
    return gather_thumbnails(uris, params)


def draw(report: ReportJson, analysis: Analysis, cfg: ReportConfig) -> Pictures:
    pictures = Pictures()
    for figure in report["numbers"]:
        values = [v for _, v in figure["history"]]
        if values or figure["value"] is not None:
            pictures.sparklines[figure["name"]] = plots.sparkline(values, figure["value"], figure["median"])
    if len(analysis.tonight_scores):
        pictures.histogram = plots.score_histogram(
            analysis.tonight_scores, analysis.held_scores, report["novelty"]["threshold"]
        )
    if analysis.clusters:
        pictures.shares = plots.shares_chart(analysis.clusters)
        for cluster in analysis.clusters[: cfg.movers]:
            background, members, ring = map_layers(analysis, cluster["cluster"], cfg.seed)
            pictures.maps[cluster["cluster"]] = plots.cluster_map(background, members, ring, cluster["change"] > 0)
    return pictures


def summary_png(report: ReportJson, images: dict[str, bytes]) -> bytes:
    values = {f["name"]: f for f in report["numbers"]}

    def figure(name: str) -> str:
        entry = values[name]
        median = f"   (median {entry['median']:,.0f})" if entry["median"] is not None else ""
        return f"{entry['value']:,.0f}{median}"

    novelty = report["novelty"]
    counted = [
        name for name in ("inputs", "embedded", "failed") if name in values and values[name]["value"] is not None
    ]
    lines = [(name, figure(name)) for name in counted]
    if novelty.get("rate") is not None:
        band = novelty.get("band")
        usual = (
            f"{novelty.get('status')} its usual band ({100 * band[0]:.1f} to {100 * band[1]:.1f}%)"
            if band
            else "no usual level yet"
        )
        lines.append(("novelty rate", f"{100 * novelty['rate']:.2f}%, {usual}"))
    if report["clusters"]:
        top = report["clusters"][0]
        lines.append(
            (
                f"top mover: cluster #{top['cluster']}",
                f"{100 * top['share_window']:.1f}% → {100 * top['share_tonight']:.1f}% of rows",
            )
        )
    if report["failures"]:
        worst = report["failures"][0]
        lines.append(("most failures", f"{worst['reason']}: {worst['count']:,}"))
    cost = values.get("usd") or values.get("cpu_seconds")
    if cost and cost["value"] is not None:
        lines.append((cost["label"], f"{cost['value']:,.2f}"))
    novel = [
        (images[item["image_uri"]], f"{item['score']:.3g} {basename(item['image_uri'])[:18]}")
        for item in report["new_tonight"]
        if item["image_uri"] in images
    ]
    title = f"Morning report {report['ds']}"
    return plots.summary_png(title, lines, novel, f"model {report['model_id']} · {report['output']}")


def build(cfg: ReportConfig) -> tuple[ReportJson, str, bytes]:
    """The report as data, its page and its picture."""
    folder = embeddings_dir(cfg.output_root, cfg.ds)
    manifest = inp.read_json(storage.join(folder, MANIFEST))
    files = vec.embedding_files(folder)
    failures = inp.failures(folder, manifest)
    if manifest is None and not files and not failures:
        raise ReportInputError(
            f"no extraction output for ds={cfg.ds}: {folder} holds no manifest, embeddings or failures"
        )
    counts = vec.model_rows(files)
    model_id = choose_model(cfg, manifest, counts)
    sections: dict[str, str | None] = dict.fromkeys(REPORT_SECTIONS)
    record = inp.read_json(run_record_path(cfg.output_root, cfg.ds))
    if manifest is None:
        sections["numbers"] = f"no extraction manifest in {folder}: counts unknown (failures read from its files)"

    tonight_rows = counts.get(model_id, 0) if model_id else 0
    nights, window_counts = window_nights(cfg, model_id) if model_id else ({}, {})
    analysis = Analysis()
    if not tonight_rows:
        inputs = (manifest or {}).get("inputs")
        of = f" (0 of {inputs:,} inputs embedded; see the failures)" if isinstance(inputs, int) else ""
        analysis.why = f"no embeddings of {model_id or 'any model'} tonight{of}"
    elif not nights:
        analysis.why = (
            f"no earlier night of {model_id} within the {cfg.window_days} day(s) before {cfg.ds}: nothing to compare"
        )
    else:
        analysis = analyse(cfg, model_id, files, tonight_rows, nights, window_counts)
    sections["new_tonight"] = sections["clusters"] = analysis.why

    tonight_figures = inp.night_figures(manifest, record, {"novelty": analysis.novelty})
    numbers = inp.figures(cfg.output_root, cfg.ds, cfg.history_nights, tonight_figures)

    folders = inp.projection_folders(cfg.output_root, cfg.ds, model_id, manifest)
    found = inp.projections(folders, model_id)
    drift, sections["drift"] = inp.drift_entries(found)
    duplicates, index_manifest, why_index = inp.index_duplicates(cfg.output_root, cfg.ds, model_id)
    if why_index:
        sections["duplicates"] = why_index
        if files and model_id:
            duplicates = {"exact": inp.exact_duplicates_within(files, model_id)}
            if duplicates["exact"]:
                sections["duplicates"] = f"{why_index}; below, tonight's own exact duplicates (same content_sha256)"
    models, sections["models"] = inp.comparison(cfg.output_root, cfg.ds, manifest)
    links = inp.links(cfg.output_root, cfg.ds, folders, found, index_manifest)
    if not links:
        sections["links"] = "nothing to link: the night has no maps and no index"

    report: ReportJson = {
        "job": JOB_REPORT,
        "run_id": cfg.run_id,
        "ds": cfg.ds,
        "model_id": model_id,
        "window_days": cfg.window_days,
        "window_nights": sorted(nights),
        "output": cfg.output,
        "sections": sections,
        "numbers": numbers,
        "failures": failures,
        "new_tonight": analysis.new_tonight,
        "novelty": analysis.novelty,
        "clusters": analysis.clusters,
        "clustering": analysis.clustering,
        "duplicates": duplicates,
        "drift": drift,
        "models": models,
        "links": links,
        "thumbnails": {},
        "html_bytes": 0,
        "files": {
            "html": storage.join(cfg.output, REPORT_HTML),
            "png": storage.join(cfg.output, REPORT_PNG),
            "json": storage.join(cfg.output, REPORT_JSON),
        },
        "started_at": "",
        "finished_at": "",
        "seconds": 0.0,
    }
    pictures = draw(report, analysis, cfg)
    plotted = sum(len(p) for p in [*pictures.sparklines.values(), *pictures.maps.values()])
    plotted += len(pictures.histogram or b"") + len(pictures.shares or b"")
    budget = int(cfg.max_html_mb * 1e6) - TEXT_RESERVE - (4 * plotted) // 3
    uris = thumbnail_uris(analysis, duplicates, cfg.movers)
    thumbs = gather(cfg, uris, budget)
    pictures.thumbs = {uri: src for i, uri in enumerate(uris) if (src := thumbs.data_uri(i))}
    report["thumbnails"] = {
        "wanted": len(uris),
        "shown": len(pictures.thumbs),
        "misses": thumbs.misses,
        "seconds": round(thumbs.seconds, 3),
        "size": cfg.thumbnail_size,
    }
    from beam_jobs.runtime import utc_stamp

    report["started_at"] = utc_stamp(cfg.started_at)
    report["finished_at"] = utc_stamp(time.time())
    report["seconds"] = round(time.time() - cfg.started_at, 3)
    page = render_html(report, pictures)
    report["html_bytes"] = len(page.encode("utf-8"))
    images = {uri: thumbs.images[i] for i, uri in enumerate(uris) if i in thumbs.images}
    return report, page, summary_png(report, images)


def publish(cfg: ReportConfig, report: ReportJson, page: str, png: bytes) -> None:
    """Stage the three files beside the output and swap them in whole (a re-run replaces the report)."""
    from beam_jobs import publish as swap

    token = swap.run_token(cfg.run_id)
    for step in swap.sweep_leftovers(cfg.output, token):
        LOG.warning("leftovers of an earlier run: %s", step)
    staging = swap.staging_dir_for(cfg.output, token)
    try:
        storage.write_text(storage.join(staging, REPORT_HTML), page)
        storage.write_bytes(storage.join(staging, REPORT_PNG), png)
        storage.write_json(storage.join(staging, REPORT_JSON), dict(report))
        swap.replace_directory(staging, cfg.output)
    except BaseException:
        storage.remove_tree(staging)
        raise


def make_report(cfg: ReportConfig) -> ReportJson:
    report, page, png = build(cfg)
    publish(cfg, report, page, png)
    LOG.info(
        "report %s: %s; sections without content: %s",
        cfg.output,
        json.dumps({k: report["novelty"].get(k) for k in ("rate", "usual", "band", "status")}),
        {k: v for k, v in report["sections"].items() if v},
    )
    return report


def run(argv: list[str] | None = None) -> ReportJson:
    cfg, extra = ReportConfig.parse(argv)
    if extra:
        raise ReportInputError(f"unknown arguments: {' '.join(extra)}")
    LOG.info("report run_id=%s ds=%s root=%s output=%s", cfg.run_id, cfg.ds, cfg.output_root, cfg.output)
    return make_report(cfg)


def report_step(
    output_root: str, ds: str, model_id: str | None, window_days: int, run_id: str | None
) -> dict[str, Any]:
    """What an orchestrator's report task calls after publish: the report with the defaults, and a small summary
    for XCom. Missing optional inputs (projection, reference, index, comparison, run records, earlier nights)
    become sections that say why; only a night with no extraction output at all, or a bad argument, raises
    (``UsageError``): the caller logs it and alerts, and must not fail the night for it."""
    argv = ["--output_root", output_root, "--ds", ds, "--window_days", str(window_days)]
    if model_id:
        argv += ["--model_id", model_id]
    if run_id:
        argv += ["--run_id", run_id]
    cfg, _ = ReportConfig.parse(argv)
    report = make_report(cfg)
    top = report["clusters"][0] if report["clusters"] else None
    return {
        "dir": cfg.output,
        **report["files"],
        "model_id": report["model_id"],
        "sections_missing": {k: v for k, v in report["sections"].items() if v},
        "novelty_rate": report["novelty"].get("rate"),
        "novelty_status": report["novelty"].get("status"),
        "new_tonight": [item["image_uri"] for item in report["new_tonight"][:5]],
        "top_mover": {k: top[k] for k in ("cluster", "share_tonight", "share_window")} if top else None,
        "failed": next((f["value"] for f in report["numbers"] if f["name"] == "failed"), None),
        "html_bytes": report["html_bytes"],
    }
