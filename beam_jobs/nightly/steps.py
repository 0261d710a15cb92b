"""The night's steps, as both orchestrators run them: plan, wait, extract, validate, reduce, compare, index,
publish.

The Kubeflow pipeline's components (``pipelines/image_embeddings_kfp.py``) call each of them in the worker
image; the Airflow DAG's plan, validate, compare and publish tasks call the same functions, passing in what is
Airflow's own (Variables, alerts, metrics, Asset events) as arguments. The jobs are launched by
``beam_jobs.nightly.launch`` on Kubeflow and by the Beam provider's operator in Airflow, with the same flags.
Outputs go to ``<output_root>/embeddings/ds=...`` and so on; the orchestrator's artifacts point at them.
"""

from __future__ import annotations

import base64
import logging
import time
from collections.abc import Callable
from typing import Any

from beam_jobs.contract import (
    JOB_EXTRACT,
    JOB_INDEX,
    JOB_REDUCE,
    MANIFEST,
    MAP_HTML,
    MAP_PNG,
    InputReady,
    join,
    run_record_path,
)
from beam_jobs.nightly import params as trigger_params
from beam_jobs.nightly.frame import drift_alerts
from beam_jobs.nightly.launch import (
    extract_options,
    gcp_resources,
    index_options,
    job_command,
    reduction_options,
    run_step,
)
from beam_jobs.nightly.paths import PlanError
from beam_jobs.nightly.plan import (
    DATAFLOW_SETTINGS,
    SETTING_HINT,
    Plan,
    build_plan,
    fill_date,
    reduction_key,
    run_date,
)
from beam_jobs.nightly.readiness import input_ready_record, input_verdict, local_snapshot
from beam_jobs.nightly.record import FrameChanged, check_extraction, frame_changes, model_summaries, night_record
from beam_jobs.nightly.store import KFP_STORES
from beam_jobs.publish_store.config import STORES

LOG = logging.getLogger(__name__)
# How often the input step looks for the night's images (the DAG's sensor pokes every 5 minutes).
POKE_SECONDS = 300.0
# Figures of the extraction manifest shown as the step's metrics (numbers only: KFP Metrics are scalars).
EXTRACT_FIGURES = ("inputs", "embedded", "reused", "computed", "failed", "failure_rate", "images_per_second", "seconds")


def from_struct(value: Any) -> Any:
    """``value`` as it was before it crossed the orchestrator as a protobuf Struct, whose numbers are all
    doubles: whole numbers become ints again (``--batch_size=32``, not ``32.0``)."""
    if isinstance(value, dict):
        return {key: from_struct(item) for key, item in value.items()}
    if isinstance(value, list):
        return [from_struct(item) for item in value]
    if isinstance(value, float) and value.is_integer():
        return int(value)
    return value


def _read_bytes(path: str) -> bytes:
    from apache_beam.io.filesystems import FileSystems

    with FileSystems.open(path, compression_type="uncompressed") as handle:
        return handle.read()


def _read_json(path: str) -> dict[str, Any]:
    from beam_jobs.storage import read_json

    return read_json(path)


def plan_night(
    params: dict[str, Any],
    ds: str,
    run_id: str,
    rendered_input: str,
    dataflow: dict[str, Any] | None,
    setting_hint: str = SETTING_HINT,
    stores: tuple[str, ...] = STORES,
) -> Plan:
    """The plan both orchestrators use, once each has its params checked and the input's date filled in."""
    plan = build_plan(params, ds, run_id, rendered_input, dataflow, setting_hint=setting_hint, stores=stores)
    if not plan["input_varies_by_date"]:
        LOG.warning("input %r does not contain the run's date: every date reads the same files", plan["input"])
    LOG.info("plan for ds=%s: %s", ds, plan)
    return plan


def plan_step(params: dict[str, Any], ds: str, run_id: str, *timestamps: str) -> Plan:
    """The run's plan from its params: the DAG's Param schema checks, then ``build_plan`` (the DAG's plan task).

    ``ds`` wins when given; else the run's date comes from ``timestamps`` (scheduled, then created time).
    Raises PlanError listing every problem before any job starts.
    """
    params = trigger_params.unset_as_null(params, trigger_params.table())
    problems = trigger_params.validate(params)
    if problems:
        raise PlanError("the run's parameters cannot work:\n  - " + "\n  - ".join(problems))
    day = run_date(ds, *timestamps)
    dataflow = {name: params.get(name) or None for name in DATAFLOW_SETTINGS}
    # Kubeflow publishes to Lance only: BigQuery goes through the Airflow DAG's provider operators.
    return plan_night(params, day, run_id, fill_date(str(params["input"]), day), dataflow, stores=KFP_STORES)


class InputMissing(RuntimeError):
    """The night's input glob matched nothing within the wait."""


def snapshot(pattern: str, marker: str | None = None) -> dict[str, Any]:
    """Count, total size and latest change of the files ``pattern`` matches, and whether ``marker`` exists.

    Local paths as the DAG's sensor reads them (``local_snapshot``); gs:// through Beam's FileSystems,
    what the extraction job will list (each object's size and last update time).
    """
    if not pattern.startswith("gs://"):
        return local_snapshot(pattern, marker)
    from apache_beam.io.filesystems import FileSystems

    try:
        (result,) = FileSystems.match([pattern])
        found = result.metadata_list
    except Exception:  # noqa: BLE001 - a missing bucket prefix matches nothing
        found = []
    newest = max((m.last_updated_in_seconds for m in found), default=None)
    return {
        "files": len(found),
        "bytes": sum(m.size_in_bytes for m in found),
        "newest_change": newest,
        "marker_found": FileSystems.exists(marker) if marker else None,
    }


def wait_for_input(
    plan: Plan,
    wait_minutes: float,
    poke_s: float = POKE_SECONDS,
    sleep: Callable[[float], None] = time.sleep,
    clock: Callable[[], float] = time.time,
) -> dict[str, Any]:
    """The DAG's wait_for_input sensor: until the plan's input is ready by its ``input_ready`` rule; after
    ``wait_minutes`` (0: at once) fail saying which glob and why. Returns the run record's ``input_ready``."""
    pattern = plan["input"]
    rule = plan.get("input_ready") or "any"
    settle = float(plan.get("input_settle_minutes") or 0)
    marker = plan.get("input_marker") or None
    if rule == "settled":
        poke_s = max(1.0, min(poke_s, settle * 30))  # twice per settle window, as the DAG's sensor
    deadline = time.monotonic() + max(float(wait_minutes), 0.0) * 60
    while True:
        seen = snapshot(pattern, marker if rule == "marker" else None)
        ready, reason = input_verdict(rule, seen, settle, clock(), marker)
        LOG.info("input %s (rule %s): %s", pattern, rule, reason)
        if ready:
            # KFP values hold no nulls (marker, newest_change may be None): publish_step fills them back in.
            return {
                key: value for key, value in input_ready_record(rule, seen, marker, reason).items() if value is not None
            }
        left = deadline - time.monotonic()
        if left <= 0:
            raise InputMissing(
                f"no input: {pattern!r} was not ready by rule {rule!r} after waiting {float(wait_minutes):g} "
                f"minute(s): {reason}. Have the night's images landed?"
            )
        sleep(min(poke_s, left))


def _job(job: str, options: dict[str, Any], plan: Plan, step: str, resources_path: str | None) -> dict[str, Any]:
    def record(job_id: str) -> None:
        # Written as soon as the job exists, so the job is linked while the step waits.
        settings = plan["dataflow"] or {}
        if resources_path:
            with open(resources_path, "w", encoding="utf-8") as handle:
                handle.write(gcp_resources(settings["project"], settings["region"], job_id))

    if resources_path:
        with open(resources_path, "w", encoding="utf-8") as handle:
            handle.write("{}")
    import resource

    before = resource.getrusage(resource.RUSAGE_CHILDREN)
    ran = run_step(job_command(job, options, plan, step), plan, on_job_id=record)
    if ran.get("job_id"):
        return ran  # on Dataflow the launcher only submitted: the job's resources are Dataflow's metrics
    after = resource.getrusage(resource.RUSAGE_CHILDREN)
    cpu = (after.ru_utime - before.ru_utime) + (after.ru_stime - before.ru_stime)
    # As the DAG's Beam tasks measure a local job (ChildResources): CPU seconds, and the children's peak
    # memory when it rose during this job (a high-water mark over every child of this process).
    used = {"cpu_seconds": round(cpu, 3)}
    if after.ru_maxrss > before.ru_maxrss:  # KFP values hold no nulls: an unknown peak is left out
        used["peak_memory_mb"] = round(after.ru_maxrss / 1024, 1)
    return {**ran, "runner": plan["runner"], "resources": used}


def extract_step(plan: Plan, resources_path: str | None = None) -> dict[str, Any]:
    """Run the extraction job for the plan; on Dataflow until its job ends. Returns its Dataflow job, if any."""
    plan = from_struct(plan)
    return _job(JOB_EXTRACT, extract_options(plan), plan, "extract-embeddings", resources_path)


def validate_step(
    plan: Plan,
    log_metric: Callable[[str, float], None] | None = None,
    read_json: Callable[[str], dict[str, Any]] | None = None,
    on_manifest: Callable[[dict[str, Any]], Any] | None = None,
) -> dict[str, Any]:
    """The validate step: the extraction manifest through ``check_extraction`` (ExtractionRejected when the
    night must not be published). Its figures go to ``log_metric`` and the whole manifest to ``on_manifest``
    first, rejected nights too: a failure-rate spike is what the dashboards are for."""
    plan = from_struct(plan)
    manifest = (read_json or _read_json)(join(plan["embeddings_dir"], MANIFEST))
    inputs = manifest.get("inputs") or 0
    figures = {**manifest, "failure_rate": (manifest.get("failed", 0) / inputs) if inputs else 0.0}
    for name in EXTRACT_FIGURES:
        if log_metric and isinstance(figures.get(name), int | float):
            log_metric(name, figures[name])
    if on_manifest:
        on_manifest(manifest)
    return check_extraction(manifest, plan["max_failure_rate"], plan["embeddings_dir"])


def model_ids(plan: Plan) -> dict[str, str]:
    """Each model's model_id, from the night's extraction manifest."""
    manifest = _read_json(join(plan["embeddings_dir"], MANIFEST))
    return {name: model["model_id"] for name, model in model_summaries(manifest).items()}


def reduce_step(
    plan: Plan,
    reduction: dict[str, Any],
    html_points: int,
    thumbnail_budget_mb: float,
    mosaic_grid: int,
    resources_path: str | None = None,
) -> dict[str, Any]:
    """Run the reduce job for one (model, method) of the plan's ``reductions``. Returns its Dataflow job, if any."""
    plan, reduction = from_struct(plan), from_struct(reduction)
    options = reduction_options(plan, reduction, model_ids(plan), html_points, thumbnail_budget_mb, mosaic_grid)
    step = reduction_key(reduction).replace("_", "-")
    return _job(JOB_REDUCE, options, plan, step, resources_path)


def compare_step(plan: Plan) -> dict[str, Any]:
    """Two or more models: the comparison report (``beam_jobs.compare``); else nothing ({})."""
    plan = from_struct(plan)
    if not plan.get("compare"):
        LOG.info("one model for ds=%s: nothing to compare", plan["ds"])
        return {}
    from beam_jobs.compare.job import run

    return run(["--input", plan["embeddings_dir"], "--output", plan["comparison_dir"], "--run_id", plan["run_id"]])


def index_step(plan: Plan, resources_path: str | None = None) -> dict[str, Any]:
    """Run the similarity-index job when the plan asks for one (param ``index``); else nothing.
    Returns its Dataflow job, if any."""
    plan = from_struct(plan)
    if not plan.get("index"):
        if resources_path:
            with open(resources_path, "w", encoding="utf-8") as handle:
                handle.write("{}")
        LOG.info("index off for ds=%s: no build_index job", plan["ds"])
        return {}
    primary = plan["models"][0] if plan.get("models") else None
    model_id = model_ids(plan).get(primary) if primary else None
    return _job(JOB_INDEX, index_options(plan, model_id), plan, "build-index", resources_path)


def projection_report(
    plan: Plan,
    reduction: dict[str, Any],
    html_path: str | None,
    markdown_path: str | None,
    log_metric: Callable | None = None,
) -> dict[str, Any]:
    """The (model, method) map's manifest; its figures to ``log_metric``, map.html copied to ``html_path`` and a
    Markdown summary with map.png inline to ``markdown_path`` (what the orchestrator's UI shows)."""
    plan, reduction = from_struct(plan), from_struct(reduction)
    folder, method = reduction["dir"], reduction["method"]
    manifest = _read_json(join(folder, MANIFEST))
    figures = {"rows": manifest.get("rows"), "seconds": manifest.get("seconds")}
    figures["trustworthiness"] = manifest.get("trustworthiness")
    for name in ("mean_shift_relative", "mmd_p_value", "novelty_rate"):
        figures[f"drift_{name}"] = (manifest.get("drift") or {}).get(name)
    for axis, ratio in enumerate(manifest.get("explained_variance_ratio") or []):
        figures[f"explained_variance_ratio_{axis + 1}"] = ratio
    for name, value in figures.items():
        if log_metric and isinstance(value, int | float):
            log_metric(name, value)
    if html_path:
        with open(html_path, "wb") as handle:
            handle.write(_read_bytes(join(folder, MAP_HTML)))
    if markdown_path:
        png = base64.b64encode(_read_bytes(join(folder, MAP_PNG))).decode("ascii")
        rows = "\n".join(f"| {name} | {value} |" for name, value in figures.items() if value is not None)
        text = (
            f"### {method} map, ds={plan['ds']} ({reduction['model']})\n\n| figure | value |\n|---|---|\n{rows}\n\n"
            f"Outputs: `{folder}`\n\n![{method} map](data:image/png;base64,{png})\n"
        )
        with open(markdown_path, "w", encoding="utf-8") as handle:
            handle.write(text)
    return manifest


def publish_step(
    plan: Plan,
    extraction: dict[str, Any],
    jobs: dict[str, dict[str, Any] | None],
    input_ready: dict[str, Any] | None = None,
    cost_jump_ratio: float = 2.0,
    *,
    prices: dict[str, float] | None = None,
    prices_overridden: bool = False,
    read_json: Callable[[str], dict[str, Any]] | None = None,
    write_json: Callable[[str, dict[str, Any]], None] | None = None,
    on_projection: Callable[[str, dict[str, Any]], Any] | None = None,
    on_drift: Callable[[str, dict[str, Any], list[str]], Any] | None = None,
    on_cost_jump: Callable[[str], Any] | None = None,
) -> dict[str, Any]:
    """The publish step: the run record from the manifests, written to ``runs/ds=.../run.json``.

    What is the orchestrator's own comes in as arguments: how files are read and written, the price table,
    and what to do with each projection's figures, a drift alert or a cost jump (Airflow posts alerts and
    emits metrics; without them, alerts are warnings in the step's log). Drift never fails the run.
    A night whose maps used a reference other than the one saved now for its policy is not published:
    ``FrameChanged`` says which (re-running the night fixes it).
    """
    plan, extraction, jobs = from_struct(plan), from_struct(extraction), from_struct(jobs)
    read = read_json or _read_json
    ready = {**dict.fromkeys(InputReady.__annotations__), **from_struct(input_ready)} if input_ready else None
    record, projections, jump = night_record(
        plan,
        extraction,
        jobs,
        read,
        input_ready=ready,
        table=prices,
        overridden=prices_overridden,
        cost_jump_ratio=cost_jump_ratio,
    )
    for method, manifest in projections.items():
        if on_projection:
            on_projection(method, manifest)
        problems = drift_alerts(manifest.get("drift"), plan)
        if problems and on_drift:
            on_drift(method, manifest, problems)
        for problem in problems if not on_drift else ():
            LOG.warning(
                "ALERT drift ds=%s %s reference %s: %s", plan["ds"], method, manifest["reference"]["dir"], problem
            )
    moved = frame_changes(projections, read)
    if moved:
        raise FrameChanged(
            f"ds={plan['ds']} is not published: its maps are in a frame that is no longer the saved one "
            f"(a night beside it replaced the reference); re-run the night. " + "; ".join(moved)
        )
    if jump:
        (on_cost_jump or (lambda why: LOG.warning("ALERT cost ds=%s: %s", plan["ds"], why)))(jump)
    if write_json:
        write_json(run_record_path(plan["output_root"], plan["ds"]), record)
    else:
        from beam_jobs.storage import write_json as write

        write(run_record_path(plan["output_root"], plan["ds"]), record)
    LOG.info("published ds=%s: %s", plan["ds"], record)
    return record


def report_night(
    plan: Plan,
    model_id: str | None = None,
    on_problem: Callable[[str], Any] | None = None,
) -> dict[str, Any]:
    """The report step, after publish: the night's morning report (``beam_jobs.report``). A report problem
    never fails the night: it goes to ``on_problem`` (an alert; else a warning in the log) and the step
    returns ``{"error": ...}``. Off (param ``report``): nothing."""
    plan = from_struct(plan)
    if not plan.get("report", True):
        LOG.info("report off for ds=%s", plan["ds"])
        return {}
    from beam_jobs.report import report_step

    try:
        return report_step(plan["output_root"], plan["ds"], model_id, plan.get("report_window_days", 7), plan["run_id"])
    except Exception as exc:  # noqa: BLE001 - a report problem is reported, never fatal to the night
        problem = f"ds={plan['ds']}: the morning report failed: {type(exc).__name__}: {exc}"
        (on_problem or (lambda text: LOG.warning("ALERT report %s", text)))(problem)
        return {"error": problem}
