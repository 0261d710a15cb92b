"""The night's run record: the extraction's check, each output's entry, the cost, as both orchestrators
publish it (``night_record``). Standard library only, like the rest of ``beam_jobs.nightly``.
"""

from __future__ import annotations

from typing import Any

from beam_jobs.contract import (
    COMPARISON_JSON,
    COMPARISON_PNG,
    DEFAULT_MODEL,
    FAILURE_FILES,
    MANIFEST,
    MAP_HTML,
    MAP_MOSAIC,
    MAP_PNG,
    REFERENCE_FILE,
    ComparisonEntry,
    ComparisonReport,
    ExtractionSummary,
    ExtractManifest,
    IndexEntry,
    IndexManifest,
    InputReady,
    ModelSummary,
    ProjectionEntry,
    ReduceManifest,
    RunRecord,
    join,
)
from beam_jobs.nightly.cost import COST_HISTORY_NIGHTS, cost_jump, cost_summary, earlier_records
from beam_jobs.nightly.plan import Plan, reduction_key


class ExtractionRejected(ValueError):
    """The extraction ran but its result must not be published."""


class FrameChanged(RuntimeError):
    """A night's maps are in a frame that is no longer the saved one: the night must not count as published."""


def frame_changes(projections: dict[str, dict[str, Any]], read_json: Any) -> list[str]:
    """For each map drawn in a saved reference's frame: is that reference still the one saved in its folder?

    Two nights that fit a missing reference side by side each project in their own frame; only one of them
    can be the saved one (create-if-absent). The other is caught here, by the reference's run_id and
    created_at, and re-running it projects it in the saved frame.
    """
    moved = []
    for method, manifest in projections.items():
        used = manifest.get("reference") or {}
        if not used.get("dir"):
            continue
        try:
            saved = read_json(join(used["dir"], REFERENCE_FILE))
        except Exception as exc:  # noqa: BLE001 - each store says 'missing' its own way
            moved.append(f"{method}: the reference {used['dir']} cannot be read now ({exc})")
            continue
        same = all(saved.get(key) == used.get(key) for key in ("run_id", "created_at"))
        if not same:
            moved.append(
                f"{method}: drawn with the reference fitted by {used.get('run_id')} at {used.get('created_at')}, "
                f"but {used['dir']} holds the one fitted by {saved.get('run_id')} at {saved.get('created_at')}"
            )
    return moved


def check_extraction(manifest: ExtractManifest, max_failure_rate: float, where: str) -> ExtractionSummary:
    """The extraction manifest's figures, or ExtractionRejected saying what is wrong."""
    inputs, embedded, failed = manifest["inputs"], manifest["embedded"], manifest["failed"]
    rate = failed / inputs if inputs else 0.0
    summary: ExtractionSummary = {
        "inputs": inputs,
        "embedded": embedded,
        "failed": failed,
        "failure_rate": round(rate, 4),
        "failures_by_reason": manifest.get("failures_by_reason", {}),
        "images_per_second": manifest.get("images_per_second"),
        "seconds": manifest.get("seconds"),
        "model_id": manifest.get("model_id"),
        "engines": manifest.get("engines", []),
        "embeddings_dir": where,
        "models": model_summaries(manifest),
    }
    for name, model in summary["models"].items():
        if model["embedded"] == 0 or model["failure_rate"] > max_failure_rate:
            what = "nothing was embedded" if model["embedded"] == 0 else f"{model['failure_rate']:.1%} failed"
            if len(summary["models"]) > 1:
                raise ExtractionRejected(
                    f"model {name}: {what} ({model['failed']} of {inputs} inputs; max_failure_rate "
                    f"{max_failure_rate:.1%}); see {join(where, FAILURE_FILES)}"
                )
    if embedded == 0:
        raise ExtractionRejected(
            f"nothing was embedded: {inputs} input(s), {failed} failed {summary['failures_by_reason']}; "
            f"see {join(where, FAILURE_FILES)}"
        )
    if rate > max_failure_rate:
        raise ExtractionRejected(
            f"{failed} of {inputs} inputs failed ({rate:.1%}), over max_failure_rate {max_failure_rate:.1%}: "
            f"{summary['failures_by_reason']}; see {join(where, FAILURE_FILES)}"
        )
    return summary


def model_summaries(manifest: ExtractManifest) -> dict[str, ModelSummary]:
    """Each model's counts from the manifest's ``models`` (a manifest from before it: its one model)."""
    inputs = manifest["inputs"]
    models = manifest.get("models") or {
        manifest.get("model") or DEFAULT_MODEL: {
            "model_id": manifest.get("model_id"),
            "embedded": manifest["embedded"],
            "failed": manifest["failed"],
            "images_per_second": manifest.get("images_per_second"),
        }
    }
    return {
        name: {
            "model_id": m["model_id"],
            "embedded": m["embedded"],
            "failed": m["failed"],
            "failure_rate": round(m["failed"] / inputs, 4) if inputs else 0.0,
            "images_per_second": m.get("images_per_second"),
        }
        for name, m in models.items()
    }


def comparison_entry(folder: str, report: ComparisonReport) -> ComparisonEntry:
    """The run record's comparison figures, from ``comparison.json``."""
    pairs = [
        {
            "models": pair["models"],
            "images": pair["images"],
            f"knn_overlap_at_{pair['k']}": pair["knn_overlap"]["mean"],
            "distance_spearman": pair["distance_spearman"],
            "linear_cka": pair["linear_cka"],
        }
        for pair in report["comparisons"]
    ]
    return {
        "dir": folder,
        "comparison_json": join(folder, COMPARISON_JSON),
        "comparison_png": join(folder, COMPARISON_PNG),
        "pairs": pairs,
    }


def index_entry(folder: str, manifest: IndexManifest) -> IndexEntry:
    """The run record's index figures, from the index job's manifest."""
    return {
        "dir": folder,
        "rows": manifest["rows"],
        "mode": manifest["mode"],
        "recall_at_10": manifest.get("recall_at_10"),
        "build_seconds": manifest["build_seconds"],
        "exact_duplicate_rows": manifest["exact_duplicate_rows"],
        "near_duplicate_pairs": manifest["near_duplicate_pairs"],
        "partitions": list(manifest.get("partitions") or []),
    }


def _projection_entry(folder: str, manifest: ReduceManifest) -> ProjectionEntry:
    entry: ProjectionEntry = {
        "dir": folder,
        "rows": manifest.get("rows"),
        "seconds": manifest.get("seconds"),
        "map_png": join(folder, MAP_PNG),
        "map_html": join(folder, MAP_HTML),
    }
    if manifest.get("mosaic_images"):
        entry["map_mosaic"] = join(folder, MAP_MOSAIC)
    if "explained_variance_ratio" in manifest:
        entry["explained_variance_ratio"] = manifest["explained_variance_ratio"]
    if manifest.get("trustworthiness") is not None:
        entry["trustworthiness"] = manifest["trustworthiness"]
    # The frame the coordinates are in, and tonight's drift against it.
    for key in ("reference", "drift"):
        if manifest.get(key):
            entry[key] = manifest[key]
    return entry


def run_record(
    plan: Plan,
    extraction: ExtractionSummary,
    projections: dict[str, ReduceManifest],
    jobs: dict[str, dict[str, Any] | None] | None = None,
    index: IndexManifest | None = None,
    reductions: dict[str, ReduceManifest] | None = None,
    comparison: ComparisonReport | None = None,
    input_ready: InputReady | None = None,
    cost: dict[str, Any] | None = None,
) -> RunRecord:
    """What a published run says about itself: counts, throughput and where the maps are.

    ``projections`` maps each method run (of the primary model) to its manifest; ``reductions``
    maps ``reduction_key`` of every (model, method) of the plan to its manifest (the record's
    ``models`` then groups the maps by model); ``jobs`` maps Beam task ids to their ``*_done``
    results, and the Dataflow ones (those with a job id) are recorded with their job metrics.
    """
    dataflow_jobs = {task: job for task, job in (jobs or {}).items() if job and job.get("job_id")}
    record: RunRecord = {
        "ds": plan["ds"],
        "run_id": plan["run_id"],
        "runner": plan["runner"],
        "input": plan["input"],
        "model_id": extraction["model_id"],
        "embeddings": {
            "dir": plan["embeddings_dir"],
            "inputs": extraction["inputs"],
            "embedded": extraction["embedded"],
            "failed": extraction["failed"],
            "images_per_second": extraction["images_per_second"],
            "seconds": extraction["seconds"],
            "engines": [f"{e['engine']} {e['precision']}" for e in extraction.get("engines", [])],
        },
        "projections": {
            method: _projection_entry(plan["projections"][method], manifest) for method, manifest in projections.items()
        },
    }
    summaries = extraction.get("models") or {}
    if summaries:
        by_key = {reduction_key(r): r for r in plan.get("reductions", [])}
        manifests = reductions or {}
        record["models"] = {
            name: {
                "model_id": summary["model_id"],
                "embedded": summary["embedded"],
                "failed": summary["failed"],
                "images_per_second": summary["images_per_second"],
                "projections": {
                    r["method"]: _projection_entry(r["dir"], manifests[key])
                    for key, r in by_key.items()
                    if r["model"] == name and key in manifests
                },
            }
            for name, summary in summaries.items()
        }
    if comparison is not None:
        record["comparison"] = comparison_entry(plan["comparison_dir"], comparison)
    if dataflow_jobs:
        record["dataflow_jobs"] = dataflow_jobs
    if index is not None:
        record["index"] = index_entry(plan["index_dir"], index)
    if input_ready:
        record["input_ready"] = input_ready
    if cost is not None:
        record["cost"] = cost
    return record


def night_record(
    plan: Plan,
    extraction: ExtractionSummary,
    jobs: dict[str, dict[str, Any] | None],
    read_json: Any,
    *,
    input_ready: InputReady | None = None,
    table: dict[str, float] | None = None,
    overridden: bool = False,
    cost_jump_ratio: float = 2.0,
) -> tuple[dict[str, Any], dict[str, dict[str, Any]], str | None]:
    """The night's run record as both orchestrators publish it, from the manifests the plan names.

    Adds the cost (``table``: prices, the defaults when None) and, when it jumped against the earlier
    nights' median, its alert. Returns (record, the projections' manifests by method, the cost alert or
    None); writing the record, alerts and metrics are the orchestrator's. ``read_json(uri)`` reads local
    or object-store JSON the orchestrator's way.
    """
    projections = {method: read_json(join(plan["projections"][method], MANIFEST)) for method in plan["methods"]}
    reduced = {reduction_key(r): read_json(join(r["dir"], MANIFEST)) for r in plan.get("reductions", [])}
    index = read_json(join(plan["index_dir"], MANIFEST)) if plan.get("index") else None
    comparison = read_json(join(plan["comparison_dir"], COMPARISON_JSON)) if plan.get("compare") else None
    flexrs = (plan.get("dataflow") or {}).get("flexrs_goal") == "COST_OPTIMIZED"
    cost = cost_summary(jobs, extraction["embedded"], table, flexrs=flexrs, overridden=overridden)
    history = earlier_records(plan["output_root"], plan["ds"], COST_HISTORY_NIGHTS, read_json)
    jump = cost_jump(cost, [night.get("cost") for night in history], float(cost_jump_ratio))
    if jump:
        cost["alert"] = jump
    record = run_record(
        plan,
        extraction,
        projections,
        jobs,
        index=index,
        reductions=reduced,
        comparison=comparison,
        input_ready=input_ready,
        cost=cost,
    )
    return record, projections, jump
