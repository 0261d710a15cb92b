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
from datetime import UTC, date, datetime
from typing import Any, TypedDict

from beam_jobs.contract import (
    DATAFLOW_RUNNER,
    DATAFLOW_WORKER_OPTIONS,
    DEFAULT_MODEL,
    ENGINE_AUTO,
    ENGINE_TF,
    ENGINES,
    FLEXRS_GOALS,
    INPUT_READY_RULES,
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
    IndexEntry,
    IndexManifest,
    comparisons_dir,
    embeddings_dir,
    index_dir,
    join,
    partition,
    projections_dir,
    references_dir,
)
from beam_jobs.cost import is_number
from beam_jobs.readiness import GLOB_CHARS, literal_folder, marker_path

GCS = "gs://"


def is_gcs(uri: str) -> bool:
    return uri.startswith(GCS)


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


def _choice_list_problems(name: str, value: Any, allowed: tuple[str, ...] | list[str], one: str) -> list[str]:
    """A Param of ``type: array, items.enum, minItems: 1, uniqueItems``, checked as Airflow's schema does."""
    if not isinstance(value, list | tuple) or not value:
        return [f"{name} {value!r}: choose one or more of {', '.join(allowed)}"]
    problems = []
    unknown = [v for v in value if v not in allowed]
    if unknown:
        problems.append(f"{name} {unknown!r}: not one of {', '.join(allowed)}")
    if len(set(map(str, value))) != len(value):
        problems.append(f"{name} {list(value)!r} names a {one} twice")
    return problems


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
    if params.get("models") is not None:
        problems += _choice_list_problems("models", params["models"], MODELS, "model")
    for name, allowed in choices.items():
        if name in params and params[name] not in allowed:
            problems.append(f"{name} {params[name]!r} is not one of {', '.join(a or repr(a) for a in allowed)}")
    problems += _choice_list_problems("methods", params.get("methods"), METHODS, "method")
    batch_size = params.get("batch_size")
    if not isinstance(batch_size, int) or isinstance(batch_size, bool) or not 1 <= batch_size <= MAX_BATCH_SIZE:
        problems.append(f"batch_size {batch_size!r} must be an integer from 1 to {MAX_BATCH_SIZE}")
    for name in ("skip_known", "index"):
        if name in params and not isinstance(params[name], bool):
            problems.append(f"{name} {params[name]!r} must be true or false")
    rate = params.get("max_failure_rate")
    if not is_number(rate) or not 0 <= rate <= 1:
        problems.append(f"max_failure_rate {rate!r} must be a number from 0 to 1")
    return problems
