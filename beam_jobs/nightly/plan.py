"""The night's plan: check a run's params together and resolve every path it reads and writes.

Both orchestrators call ``build_plan``: the Airflow DAG's ``plan`` task and the Kubeflow pipeline's plan
step (``beam_jobs.nightly.steps.plan_step``), which runs in the worker image where only this package is
installed. Standard library only, like ``beam_jobs.contract`` (layout, vocabulary and record shapes come
from there), so importing it keeps DAG parsing light and needs neither Airflow nor Beam.
"""

from __future__ import annotations

import fnmatch
import importlib.util
import os
import re
from datetime import UTC, date, datetime, timedelta
from typing import Any, TypedDict

from beam_jobs.contract import (
    DATAFLOW_RUNNER,
    DATAFLOW_WORKER_OPTIONS,
    DEFAULT_MODEL,
    ENGINE_AUTO,
    ENGINE_TF,
    INPUT_READY_RULES,
    PRECISION_AUTO,
    PRECISION_BF16,
    comparisons_dir,
    embeddings_dir,
    index_dir,
    projections_dir,
    reports_dir,
)
from beam_jobs.nightly.frame import reference_settings
from beam_jobs.nightly.paths import (
    KEYWORD_WEIGHTS,
    PlanError,
    _control_chars,
    allowed_roots,
    confine,
    is_gcs,
)
from beam_jobs.nightly.readiness import GLOB_CHARS, literal_folder, marker_path
from beam_jobs.nightly.store import store_settings
from beam_jobs.publish_store.config import STORES

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
    report: bool
    report_dir: str
    report_window_days: int
    store: str
    store_uri: str | None
    bigquery_project: str | None
    bigquery_dataset: str | None
    bigquery_index: str
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


def _readiness(params: dict[str, Any], input_glob: str) -> tuple[dict[str, Any], list[str]]:
    """The plan's input-readiness keys and the problems with them."""
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


def projections_key(method: str) -> str:
    """The plan's top-level key holding ``method``'s projections partition."""
    return f"projections_dir_{method}"


def reference_key(method: str) -> str:
    """The plan's top-level key holding ``method``'s reference folder (empty with reference_policy refit)."""
    return f"reference_dir_{method}"


SETTING_HINT = "set the '{name}' param"


def default_setup_file(setting_hint: str = SETTING_HINT) -> str:
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
        f"Set the environment variable {SETUP_FILE_ENV} where the plan runs, or "
        + setting_hint.format(name="setup_file")
    )


def _problems_with_weights(weights: str, runner: str) -> list[str]:
    if weights in KEYWORD_WEIGHTS:
        return []
    if runner == DATAFLOW_RUNNER and not is_gcs(weights):
        return [f"weights {weights!r}: Dataflow workers need a gs:// path to the weights file"]
    if not is_gcs(weights) and not os.path.isfile(weights):
        return [f"weights file {weights!r} does not exist"]
    return []


def _problems_with_dataflow(settings: dict[str, Any], paths: dict[str, str], setting_hint: str) -> list[str]:
    problems = [
        f"DataflowRunner needs {name}: " + setting_hint.format(name=name)
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
    setting_hint: str = SETTING_HINT,
    stores: tuple[str, ...] = STORES,
) -> Plan:
    """Check what the params' schemas cannot (fields together, files) and resolve every path of the run.

    ``params`` have passed the DAG's Param schemas (Airflow validates a run's
    conf when the run is created), so methods, runner, model, batch size and
    failure rate are known to be in range here. ``rendered_input`` is
    ``params["input"]`` with the run's date filled in. ``dataflow`` holds
    project, region, temp_location, staging_location and setup_file (from params
    or Airflow Variables); it is only used with DataflowRunner. ``roots``: where
    input, output_root and weights may be (default: ``allowed_roots()``, the
    deployment's setting); each is normalised and must fall under one of them. ``setting_hint`` says how
    to supply a missing Dataflow setting (``{name}`` is filled in): the orchestrator knows its own ways.
    ``stores``: the vector stores this orchestrator publishes to (default: all).
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
        problems += _problems_with_dataflow(
            settings, {"input": rendered_input, "output_root": output_root}, setting_hint
        )
        # The worker image already holds the jobs; a setup_file too would reinstall them on every worker.
        if not settings.get("setup_file") and not settings.get("sdk_container_image"):
            try:
                settings["setup_file"] = default_setup_file(setting_hint)
            except PlanError as exc:
                problems.append(str(exc))
        settings["staging_location"] = settings.get("staging_location") or settings.get("temp_location")
        dataflow_options = {
            **DATAFLOW_WORKER_OPTIONS,
            **{name: settings[name] for name in DATAFLOW_SETTINGS if settings.get(name)},
        }
        if params.get("flexrs_goal"):
            dataflow_options["flexrs_goal"] = params["flexrs_goal"]
    project = (dataflow or {}).get("project") or params.get("project")
    store, refused_store = store_settings(params, output_root, roots, project, stores)
    problems += refused_store
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
        "report": bool(params.get("report", True)),
        "report_dir": reports_dir(output_root, ds),
        "report_window_days": int(params.get("report_window_days") or 7),
        **store,
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


# --------------------------------------------------------------------------- orchestrators without Jinja
# Airflow renders '{{ ds }}' with Jinja; Kubeflow Pipelines templates nothing, so its plan step fills the
# date with these before build_plan.

DATE_TEMPLATES = {"ds": re.compile(r"\{\{\s*ds\s*\}\}"), "ds_nodash": re.compile(r"\{\{\s*ds_nodash\s*\}\}")}


def fill_date(template: str, ds: str) -> str:
    """``template`` with ``{{ ds }}`` and ``{{ ds_nodash }}`` replaced, as the DAG's Jinja renders them.

    Any other template syntax is left in place, and build_plan refuses it.
    """
    filled = DATE_TEMPLATES["ds"].sub(ds, template)
    return DATE_TEMPLATES["ds_nodash"].sub(ds.replace("-", ""), filled)


def run_date(ds: str | None, *timestamps: str | None) -> str:
    """The date a run embeds, ``YYYY-MM-DD``: ``ds`` when given (the date the user names), else the day
    before the first timestamp that parses, else yesterday (UTC).

    ``timestamps`` are what the orchestrator knows about the run (a recurring run's scheduled time, the
    run's creation time), in order of preference; ones it left unresolved are skipped. A run that fires at
    03:00 on day D+1 embeds the images filed under D: that day has ended, and is complete.
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
        return ((parsed.astimezone(UTC) if parsed.tzinfo else parsed).date() - timedelta(days=1)).isoformat()
    return (datetime.now(UTC).date() - timedelta(days=1)).isoformat()
