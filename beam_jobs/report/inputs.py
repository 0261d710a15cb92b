"""The report's small inputs: manifests, failures, run records, earlier reports, the index's duplicates, the
comparison, and where the night's maps are. Each reader returns None (or nothing) for a file that is not
there, so a missing optional input becomes a section's one line, never an error.
"""

from __future__ import annotations

import datetime as dt
import heapq
import json
import statistics
from collections.abc import Callable
from typing import Any

from beam_jobs import storage
from beam_jobs.contract import (
    COMPARISON_JSON,
    DUPLICATES_FILE,
    FAILURE_FILES,
    MANIFEST,
    MAP_HTML,
    MAP_PNG,
    METHODS,
    REFERENCE_FILE,
    REPORT_JSON,
    ReportDuplicateGroup,
    ReportFailureReason,
    ReportFigure,
    comparisons_dir,
    embeddings_dir,
    index_dir,
    projections_dir,
    reports_dir,
    run_record_path,
)

EXAMPLE_URIS = 3
DUPLICATE_GROUPS = 5  # of each kind
GROUP_URIS = 12


def read_json(path: str) -> dict[str, Any] | None:
    try:
        value = storage.read_json(path)
    except Exception:  # noqa: BLE001 - missing or unreadable: the section says so
        return None
    return value if isinstance(value, dict) else None


def exists(path: str) -> bool:
    from apache_beam.io.filesystems import FileSystems

    try:
        return FileSystems.exists(path)
    except Exception:  # noqa: BLE001
        return False


def match(pattern: str) -> list[str]:
    from apache_beam.io.filesystems import FileSystems

    try:
        found = FileSystems.match([pattern])[0].metadata_list
    except Exception:  # noqa: BLE001 - nothing there
        return []
    return sorted(m.path for m in found if "/." not in m.path)


def earlier_days(ds: str, days: int) -> list[str]:
    """The ``days`` dates before ``ds``, newest first."""
    day = dt.date.fromisoformat(ds)
    return [(day - dt.timedelta(days=back)).isoformat() for back in range(1, days + 1)]


# --------------------------------------------------------------------------- the night's extraction


def model_names(manifest: dict[str, Any] | None) -> dict[str, str]:
    """model_id -> its ``--model`` name, from an extraction manifest."""
    names = {}
    for name, figures in ((manifest or {}).get("models") or {}).items():
        if isinstance(figures, dict) and figures.get("model_id"):
            names[figures["model_id"]] = name
    if manifest and manifest.get("model_id") and manifest["model_id"] not in names:
        names[manifest["model_id"]] = manifest.get("model") or manifest["model_id"]
    return names


def failures(folder: str, manifest: dict[str, Any] | None) -> list[ReportFailureReason]:
    """Failures by ``<stage>/<error>``, most first, each with up to 3 URIs (the smallest, so runs agree).
    Counts are the manifest's when it has them (the failures files count every model's failure)."""
    counts: dict[str, int] = {}
    examples: dict[str, list[str]] = {}
    for path in match(storage.join(folder, FAILURE_FILES)):
        try:
            text = storage.read_text(path)
        except Exception:  # noqa: BLE001 - unreadable file: its failures are not shown
            continue
        for line in text.splitlines():
            try:
                record = json.loads(line)
            except ValueError:
                continue
            reason = f"{record.get('stage', '?')}/{record.get('error', '?')}"
            counts[reason] = counts.get(reason, 0) + 1
            uri = str(record.get("image_uri", ""))
            kept = examples.setdefault(reason, [])
            if uri and uri not in kept:
                kept.append(uri)
                if len(kept) > EXAMPLE_URIS:
                    examples[reason] = heapq.nsmallest(EXAMPLE_URIS, kept)
    if manifest and isinstance(manifest.get("failures_by_reason"), dict) and manifest["failures_by_reason"]:
        counts = {str(k): int(v) for k, v in manifest["failures_by_reason"].items()}
    out: list[ReportFailureReason] = [
        {"reason": reason, "count": count, "examples": sorted(examples.get(reason, []))[:EXAMPLE_URIS]}
        for reason, count in counts.items()
    ]
    out.sort(key=lambda f: (-f["count"], f["reason"]))
    return out


# --------------------------------------------------------------------------- tonight in numbers

# (name, label) of each figure, in the table's order.
FIGURES = (
    ("inputs", "inputs"),
    ("embedded", "embedded"),
    ("reused", "reused (same bytes embedded before)"),
    ("failed", "failed"),
    ("failure_rate", "failure rate"),
    ("extraction_seconds", "extraction wall time, s"),
    ("jobs_seconds", "jobs' wall time (extract + maps + index), s"),
    ("usd", "cost, USD (Dataflow)"),
    ("cpu_seconds", "CPU seconds (all jobs)"),
    ("novelty_rate", "novelty rate"),
)


def _number(value: Any) -> float | None:
    if isinstance(value, bool) or not isinstance(value, int | float):
        return None
    return float(value)


def night_figures(manifest: dict | None, record: dict | None, report: dict | None) -> dict[str, float | None]:
    """One night's figures from its extraction manifest, run record and report (None where a file lacks one)."""
    m, r = manifest or {}, record or {}
    inputs = _number(m.get("inputs"))
    failed = _number(m.get("failed"))
    jobs = None
    if r:
        parts = [_number((r.get("embeddings") or {}).get("seconds"))]
        parts += [_number(p.get("seconds")) for p in (r.get("projections") or {}).values() if isinstance(p, dict)]
        parts.append(_number((r.get("index") or {}).get("build_seconds")))
        known = [p for p in parts if p is not None]
        jobs = round(sum(known), 3) if known else None
    cost = r.get("cost") or {}
    novelty = (report or {}).get("novelty") or {}
    return {
        "inputs": inputs,
        "embedded": _number(m.get("embedded")),
        "reused": _number(m.get("reused")),
        "failed": failed,
        "failure_rate": round(failed / inputs, 6) if inputs and failed is not None else None,
        "extraction_seconds": _number(m.get("seconds")),
        "jobs_seconds": jobs,
        "usd": _number(cost.get("usd")),
        "cpu_seconds": _number(cost.get("cpu_seconds")),
        "novelty_rate": _number(novelty.get("rate")),
    }


def figures(
    output_root: str, ds: str, nights: int, tonight: dict[str, float | None], read: Callable = read_json
) -> list[ReportFigure]:
    """Tonight's figures beside the median of the ``nights`` earlier nights that have each (and their values,
    oldest first, for the trend). A figure neither tonight nor any earlier night has is left out."""
    history: dict[str, list[list[Any]]] = {name: [] for name, _ in FIGURES}
    for day in reversed(earlier_days(ds, nights)):
        manifest = read(storage.join(embeddings_dir(output_root, day), MANIFEST))
        record = read(run_record_path(output_root, day))
        report = read(storage.join(reports_dir(output_root, day), REPORT_JSON))
        if not (manifest or record or report):
            continue
        for name, value in night_figures(manifest, record, report).items():
            if value is not None:
                history[name].append([day, value])
    out: list[ReportFigure] = []
    for name, label in FIGURES:
        values = [v for _, v in history[name]]
        if tonight.get(name) is None and not values:
            continue
        out.append(
            {
                "name": name,
                "label": label,
                "value": tonight.get(name),
                "median": round(statistics.median(values), 6) if values else None,
                "nights": len(values),
                "history": history[name],
            }
        )
    return out


# --------------------------------------------------------------------------- maps, reference, drift


def projection_folders(output_root: str, ds: str, model_id: str | None, manifest: dict | None) -> dict[str, str]:
    """method -> the night's projection folder of ``model_id`` (the primary model's path, or ``model=<name>``)."""
    primary = (manifest or {}).get("model_id")
    name = model_names(manifest).get(model_id or "")
    model = None if (model_id is None or model_id == primary or not name) else name
    return {method: projections_dir(output_root, method, ds, model) for method in METHODS}


def projections(folders: dict[str, str], model_id: str | None) -> dict[str, dict[str, Any]]:
    """method -> its manifest, for the night's projections of ``model_id`` that exist."""
    out = {}
    for method, folder in folders.items():
        manifest = read_json(storage.join(folder, MANIFEST))
        if manifest and (model_id is None or manifest.get("model_id") in (None, model_id)):
            out[method] = manifest
    return out


def drift_entries(manifests: dict[str, dict[str, Any]]) -> tuple[dict[str, Any], str | None]:
    """method -> {reference, drift} of each projection drawn in a saved reference, or why there is none."""
    if not manifests:
        return {}, "no projection of this model for the night: no maps, no reference, no drift figures"
    out = {}
    for method, manifest in manifests.items():
        reference = manifest.get("reference") or {}
        if not reference or not manifest.get("drift"):
            continue
        saved = exists(storage.join(reference["dir"], REFERENCE_FILE)) if reference.get("dir") else False
        out[method] = {
            "reference": {k: reference.get(k) for k in ("dir", "mode", "partitions", "fit_rows", "run_id")},
            "reference_present": saved,
            "drift": manifest["drift"],
        }
    if not out:
        methods = ", ".join(sorted(manifests))
        return {}, f"the night's maps ({methods}) were drawn without a saved reference: no drift figures"
    return out, None


# --------------------------------------------------------------------------- duplicates, comparison


def _groups(pairs: list[tuple[str, str, float]], kind: str) -> list[ReportDuplicateGroup]:
    """Connected groups of pairs (union-find), largest first."""
    parent: dict[str, str] = {}

    def root(a: str) -> str:
        while parent.setdefault(a, a) != a:
            parent[a] = parent[parent[a]]
            a = parent[a]
        return a

    for a, b, _ in pairs:
        parent[root(a)] = root(b)
    members: dict[str, set[str]] = {}
    lowest: dict[str, float] = {}
    for a, b, score in pairs:
        top = root(a)
        members.setdefault(top, set()).update((a, b))
        lowest[top] = min(lowest.get(top, 1.0), score)
    groups: list[ReportDuplicateGroup] = [
        {"kind": kind, "size": len(uris), "image_uris": sorted(uris)[:GROUP_URIS], "score": round(lowest[top], 4)}
        for top, uris in members.items()
    ]
    groups.sort(key=lambda g: (-g["size"], -g["score"], g["image_uris"][0]))
    return groups[:DUPLICATE_GROUPS]


def index_duplicates(
    output_root: str, ds: str, model_id: str | None
) -> tuple[dict[str, list[ReportDuplicateGroup]], dict[str, Any] | None, str | None]:
    """(groups by kind, the index manifest, why there are none) from the night's index."""
    import pyarrow.parquet as pq

    folder = index_dir(output_root, ds)
    manifest = read_json(storage.join(folder, MANIFEST))
    if manifest is None:
        return {}, None, f"no index for the night ({folder}): near-duplicates not searched"
    if model_id and manifest.get("model_id") != model_id:
        return {}, manifest, f"the night's index is of model {manifest.get('model_id')!r}, not of {model_id!r}"
    path = storage.join(folder, DUPLICATES_FILE)
    try:
        from apache_beam.io.filesystems import FileSystems

        with FileSystems.open(path, compression_type="uncompressed") as handle:
            table = pq.read_table(handle, columns=["kind", "image_uri", "other_uri", "score"])
    except Exception:  # noqa: BLE001
        return {}, manifest, f"the night's index has no readable {DUPLICATES_FILE}"
    rows = table.to_pydict()
    by_kind: dict[str, list[tuple[str, str, float]]] = {"exact": [], "near": []}
    for kind, a, b, score in zip(rows["kind"], rows["image_uri"], rows["other_uri"], rows["score"], strict=True):
        by_kind.setdefault(kind, []).append((a, b, float(score)))
    return {kind: _groups(pairs, kind) for kind, pairs in by_kind.items()}, manifest, None


def exact_duplicates_within(files: list[str], model_id: str) -> list[ReportDuplicateGroup]:
    """Tonight's own exact duplicates (same content_sha256), from two string columns: when there is no index."""
    import pyarrow as pa
    import pyarrow.compute as pc
    import pyarrow.parquet as pq
    from apache_beam.io.filesystems import FileSystems

    tables = []
    for path in files:
        with FileSystems.open(path, compression_type="uncompressed") as handle:
            table = pq.read_table(handle, columns=["image_uri", "content_sha256", "model_id"])
        tables.append(table.filter(pc.equal(table.column("model_id"), model_id)).drop(["model_id"]))
    if not tables:
        return []
    rows = pa.concat_tables(tables)
    counted = rows.group_by("content_sha256").aggregate([("image_uri", "count_distinct")])
    repeated = counted.filter(pc.greater(counted.column("image_uri_count_distinct"), 1))
    if repeated.num_rows == 0:
        return []
    wanted = rows.filter(pc.is_in(rows.column("content_sha256"), repeated.column("content_sha256")))
    members: dict[str, set[str]] = {}
    for sha, uri in zip(
        wanted.column("content_sha256").to_pylist(), wanted.column("image_uri").to_pylist(), strict=True
    ):
        members.setdefault(sha, set()).add(uri)
    pairs = [(min(u), other, 1.0) for u in members.values() for other in sorted(u)[1:]]
    return _groups(pairs, "exact")


def comparison(output_root: str, ds: str, manifest: dict | None) -> tuple[list[dict[str, Any]], str | None]:
    """The comparison's headline figures per pair, or why there are none."""
    folder = comparisons_dir(output_root, ds)
    report = read_json(storage.join(folder, COMPARISON_JSON))
    if report is None:
        models = (manifest or {}).get("models") or {}
        if len(models) < 2:
            return [], "one model tonight: nothing to compare"
        return [], f"no comparison for the night ({folder})"
    pairs = []
    for pair in report.get("comparisons") or []:
        overlap = pair.get("knn_overlap") or {}
        pairs.append(
            {
                "models": pair.get("models"),
                "images": pair.get("images"),
                "k": pair.get("k"),
                "knn_overlap": overlap.get("mean"),
                "distance_spearman": pair.get("distance_spearman"),
                "linear_cka": pair.get("linear_cka"),
            }
        )
    return pairs, None if pairs else "the comparison holds no pair"


def links(output_root: str, ds: str, folders: dict[str, str], found: dict[str, dict], index_manifest: dict | None):
    """name -> path of the night's maps, explorers and index (only those that exist)."""
    out: dict[str, str] = {}
    for method in sorted(found):
        folder = folders[method]
        for label, name in ((f"map ({method})", MAP_PNG), (f"explorer ({method})", MAP_HTML)):
            path = storage.join(folder, name)
            if exists(path):
                out[label] = path
    if index_manifest is not None:
        out["search (index)"] = index_dir(output_root, ds)
    return out
