"""The nightly run's decisions as plain functions: plan, validate the extraction, build the record.

Both orchestrators call these: the Airflow DAG (through
``image_embeddings_airflow.runs``) and the Kubeflow pipeline
(``pipelines/image_embeddings_kfp.py``), whose steps run in the worker image
where only this package is installed. Standard library only, like
``beam_jobs.contract`` (layout, vocabulary and record shapes come from there),
so importing it keeps DAG parsing light and needs neither Airflow nor Beam.
"""

from __future__ import annotations

import importlib.util
import os
import re
from datetime import UTC, date, datetime, timedelta
from typing import Any, TypedDict

from beam_jobs.contract import (
    COMPARISON_JSON,
    COMPARISON_PNG,
    DATAFLOW_RUNNER,
    DATAFLOW_WORKER_OPTIONS,
    DEFAULT_MODEL,
    ENGINE_AUTO,
    ENGINE_TF,
    ENGINES,
    FAILURE_FILES,
    FLEXRS_GOALS,
    INPUT_READY_RULES,
    MANIFEST,
    MAP_HTML,
    MAP_MOSAIC,
    MAP_PNG,
    MAX_BATCH_SIZE,
    METHODS,
    MODELS,
    POLICY_FIXED,
    POLICY_REFIT,
    POLICY_ROLLING,
    PRECISION_AUTO,
    PRECISION_BF16,
    PRECISIONS,
    REFERENCE_POLICIES,
    RUNNERS,
    WEIGHTS_IMAGENET,
    WEIGHTS_RANDOM,
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
    comparisons_dir,
    embeddings_dir,
    index_dir,
    partition,
    projections_dir,
    references_dir,
    run_record_path,
)

GCS = "gs://"


def is_gcs(uri: str) -> bool:
    return uri.startswith(GCS)


def join(base: str, *parts: str) -> str:
    return "/".join([base.rstrip("/"), *parts])


# Where Dataflow workers install the jobs from (Beam's --setup_file), when no param or Variable says.
SETUP_FILE_ENV = "IMAGE_EMBEDDINGS_SETUP_FILE"
DATAFLOW_SETTINGS = ("project", "region", "temp_location", "staging_location", "setup_file", "sdk_container_image")
# A container image reference (registry/path[:tag][@digest]); anything else would reach the launcher's argv.
IMAGE_REFERENCE = re.compile(r"^[a-z0-9][a-z0-9._/:-]*(@sha256:[0-9a-f]{64})?$")


class Reduction(TypedDict):
    """One (model, method) map of the night: the reduce step the orchestrator maps over."""

    model: str
    method: str
    dir: str


class PlanError(ValueError):
    """Run parameters that cannot work; the run fails at once, before any job starts, without retries."""


# --------------------------------------------------------------------------- confined paths
# Whoever may trigger the DAG chooses input, output_root and weights: without a fence they could have the
# workers read any file the workers can read (its thumbnail lands in map.html) and write under any folder.
ALLOWED_ROOTS_ENV = "IMAGE_EMBEDDINGS_ALLOWED_ROOTS"
DATA_ENV = "IMAGE_EMBEDDINGS_DATA"
DEFAULT_DATA = "/opt/airflow/data"  # the Docker image's IMAGE_EMBEDDINGS_DATA
GLOB_CHARS = re.compile(r"[*?\[]")


def _control_chars(text: str) -> bool:
    return any(ord(c) < 32 or 0x7F <= ord(c) < 0xA0 or c in "\u2028\u2029" for c in text)


def allowed_roots(setting: str | None = None) -> list[str]:
    """The deployment's roots: ``IMAGE_EMBEDDINGS_ALLOWED_ROOTS`` (comma-separated local folders and
    ``gs://bucket[/prefix]``), else the data folder (``IMAGE_EMBEDDINGS_DATA``, else /opt/airflow/data).

    Local roots must be absolute (normalised here; symlinks are resolved when paths are compared);
    a bad entry is a PlanError.
    """
    text = os.environ.get(ALLOWED_ROOTS_ENV) if setting is None else setting
    if not (text or "").strip():
        text = os.environ.get(DATA_ENV) or DEFAULT_DATA
    roots: list[str] = []
    for item in (part.strip() for part in text.split(",")):
        if not item:
            continue
        if _control_chars(item):
            raise PlanError(f"{ALLOWED_ROOTS_ENV}: entry {item!r} holds control characters")
        if is_gcs(item):
            bucket, _, prefix = item[len(GCS) :].partition("/")
            segments = [s for s in prefix.split("/") if s]
            if not bucket or GLOB_CHARS.search(item) or any(s in (".", "..") for s in segments):
                raise PlanError(f"{ALLOWED_ROOTS_ENV}: {item!r} is not a gs://bucket/prefix root")
            roots.append(GCS + "/".join([bucket, *segments]))
        elif os.path.isabs(item) and not GLOB_CHARS.search(item):
            roots.append(os.path.normpath(item))
        else:
            raise PlanError(f"{ALLOWED_ROOTS_ENV}: {item!r} is neither an absolute folder nor a gs:// root")
    return roots


# --------------------------------------------------------------------------- input readiness
# The sensor runs in reschedule mode (and a KFP step may be restarted), so nothing is kept between
# pokes: "unchanged for N minutes" is read from the store's own change times instead. A file added,
# grown or replaced moves its time; locally a file added or removed also moves its folder's mtime.
# Stronger than comparing counts and sizes between two pokes (a same-size replacement shows), and
# it survives a worker restart. On gs:// a deletion moves nothing (GCS has no folders): the count
# then only drops, and the job lists what is there when it starts.


class InputSnapshot(TypedDict):
    files: int
    bytes: int
    newest_change: float | None
    marker_found: bool | None


def literal_folder(pattern: str) -> str:
    """The folder part of a glob before any wildcard: ``/d/ds=1/*.jpg`` -> ``/d/ds=1``."""
    fixed = GLOB_CHARS.split(pattern, maxsplit=1)[0]
    return fixed.rstrip("/") if fixed == pattern and pattern.endswith("/") else fixed.rsplit("/", 1)[0]


def marker_path(input_glob: str, marker: str) -> str:
    return join(literal_folder(input_glob), marker)


def local_snapshot(pattern: str, marker: str | None = None) -> InputSnapshot:
    """Count, total size and latest change of the local files ``pattern`` matches (folders not counted)."""
    import glob as globbing

    files = size = 0
    newest: float | None = None
    folders: set[str] = set()
    for path in globbing.iglob(pattern, recursive=True):
        try:
            stat = os.stat(path)
        except OSError:  # gone between listing and stat: the next poke sees the folder change
            continue
        if not os.path.isfile(path):
            continue
        files, size = files + 1, size + stat.st_size
        # ctime too: a copy that keeps the original mtime (cp -p, rsync -a) still sets it.
        newest = max(newest or 0.0, stat.st_mtime, stat.st_ctime)
        folders.add(os.path.dirname(path))
    for folder in folders or {literal_folder(pattern)}:
        try:
            stat = os.stat(folder)
        except OSError:
            continue
        if files:
            newest = max(newest or 0.0, stat.st_mtime)
    found = os.path.isfile(marker) if marker else None
    return {"files": files, "bytes": size, "newest_change": newest, "marker_found": found}


def input_verdict(
    rule: str, snapshot: InputSnapshot, settle_minutes: float, now: float, marker: str | None = None
) -> tuple[bool, str]:
    """(ready, why) for one look at the input under ``rule``."""
    files, newest = snapshot["files"], snapshot["newest_change"]
    seen = f"{files} file(s), {snapshot['bytes']} bytes"
    if rule == "marker":
        if not snapshot["marker_found"]:
            return False, f"{seen}; waiting for the marker {marker}"
        return (files > 0), f"{seen}; marker {marker} is there" + ("" if files else " but no file matches")
    if not files:
        return False, "no file matches"
    if rule == "any":
        return True, f"{seen}; rule 'any' starts at the first file"
    quiet = now - (newest or now)
    need = float(settle_minutes) * 60
    if quiet >= need:
        return True, f"{seen}, unchanged for {quiet:.0f} s (settle time {need:.0f} s)"
    return False, f"{seen}, last change {quiet:.0f} s ago; waiting until unchanged for {need:.0f} s"


def input_ready_record(rule: str, snapshot: InputSnapshot, marker: str | None, reason: str) -> InputReady:
    return {
        "rule": rule,
        "files": snapshot["files"],
        "bytes": snapshot["bytes"],
        "newest_change": snapshot["newest_change"],
        "marker": marker if rule == "marker" else None,
        "reason": reason,
    }


def _readiness(params: dict[str, Any], input_glob: str) -> tuple[dict[str, Any], list[str]]:
    """The plan's input-readiness keys and the problems with them."""
    import fnmatch

    rule = params.get("input_ready") or "settled"
    settle = float(params.get("input_settle_minutes", 10))
    marker = str(params.get("input_marker") or "")
    problems: list[str] = []
    if rule not in INPUT_READY_RULES:
        problems.append(f"input_ready {rule!r} is not one of {', '.join(INPUT_READY_RULES)}")
    path = None
    if rule == "marker":
        if not marker or "/" in marker or _control_chars(marker) or GLOB_CHARS.search(marker):
            problems.append(f"input_marker {marker!r} must be a plain file name such as _SUCCESS")
        else:
            path = marker_path(input_glob, marker)
            rest = input_glob[len(literal_folder(input_glob)) :].lstrip("/") or "*"
            if fnmatch.fnmatchcase(marker, rest):
                problems.append(
                    f"input_marker {marker!r} matches the input glob {input_glob!r}, so the marker would be read as "
                    "an image: narrow the glob (e.g. '*.jpg') or name a marker it does not match"
                )
    return {"input_ready": rule, "input_settle_minutes": settle, "input_marker": path}, problems


def roots_pattern(roots: list[str], keywords: tuple[str, ...] = ()) -> str:
    """A JSON-schema ``pattern`` (Python and JavaScript regex alike) for the trigger form and the REST API:
    a path under one of ``roots`` (or one of ``keywords``), without control characters or ``.``/``..``
    segments. Lexical only; build_plan also resolves symlinks and stays the authority."""
    special = re.compile(r"([.^$*+?()\[\]{}|\\])")
    under = "|".join(special.sub(r"\\\1", root.rstrip("/")) for root in roots)
    path = r"^(?![\s\S]*[\x00-\x1f\x7f])(?![\s\S]*/\.\.?(/|$))(" + under + r")(/[\s\S]*)?$"
    return f"^({'|'.join(keywords)})$|{path}" if keywords else path


def _under(path: str, root: str) -> bool:
    return path == root or path.startswith(root.rstrip("/") + "/")


def confine(name: str, path: str, roots: list[str]) -> tuple[str, str | None]:
    """``path`` normalised, and the reason it is refused (None when it falls under one of ``roots``).

    Local paths must be absolute; ``..`` is resolved before the check, as are symlinks in the part
    of the path before any wildcard (a link out of the data folder counts where it points).
    On gs:// a ``.`` or ``..`` segment is refused outright (object names are not resolved).
    """
    where = f"the allowed roots ({', '.join(roots)}; set by {ALLOWED_ROOTS_ENV})"
    if _control_chars(path):
        return path, f"{name} {path!r} holds control characters (newline, tab, ...)"
    if is_gcs(path):
        bucket, _, rest = path[len(GCS) :].partition("/")
        segments = rest.split("/")
        if any(s in (".", "..") for s in segments):
            return path, f"{name} {path!r}: '.' and '..' segments are not allowed in gs:// paths"
        # A trailing '/' (a folder) is kept: it decides how the input glob is made.
        normal = GCS + "/".join([bucket, *(s for s in segments[:-1] if s), segments[-1]]) if "/" in path[5:] else path
        candidates = [normal.rstrip("/")]
    else:
        if not os.path.isabs(path):
            return path, (
                f"{name} {path!r} is a relative path (it would resolve against the worker's current folder): "
                f"give an absolute path under {where}"
            )
        normal = os.path.normpath(path) + ("/" if path.endswith("/") and path.rstrip("/") else "")
        fixed = GLOB_CHARS.split(normal, maxsplit=1)[0]
        # Resolve the literal folder part only: wildcards are expanded by the job, under that folder.
        head = fixed if fixed == normal else os.path.dirname(fixed)
        local = [root for root in roots if not is_gcs(root)]
        checks = [(os.path.normpath(normal), local), (os.path.realpath(head or "/"), map(os.path.realpath, local))]
        if all(any(_under(candidate, root) for root in among) for candidate, among in checks):
            return normal, None
        return normal, f"{name} {path!r} is outside {where}"
    if any(_under(candidates[0], root) for root in roots if is_gcs(root)):
        return normal, None
    return normal, f"{name} {path!r} is outside {where}"


class Plan(TypedDict):
    """What the ``plan`` task returns; each key is also its own XCom (``multiple_outputs``).

    Args:
        input: the glob the sensor and the extraction job read (a folder became ``<folder>/*``).
        models: the models of the night, primary first; model: them as the extraction job's ``--model``.
        projections: method -> the primary model's projections partition; ``projections_dir_<method>``
            repeats each one as a top-level key.
        reductions: every (model, method) pair with its partition: what the reduce steps map over.
        compare: two or more models: the comparison report is written to ``comparison_dir``.
        dataflow: Beam options for DataflowRunner (project, region, temp/staging, the worker image or
            setup_file, and the worker set-up in ``DATAFLOW_WORKER_OPTIONS``); None otherwise.
        engine, precision: the extraction job's ``--engine`` and ``--precision``.
        input_varies_by_date: False when every date would read the same files (logged as a warning).
        skip_known: the extraction job's ``--skip_known`` (vectors of content embedded before are reused).
        input_ready, input_settle_minutes, input_marker: when wait_for_input lets the run start
            (``input_marker`` is the marker's full path, beside the input; None unless the rule is marker).
    """

    ds: str
    run_id: str
    input: str
    output_root: str
    embeddings_dir: str
    projections: dict[str, str]
    reductions: list[Reduction]
    methods: list[str]
    runner: str
    models: list[str]
    model: str
    compare: bool
    comparison_dir: str
    weights: str
    engine: str
    precision: str
    batch_size: int
    skip_known: bool
    max_failure_rate: float
    dataflow: dict[str, Any] | None
    input_varies_by_date: bool
    index: bool
    index_dir: str
    index_window_days: int
    duplicate_threshold: float
    reference_policy: str
    references: dict[str, str]
    fit_reference: bool
    reference_window_days: int
    reference_every_days: int
    drift_p_value: float
    novelty_rate_alert: float
    mean_shift_alert: float
    input_ready: str
    input_settle_minutes: float
    input_marker: str | None


def projections_key(method: str) -> str:
    """The plan's top-level key holding ``method``'s projections partition."""
    return f"projections_dir_{method}"


def reference_key(method: str) -> str:
    """The plan's top-level key holding ``method``'s reference folder (empty with reference_policy refit)."""
    return f"reference_dir_{method}"


def default_setup_file() -> str:
    """The project's setup.py on this machine, for Dataflow workers to install the jobs from.

    ``IMAGE_EMBEDDINGS_SETUP_FILE`` when set (the Docker image sets it); else the
    setup.py beside the ``beam_jobs`` package when it is imported from a checkout
    (an editable install). A regular install puts ``beam_jobs`` in site-packages,
    where no setup.py exists: PlanError then says how to configure it.
    """
    configured = os.environ.get(SETUP_FILE_ENV)
    if configured:
        if not os.path.isfile(configured):
            raise PlanError(f"{SETUP_FILE_ENV}={configured!r}: no such file (the project's setup.py)")
        return configured
    # find_spec locates the package without importing it (and so without importing Beam).
    spec = importlib.util.find_spec("beam_jobs")
    package_dirs = list(spec.submodule_search_locations or []) if spec else []
    for package_dir in package_dirs:
        beside = os.path.join(os.path.dirname(package_dir), "setup.py")
        if os.path.isfile(beside):
            return beside
    raise PlanError(
        f"DataflowRunner needs setup_file, the project's setup.py that Dataflow workers install the jobs from: "
        f"beam_jobs is installed at {package_dirs or 'an unknown place'} with no setup.py beside it. "
        f"Set the environment variable {SETUP_FILE_ENV} on the Airflow workers or the Airflow Variable "
        "'image_embeddings_setup_file' to its path"
    )


KEYWORD_WEIGHTS = (WEIGHTS_IMAGENET, WEIGHTS_RANDOM)


def _problems_with_weights(weights: str, runner: str) -> list[str]:
    if weights in KEYWORD_WEIGHTS:
        return []
    if runner == DATAFLOW_RUNNER and not is_gcs(weights):
        return [f"weights {weights!r}: Dataflow workers need a gs:// path to the weights file"]
    if not is_gcs(weights) and not os.path.isfile(weights):
        return [f"weights file {weights!r} does not exist"]
    return []


def _problems_with_dataflow(settings: dict[str, Any], paths: dict[str, str]) -> list[str]:
    problems = [
        f"DataflowRunner needs {name}: set the '{name}' param or the Airflow Variable 'image_embeddings_{name}'"
        for name in ("project", "region", "temp_location")
        if not settings.get(name)
    ]
    image = settings.get("sdk_container_image")
    if image and not IMAGE_REFERENCE.match(str(image)):
        problems.append(
            f"sdk_container_image {image!r} is not a container image reference "
            "(e.g. europe-west4-docker.pkg.dev/acme-ml/images/embeddings-worker:2026-12-01)"
        )
    for name, value in {**paths, "temp_location": settings.get("temp_location")}.items():
        if value and not is_gcs(str(value)):
            problems.append(
                f"{name} {value!r} must be a gs:// path with DataflowRunner (workers cannot see local files)"
            )
    return problems


def build_plan(
    params: dict[str, Any],
    ds: str,
    run_id: str,
    rendered_input: str,
    dataflow: dict[str, Any] | None = None,
    roots: list[str] | None = None,
) -> Plan:
    """Check what the params' schemas cannot (fields together, files) and resolve every path of the run.

    ``params`` have passed the DAG's Param schemas (Airflow validates a run's
    conf when the run is created), so methods, runner, model, batch size and
    failure rate are known to be in range here. ``rendered_input`` is
    ``params["input"]`` with the run's date filled in. ``dataflow`` holds
    project, region, temp_location, staging_location and setup_file (from params
    or Airflow Variables); it is only used with DataflowRunner. ``roots``: where
    input, output_root and weights may be (default: ``allowed_roots()``, the
    deployment's setting); each is normalised and must fall under one of them.
    """
    problems: list[str] = []
    methods, runner, weights = list(params["methods"]), params["runner"], str(params["weights"])
    roots = allowed_roots(None if roots is None else ",".join(roots))
    output_root = str(params["output_root"]).rstrip("/")
    if not output_root:
        problems.append("output_root is required")
    else:
        output_root, refused = confine("output_root", output_root, roots)
        problems += [refused] if refused else []
    if not rendered_input.strip():
        problems.append("input is required (a glob of the night's images)")
    elif "{{" in rendered_input or "{%" in rendered_input:
        problems.append(f"input {rendered_input!r} still holds template syntax after rendering")
    else:
        rendered_input, refused = confine("input", rendered_input, roots)
        problems += [refused] if refused else []
    refused = None
    if weights not in KEYWORD_WEIGHTS:
        weights, refused = confine("weights", weights, roots)
    problems += [refused] if refused else _problems_with_weights(weights, runner)
    if params.get("engine") == ENGINE_TF and params.get("precision") == PRECISION_BF16:
        problems.append("precision bf16 needs engine openvino or auto (engine tf runs f32)")

    dataflow_options: dict[str, str] | None = None
    if runner == DATAFLOW_RUNNER:
        settings = dict(dataflow or {})
        problems += _problems_with_dataflow(settings, {"input": rendered_input, "output_root": output_root})
        # The worker image already holds the jobs; a setup_file too would reinstall them on every worker.
        if not settings.get("setup_file") and not settings.get("sdk_container_image"):
            try:
                settings["setup_file"] = default_setup_file()
            except PlanError as exc:
                problems.append(str(exc))
        settings["staging_location"] = settings.get("staging_location") or settings.get("temp_location")
        dataflow_options = {
            **DATAFLOW_WORKER_OPTIONS,
            **{name: settings[name] for name in DATAFLOW_SETTINGS if settings.get(name)},
        }
        if params.get("flexrs_goal"):
            dataflow_options["flexrs_goal"] = params["flexrs_goal"]
    readiness, refused_readiness = _readiness(
        params, rendered_input.rstrip("/") + "/*" if rendered_input.endswith("/") else rendered_input
    )
    problems += refused_readiness
    if problems:
        raise PlanError("the run's parameters cannot work:\n  - " + "\n  - ".join(problems))

    if not is_gcs(output_root):
        output_root = os.path.abspath(output_root)
    input_glob = rendered_input if is_gcs(rendered_input) else os.path.abspath(rendered_input)
    if rendered_input.endswith("/"):
        # A folder or gs:// prefix means the files directly in it, for the sensor and the job alike.
        input_glob = input_glob.rstrip("/") + "/*"
    models = plan_models(params)
    projections = {method: projections_dir(output_root, method, ds) for method in methods}
    frame = reference_settings(params, output_root, ds, methods)
    reductions: list[Reduction] = [
        {"model": model, "method": method, "dir": projections_dir(output_root, method, ds, model if i else None)}
        for i, model in enumerate(models)
        for method in methods
    ]
    plan: Plan = {
        "ds": ds,
        "run_id": run_id,
        "input": input_glob,
        "output_root": output_root,
        "embeddings_dir": embeddings_dir(output_root, ds),
        "projections": projections,
        "reductions": reductions,
        "methods": methods,
        "runner": runner,
        "models": models,
        "model": ",".join(models),
        "compare": len(models) > 1,
        "comparison_dir": comparisons_dir(output_root, ds),
        "weights": weights if weights in KEYWORD_WEIGHTS or is_gcs(weights) else os.path.abspath(weights),
        "engine": params.get("engine", ENGINE_AUTO),
        "precision": params.get("precision", PRECISION_AUTO),
        "batch_size": params["batch_size"],
        # Params of runs created before it existed lack it: on, as for new nightly runs.
        "skip_known": bool(params.get("skip_known", True)),
        "max_failure_rate": float(params["max_failure_rate"]),
        "dataflow": dataflow_options,
        "input_varies_by_date": ds in rendered_input or ds.replace("-", "") in rendered_input,
        **index_settings(params, output_root, ds),
        **readiness,
        **frame,
    }
    # One top-level key per method's partition and reference.
    return {
        **plan,
        **{projections_key(method): folder for method, folder in projections.items()},
        **{reference_key(method): folder for method, folder in frame["references"].items()},
    }


def plan_models(params: dict[str, Any]) -> list[str]:
    """The night's models, primary first: the ``models`` param, or a run conf's older ``model``."""
    models = params.get("models")
    if not models:
        models = [params.get("model") or DEFAULT_MODEL]
    return [str(m) for m in models]


def reduction_key(reduction: Reduction) -> str:
    """How the run record and the jobs name one reduce step: ``reduce_<method>`` for the primary model, as a
    single-model night's task, ``reduce_<model>_<method>`` for the others."""
    primary = "model=" not in reduction["dir"]
    return f"reduce_{reduction['method']}" if primary else f"reduce_{reduction['model']}_{reduction['method']}"


def index_settings(params: dict[str, Any], output_root: str, ds: str) -> dict[str, Any]:
    """The plan's similarity-index keys (params of older runs lack them: the defaults apply)."""
    return {
        "index": bool(params.get("index", True)),
        "index_dir": index_dir(output_root, ds),
        "index_window_days": int(params.get("index_window_days", 1)),
        "duplicate_threshold": float(params.get("duplicate_threshold", 0.95)),
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
    }


# --------------------------------------------------------------------------- the 2D frame and drift

# Defaults of the DAG's reference and drift params (the KFP pipeline takes the same).
REFERENCE_DEFAULTS: dict[str, Any] = {
    "reference_policy": POLICY_REFIT,
    "reference": "",
    "reference_window_days": 7,
    "reference_every_days": 7,
}
# An alert fires when tonight's MMD p-value is below drift_p_value, or its novelty rate or relative mean
# shift is above its threshold (0 switches that one off). The run itself never fails for drift.
DRIFT_DEFAULTS: dict[str, float] = {"drift_p_value": 0.01, "novelty_rate_alert": 0.1, "mean_shift_alert": 0.5}
EPOCH = date(1970, 1, 1)


def rolling_anchor(ds: str, every_days: int) -> str:
    """The night a rolling reference in use on ``ds`` was fitted for: the latest date <= ds whose day
    number (since 1970-01-01) is a multiple of ``every_days``. Backfills of a date find the same one."""
    day = date.fromisoformat(ds)
    offset = (day - EPOCH).days % max(int(every_days), 1)
    return date.fromordinal(day.toordinal() - offset).isoformat()


def reference_settings(params: dict[str, Any], output_root: str, ds: str, methods: list[str]) -> dict[str, Any]:
    """The plan's frame keys: per method the reference folder the reduce job uses (empty with ``refit``).

    ``fixed``: the ``reference`` param's folder (per method below it), else
    ``<output_root>/references/method=<m>/fixed``; fitted the first night it is missing, on that night and
    the ``reference_window_days`` before it, then reused every night, backfills included.
    ``rolling``: ``<output_root>/references/method=<m>/ds=<anchor>``, the anchor being the night the
    reference was fitted for (every ``reference_every_days`` nights); fitted on the anchor's night and the
    ``reference_window_days`` before it when missing.
    """
    policy = str(params.get("reference_policy") or REFERENCE_DEFAULTS["reference_policy"])
    window = int(params.get("reference_window_days") or REFERENCE_DEFAULTS["reference_window_days"])
    every = int(params.get("reference_every_days") or REFERENCE_DEFAULTS["reference_every_days"])
    chosen = str(params.get("reference") or "").rstrip("/")
    folders: dict[str, str] = {}
    for method in methods:
        if policy == POLICY_FIXED:
            folders[method] = (
                join(chosen, f"method={method}") if chosen else references_dir(output_root, method, "fixed")
            )
        elif policy == POLICY_ROLLING:
            folders[method] = references_dir(output_root, method, partition(rolling_anchor(ds, every)))
        else:
            folders[method] = ""
    thresholds = {name: float(params.get(name, default)) for name, default in DRIFT_DEFAULTS.items()}
    return {
        "reference_policy": policy,
        "references": folders,
        "fit_reference": policy != POLICY_REFIT,
        "reference_window_days": window,
        "reference_every_days": every,
        **thresholds,
    }


def drift_alerts(drift: dict[str, Any] | None, thresholds: dict[str, Any]) -> list[str]:
    """What in tonight's drift figures crosses a threshold (empty: nothing to alert on)."""
    if not drift:
        return []
    out = []
    alpha = float(thresholds.get("drift_p_value", DRIFT_DEFAULTS["drift_p_value"]))
    if alpha > 0 and drift.get("mmd_p_value") is not None and drift["mmd_p_value"] < alpha:
        out.append(
            f"MMD p-value {drift['mmd_p_value']:.4g} < {alpha:g}: tonight's embeddings differ from the reference"
        )
    novelty = float(thresholds.get("novelty_rate_alert", DRIFT_DEFAULTS["novelty_rate_alert"]))
    if novelty > 0 and (drift.get("novelty_rate") or 0) > novelty:
        out.append(f"novelty rate {drift['novelty_rate']:.1%} > {novelty:.1%}: images unlike any in the reference")
    shift = float(thresholds.get("mean_shift_alert", DRIFT_DEFAULTS["mean_shift_alert"]))
    if shift > 0 and (drift.get("mean_shift_relative") or 0) > shift:
        out.append(f"mean embedding moved {drift['mean_shift_relative']:.3g} x the reference's spread (> {shift:g})")
    return out


class ExtractionRejected(ValueError):
    """The extraction ran but its result must not be published."""


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


# --------------------------------------------------------------------------- cost per night


def earlier_records(output_root: str, ds: str, nights: int, read_json: Any) -> list[dict]:
    """The published run records of the ``nights`` dates before ``ds`` that exist (for the cost median)."""
    day = date.fromisoformat(ds)
    records = []
    for back in range(1, nights + 1):
        try:
            records.append(read_json(run_record_path(output_root, (day - timedelta(days=back)).isoformat())))
        except Exception:  # noqa: BLE001 - a night never published (or unreadable) is simply not in the median
            continue
    return records


# Dataflow's service metrics (origin "dataflow/v1b3" in projects.locations.jobs.getMetrics) that bill a
# batch job, and their units as Dataflow reports them: the record names each field by its unit.
SERVICE_METRICS = {
    "TotalVcpuTime": "vcpu_seconds",
    "TotalMemoryUsage": "memory_mb_seconds",
    "TotalPdUsage": "pd_gb_seconds",
    "TotalSsdUsage": "ssd_gb_seconds",
    "TotalShuffleDataProcessed": "shuffle_bytes",
    "BillableShuffleDataProcessed": "billable_shuffle_bytes",
    "TotalStreamingDataProcessed": "streaming_bytes",
    "TotalGpuTime": "gpu_seconds",
}
# List prices in USD for Dataflow batch in us-central1, copied from https://cloud.google.com/dataflow/pricing
# (Dataflow compute resources; FlexRS rows for FlexRS jobs; GPU: NVIDIA T4 per hour). Written on the date below
# on a machine without internet access, so not re-read from the page that day: check them against it before
# trusting the USD figures. Regions and contracts differ: a deployment overrides any of them with the Airflow
# Variable 'image_embeddings_prices' (JSON).
PRICES_AS_OF = "2026-12-01"
PRICES_SOURCE = "https://cloud.google.com/dataflow/pricing (batch, us-central1, list prices)"
DEFAULT_PRICES: dict[str, float] = {
    "vcpu_hour": 0.056,
    "memory_gb_hour": 0.003557,
    "flexrs_vcpu_hour": 0.0336,
    "flexrs_memory_gb_hour": 0.0021342,
    "pd_gb_hour": 0.000054,
    "ssd_gb_hour": 0.000298,
    "shuffle_gb": 0.011,
    "streaming_gb": 0.018,
    "gpu_hour": 0.35,
}
COST_HISTORY_NIGHTS = 14  # nights looked back for the median cost per 1,000 images


def service_metrics(metrics: list[dict[str, Any]]) -> dict[str, float]:
    """The billing metrics of a Dataflow job from its ``MetricUpdate`` list, by unit-named field.

    Each comes committed and tentative (``context.tentative``); the committed value wins, the
    tentative one stands in while a job has none yet.
    """
    committed: dict[str, float] = {}
    tentative: dict[str, float] = {}
    for update in metrics:
        name = update.get("name") or {}
        field = SERVICE_METRICS.get(name.get("name", ""))
        if name.get("origin") != "dataflow/v1b3" or field is None:
            continue
        try:
            value = float(update.get("scalar"))
        except (TypeError, ValueError):
            continue
        is_tentative = str((name.get("context") or {}).get("tentative", "")).lower() == "true"
        (tentative if is_tentative else committed)[field] = value
    return {**tentative, **committed}


def prices(overrides: dict[str, Any] | None = None) -> tuple[dict[str, float], list[str]]:
    """The price table with a deployment's overrides, and the problems with those (unknown names, not numbers)."""
    table, problems = dict(DEFAULT_PRICES), []
    for name, value in (overrides or {}).items():
        if name not in DEFAULT_PRICES:
            problems.append(f"price {name!r} is not one of {', '.join(DEFAULT_PRICES)}")
        elif not _number(value) or value < 0:
            problems.append(f"price {name} {value!r} must be a number >= 0")
        else:
            table[name] = float(value)
    return table, problems


def job_cost(resources: dict[str, float], table: dict[str, float], flexrs: bool = False) -> float:
    """USD for one Dataflow job's resources at ``table`` (FlexRS rates for vCPU and memory when ``flexrs``)."""
    vcpu = table["flexrs_vcpu_hour" if flexrs else "vcpu_hour"]
    memory = table["flexrs_memory_gb_hour" if flexrs else "memory_gb_hour"]
    shuffle = resources.get("billable_shuffle_bytes", resources.get("shuffle_bytes", 0.0))
    usd = (
        resources.get("vcpu_seconds", 0.0) / 3600 * vcpu
        + resources.get("memory_mb_seconds", 0.0) / 1024 / 3600 * memory
        + resources.get("pd_gb_seconds", 0.0) / 3600 * table["pd_gb_hour"]
        + resources.get("ssd_gb_seconds", 0.0) / 3600 * table["ssd_gb_hour"]
        + shuffle / 1e9 * table["shuffle_gb"]
        + resources.get("streaming_bytes", 0.0) / 1e9 * table["streaming_gb"]
        + resources.get("gpu_seconds", 0.0) / 3600 * table["gpu_hour"]
    )
    return round(usd, 6)


def cost_summary(
    jobs: dict[str, dict[str, Any] | None],
    embedded: int,
    table: dict[str, float] | None = None,
    flexrs: bool = False,
    overridden: bool = False,
) -> dict[str, Any]:
    """The run record's ``cost``: per job its resources (Dataflow's metrics, or a local job's CPU seconds and
    peak memory) and USD estimate; totals; and per 1,000 embedded images."""
    table = table or dict(DEFAULT_PRICES)
    per_job: dict[str, Any] = {}
    usd_total: float | None = None
    cpu_total = 0.0
    for task, job in (jobs or {}).items():
        resources = dict((job or {}).get("resources") or {})
        if not resources:
            continue
        entry: dict[str, Any] = {"runner": (job or {}).get("runner"), **resources}
        if (job or {}).get("job_id"):
            entry["job_id"] = job["job_id"]
            entry["usd"] = job_cost(resources, table, flexrs)
            usd_total = (usd_total or 0.0) + entry["usd"]
        cpu_total += float(resources.get("vcpu_seconds", resources.get("cpu_seconds", 0.0)))
        per_job[task] = entry
    thousands = embedded / 1000 if embedded else 0
    return {
        "currency": "USD",
        "prices": {"as_of": PRICES_AS_OF, "source": PRICES_SOURCE, "overridden": overridden, "flexrs": flexrs},
        "jobs": per_job,
        "usd": round(usd_total, 6) if usd_total is not None else None,
        "cpu_seconds": round(cpu_total, 3),
        "embedded": embedded,
        "usd_per_1000_images": round(usd_total / thousands, 6) if usd_total is not None and thousands else None,
        "cpu_seconds_per_1000_images": round(cpu_total / thousands, 3) if thousands else None,
    }


def cost_figure(cost: dict[str, Any] | None) -> tuple[str, float] | None:
    """The figure nights are compared on: USD per 1,000 images on Dataflow, else CPU seconds per 1,000."""
    for name in ("usd_per_1000_images", "cpu_seconds_per_1000_images"):
        value = (cost or {}).get(name)
        if _number(value) and value > 0:
            return name, float(value)
    return None


def cost_jump(cost: dict[str, Any], earlier: list[dict[str, Any] | None], ratio: float) -> str | None:
    """An alert line when this night's cost per 1,000 images is over ``ratio`` x the median of the earlier
    nights' (same figure; 0 turns it off; needs three earlier nights), else None."""
    import statistics

    now = cost_figure(cost)
    if not ratio or now is None:
        return None
    name, value = now
    history = [figure[1] for figure in map(cost_figure, earlier) if figure and figure[0] == name]
    if len(history) < 3:
        return None
    median = statistics.median(history)
    if value <= ratio * median:
        return None
    return (
        f"{name.replace('_', ' ')} is {value:g}, {value / median:.1f}x the median {median:g} "
        f"of the {len(history)} nights before (alert above {ratio:g}x)"
    )


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


# --------------------------------------------------------------------------- orchestrators without Airflow
# Airflow checks each param against its Param schema when a run is created and renders '{{ ds }}'
# with Jinja. Kubeflow Pipelines types parameters but checks no ranges or choices and templates
# nothing, so its plan step calls these before build_plan.

DATE_TEMPLATES = {"ds": re.compile(r"\{\{\s*ds\s*\}\}"), "ds_nodash": re.compile(r"\{\{\s*ds_nodash\s*\}\}")}


def fill_date(template: str, ds: str) -> str:
    """``template`` with ``{{ ds }}`` and ``{{ ds_nodash }}`` replaced, as the DAG's Jinja renders them.

    Any other template syntax is left in place, and build_plan refuses it.
    """
    filled = DATE_TEMPLATES["ds"].sub(ds, template)
    return DATE_TEMPLATES["ds_nodash"].sub(ds.replace("-", ""), filled)


def run_date(ds: str | None, *timestamps: str | None) -> str:
    """The run's date, ``YYYY-MM-DD``: ``ds`` when given, else the first timestamp that parses, else today (UTC).

    ``timestamps`` are what the orchestrator knows about the run (a recurring run's scheduled time,
    the run's creation time), in order of preference; ones it left unresolved are skipped.
    """
    if ds:
        try:
            return date.fromisoformat(ds).isoformat()
        except ValueError as exc:
            raise PlanError(f"ds {ds!r} is not a date (YYYY-MM-DD)") from exc
    for stamp in timestamps:
        try:
            parsed = datetime.fromisoformat(str(stamp).replace("Z", "+00:00"))
        except ValueError:
            continue
        return (parsed.astimezone(UTC) if parsed.tzinfo else parsed).date().isoformat()
    return datetime.now(UTC).date().isoformat()


def _number(value: Any) -> bool:
    return isinstance(value, int | float) and not isinstance(value, bool)


def param_problems(params: dict[str, Any]) -> list[str]:
    """What the DAG's Param schemas refuse, for one run's params (empty when all pass).

    The same choices and ranges (from ``beam_jobs.contract``) as the DAG's trigger form.
    """
    problems: list[str] = []
    for name in ("input", "output_root", "weights"):
        if not str(params.get(name) or "").strip():
            problems.append(f"{name} is required")
    choices = {
        "model": MODELS,
        "runner": RUNNERS,
        "engine": ENGINES,
        "precision": PRECISIONS,
        "flexrs_goal": FLEXRS_GOALS,
        "reference_policy": REFERENCE_POLICIES,
    }
    models = params.get("models")
    if models is not None:
        if not isinstance(models, list | tuple) or not models:
            problems.append(f"models {models!r}: choose one or more of {', '.join(MODELS)}")
        else:
            unknown = [m for m in models if m not in MODELS]
            if unknown:
                problems.append(f"models {unknown!r}: not one of {', '.join(MODELS)}")
            if len(set(map(str, models))) != len(models):
                problems.append(f"models {list(models)!r} names a model twice")
    for name, allowed in choices.items():
        if name in params and params[name] not in allowed:
            problems.append(f"{name} {params[name]!r} is not one of {', '.join(a or repr(a) for a in allowed)}")
    methods = params.get("methods")
    if not isinstance(methods, list | tuple) or not methods:
        problems.append(f"methods {methods!r}: choose one or more of {', '.join(METHODS)}")
    else:
        unknown = [m for m in methods if m not in METHODS]
        if unknown:
            problems.append(f"methods {unknown!r}: not one of {', '.join(METHODS)}")
        if len(set(map(str, methods))) != len(methods):
            problems.append(f"methods {list(methods)!r} names a method twice")
    batch_size = params.get("batch_size")
    if not isinstance(batch_size, int) or isinstance(batch_size, bool) or not 1 <= batch_size <= MAX_BATCH_SIZE:
        problems.append(f"batch_size {batch_size!r} must be an integer from 1 to {MAX_BATCH_SIZE}")
    for name in ("skip_known", "index"):
        if name in params and not isinstance(params[name], bool):
            problems.append(f"{name} {params[name]!r} must be true or false")
    rate = params.get("max_failure_rate")
    if not _number(rate) or not 0 <= rate <= 1:
        problems.append(f"max_failure_rate {rate!r} must be a number from 0 to 1")
    return problems
