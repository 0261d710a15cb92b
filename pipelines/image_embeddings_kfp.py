"""The nightly image-embeddings pipeline on Kubeflow Pipelines (KFP v2; Vertex AI Pipelines runs it too).

The same night as the Airflow DAG ``dags/image_embeddings.py``, with the same params:

```
plan -> wait-for-input -> extract-embeddings -> validate-extraction -> for each (model, method): reduce -> publish
                                                                    -> compare-models -------------------------/
                                                                    -> build-index ----------------------------/
```

``compare-models`` always appears; with one model it starts nothing (as ``build-index`` with ``index`` off).

``build-index`` always appears; with ``index`` off it starts no job (a ``dsl.If`` around it would
need its own sub-pipeline for ``publish`` to wait on it, as the reduce loop has).

Wiring only, like the DAG file: every step calls ``beam_jobs.nightly.steps`` (the
steps the DAG's tasks call too; the jobs launched as ``python -m beam_jobs.<job>``
by ``beam_jobs.nightly.launch``) inside the worker image built from
``worker.Dockerfile``, the image Dataflow workers run. The params' defaults come
from the one param table (``beam_jobs.nightly.params``), and the plan step checks
every param against its schema before any job starts.

Compile with ``make kfp`` (``build/image_embeddings_pipeline.yaml``);
docs/kubeflow.md shows how to upload, schedule and backfill it. The components'
image is ``IMAGE_EMBEDDINGS_WORKER_IMAGE`` at compile time.
"""

# No `from __future__ import annotations`: KFP reads the components' annotations as types.
import argparse
import os
from typing import NamedTuple

from kfp import compiler, dsl
from kfp.dsl import HTML, Dataset, Markdown, Metrics, Output, OutputPath

from beam_jobs.nightly import params as table

PIPELINE_NAME = "image-embeddings-nightly"
WORKER_IMAGE = os.environ.get("IMAGE_EMBEDDINGS_WORKER_IMAGE") or "image-embeddings-worker:latest"
# Where runs may read and write (beam_jobs.nightly.paths.allowed_roots), fixed when compiling: the plan step
# gets it in its environment, since the worker image has no data folder of its own to default to.
ALLOWED_ROOTS = os.environ.get("IMAGE_EMBEDDINGS_ALLOWED_ROOTS", "")
# The signature's defaults, from the one param table. KFP parameters hold no nulls: '' is unset, which the
# plan step reads back as None. input and output_root have no default here (no data folder to default to).
DEFAULTS = {name: "" if value is None else value for name, value in table.defaults().items()}
OUTPUT = os.path.join("build", "image_embeddings_pipeline.yaml")
# The DAG's default_args: 2 retries, 2 minutes doubling up to 30 (tests/test_kfp.py compares them).
RETRIES, BACKOFF, BACKOFF_FACTOR, BACKOFF_MAX = 2, "120s", 2.0, "1800s"

# The worker image has kfp installed (the [kfp] extra): no pip install when a step starts.
component = dsl.component(base_image=WORKER_IMAGE, install_kfp_package=False)


@component
def plan(
    input: str,
    output_root: str,
    models: list,
    weights: str,
    engine: str,
    precision: str,
    methods: list,
    runner: str,
    batch_size: int,
    skip_known: bool,
    max_failure_rate: float,
    index: bool,
    index_window_days: int,
    duplicate_threshold: float,
    reference_policy: str,
    reference: str,
    reference_window_days: int,
    reference_every_days: int,
    drift_p_value: float,
    novelty_rate_alert: float,
    mean_shift_alert: float,
    project: str,
    region: str,
    temp_location: str,
    staging_location: str,
    sdk_container_image: str,
    setup_file: str,
    flexrs_goal: str,
    input_ready: str,
    input_settle_minutes: float,
    input_marker: str,
    input_wait_minutes: int,
    cost_jump_ratio: float,
    map_points: int,
    thumbnail_budget_mb: float,
    mosaic_grid: int,
    report: bool,
    report_window_days: int,
    store: str,
    store_uri: str,
    bigquery_index: str,
    ds: str,
    run_id: str,
    scheduled_time: str,
    created_time: str,
) -> NamedTuple("Plan", plan=dict, reductions=list):
    """Check every param against the param table's schemas, then together, and resolve the run's paths (the
    DAG's plan task); fails at once, before any job starts."""
    from collections import namedtuple

    from beam_jobs.nightly.steps import plan_step

    params = {k: v for k, v in locals().items() if k not in ("ds", "run_id", "scheduled_time", "created_time")}
    resolved = plan_step(params, ds, run_id, scheduled_time, created_time)
    # KFP structs hold no nulls: no Dataflow settings travel as {}, other unset keys (input_marker) are left out.
    kept = {key: value for key, value in resolved.items() if value is not None}
    return namedtuple("Plan", ["plan", "reductions"])(
        {**kept, "dataflow": resolved["dataflow"] or {}}, resolved["reductions"]
    )


@component
def wait_for_input(plan: dict, wait_minutes: int) -> dict:
    """Until the night's images are complete by the plan's input_ready rule (the DAG's sensor); 0 minutes:
    fail at once when they are not. Returns which rule let the run start and what it saw."""
    from beam_jobs.nightly.steps import wait_for_input as wait

    return wait(plan, wait_minutes)


@component
def extract_embeddings(plan: dict, embeddings: Output[Dataset], gcp_resources: OutputPath(str)) -> dict:
    """python -m beam_jobs.extract_embeddings; on Dataflow until the job ends (cancelled if this step is)."""
    from beam_jobs.nightly.steps import extract_step

    job = extract_step(plan, gcp_resources)
    embeddings.uri = plan["embeddings_dir"]
    embeddings.metadata.update({"ds": plan["ds"], "model": plan["model"], **job})
    return job


@component
def validate_extraction(plan: dict, metrics: Output[Metrics]) -> dict:
    """The manifest's figures as metrics, then check_extraction: too many failures fail the run."""
    from beam_jobs.nightly.steps import validate_step

    return dict(validate_step(plan, metrics.log_metric))


@component
def reduce_dim(
    plan: dict,
    reduction: dict,
    map_points: int,
    thumbnail_budget_mb: float,
    mosaic_grid: int,
    projections: Output[Dataset],
    metrics: Output[Metrics],
    map_html: Output[HTML],
    map_summary: Output[Markdown],
    gcp_resources: OutputPath(str),
) -> dict:
    """python -m beam_jobs.reduce_dim for one (model, method); the map as HTML, the figures as metrics."""
    from beam_jobs.nightly.plan import reduction_key
    from beam_jobs.nightly.steps import projection_report, reduce_step

    job = reduce_step(plan, reduction, map_points, thumbnail_budget_mb, mosaic_grid, gcp_resources)
    projection_report(plan, reduction, map_html.path, map_summary.path, metrics.log_metric)
    projections.uri = reduction["dir"]
    projections.metadata.update({"ds": plan["ds"], "model": reduction["model"], "method": reduction["method"], **job})
    return {"task": reduction_key(reduction), **job}


@component
def compare_models(plan: dict) -> dict:
    """Two or more models: python -m beam_jobs.compare (comparison.json, comparison.png); else nothing."""
    from beam_jobs.nightly.steps import compare_step

    return compare_step(plan)


@component
def build_index(plan: dict, index: Output[Dataset], gcp_resources: OutputPath(str)) -> dict:
    """python -m beam_jobs.build_index when the plan's ``index`` is on: the night's similarity index."""
    from beam_jobs.nightly.steps import index_step

    job = index_step(plan, gcp_resources)
    index.uri = plan["index_dir"]
    index.metadata.update({"ds": plan["ds"], "built": bool(plan["index"]), **job})
    return job


@component
def publish(
    plan: dict,
    extraction: dict,
    extract_job: dict,
    reduce_jobs: list,
    index_job: dict,
    comparison: dict,
    input_ready: dict,
    cost_jump_ratio: float,
) -> dict:
    """The run record (counts, throughput, where the maps are) to <output_root>/runs/ds=<ds>/run.json."""
    from beam_jobs.nightly.steps import publish_step

    jobs = {"extract_embeddings": extract_job, **{job.pop("task"): job for job in reduce_jobs}}
    if plan["index"]:
        jobs["build_index"] = index_job
    # The record reads comparison.json itself when the plan compared models (``comparison`` orders this step).
    return publish_step(plan, extraction, jobs, input_ready, cost_jump_ratio)


@component
def morning_report(plan: dict, extraction: dict) -> dict:
    """After publish: the night's morning report; a report problem is logged as an alert, never fatal."""
    from beam_jobs.nightly.steps import report_night

    return report_night(plan, extraction.get("model_id"))


@component
def publish_store(plan: dict) -> dict:
    """After the maps: the night's embeddings and 2D coordinates into the Lance store (param store); a no-op
    with store none. (BigQuery is the Airflow DAG's: the plan refuses it here.)"""
    from beam_jobs.nightly.store import store_night

    return store_night(plan)


def _retry(task: dsl.PipelineTask, retries: int = RETRIES) -> dsl.PipelineTask:
    # Nightly runs must run again, never come from KFP's cache of an earlier run with the same params.
    task.set_caching_options(False)
    if retries:
        task.set_retry(
            num_retries=retries,
            backoff_duration=BACKOFF,
            backoff_factor=BACKOFF_FACTOR,
            backoff_max_duration=BACKOFF_MAX,
        )
    return task


@dsl.pipeline(name="reduce-methods", description="One reduce_dim step per (model, method), in parallel")
def reduce_methods(
    plan: dict, reductions: list, map_points: int, thumbnail_budget_mb: float, mosaic_grid: int
) -> list[dict]:
    # A pipeline of its own so the step after it (publish) depends on one task: kfp.local runs loops
    # only after every plain task of the same DAG.
    with dsl.ParallelFor(reductions, name="reductions") as reduction:
        reduce = _retry(
            reduce_dim(
                plan=plan,
                reduction=reduction,
                map_points=map_points,
                thumbnail_budget_mb=thumbnail_budget_mb,
                mosaic_grid=mosaic_grid,
            )
        )
    return dsl.Collected(reduce.outputs["Output"])


def nightly_pipeline(run_times: bool = True):
    """The pipeline. ``run_times=False`` leaves out the run's scheduled and creation times, which
    ``kfp.local`` cannot resolve: local runs then name their date with ``ds``."""
    times = (
        (dsl.PIPELINE_JOB_SCHEDULE_TIME_UTC_PLACEHOLDER, dsl.PIPELINE_JOB_CREATE_TIME_UTC_PLACEHOLDER)
        if run_times
        else ("", "")
    )

    @dsl.pipeline(
        name=PIPELINE_NAME,
        description="Embed the night's images with one or more models, reduce to 2D (PCA, UMAP), publish the maps",
    )
    def image_embeddings(
        input: str,
        output_root: str,
        weights: str = DEFAULTS["weights"],
        models: list = DEFAULTS["models"],
        engine: str = DEFAULTS["engine"],
        precision: str = DEFAULTS["precision"],
        methods: list = DEFAULTS["methods"],
        runner: str = DEFAULTS["runner"],
        batch_size: int = DEFAULTS["batch_size"],
        skip_known: bool = DEFAULTS["skip_known"],
        max_failure_rate: float = DEFAULTS["max_failure_rate"],
        index: bool = DEFAULTS["index"],
        index_window_days: int = DEFAULTS["index_window_days"],
        duplicate_threshold: float = DEFAULTS["duplicate_threshold"],
        reference_policy: str = DEFAULTS["reference_policy"],
        reference: str = DEFAULTS["reference"],
        reference_window_days: int = DEFAULTS["reference_window_days"],
        reference_every_days: int = DEFAULTS["reference_every_days"],
        drift_p_value: float = DEFAULTS["drift_p_value"],
        novelty_rate_alert: float = DEFAULTS["novelty_rate_alert"],
        mean_shift_alert: float = DEFAULTS["mean_shift_alert"],
        input_wait_minutes: int = DEFAULTS["input_wait_minutes"],
        input_ready: str = DEFAULTS["input_ready"],
        input_settle_minutes: float = DEFAULTS["input_settle_minutes"],
        input_marker: str = DEFAULTS["input_marker"],
        cost_jump_ratio: float = DEFAULTS["cost_jump_ratio"],
        map_points: int = DEFAULTS["map_points"],
        thumbnail_budget_mb: float = DEFAULTS["thumbnail_budget_mb"],
        mosaic_grid: int = DEFAULTS["mosaic_grid"],
        report: bool = DEFAULTS["report"],
        report_window_days: int = DEFAULTS["report_window_days"],
        store: str = DEFAULTS["store"],
        store_uri: str = DEFAULTS["store_uri"],
        bigquery_index: str = DEFAULTS["bigquery_index"],
        project: str = DEFAULTS["project"],
        region: str = DEFAULTS["region"],
        temp_location: str = DEFAULTS["temp_location"],
        staging_location: str = DEFAULTS["staging_location"],
        sdk_container_image: str = DEFAULTS["sdk_container_image"] or WORKER_IMAGE,
        setup_file: str = DEFAULTS["setup_file"],
        flexrs_goal: str = DEFAULTS["flexrs_goal"],
        ds: str = "",
    ):
        """``input`` may hold ``{{ ds }}`` (the run's date); ``ds`` empty: the recurring run's scheduled date."""
        planned = _retry(
            plan(
                input=input,
                output_root=output_root,
                models=models,
                weights=weights,
                engine=engine,
                precision=precision,
                methods=methods,
                runner=runner,
                batch_size=batch_size,
                skip_known=skip_known,
                max_failure_rate=max_failure_rate,
                index=index,
                index_window_days=index_window_days,
                duplicate_threshold=duplicate_threshold,
                reference_policy=reference_policy,
                reference=reference,
                reference_window_days=reference_window_days,
                reference_every_days=reference_every_days,
                drift_p_value=drift_p_value,
                novelty_rate_alert=novelty_rate_alert,
                mean_shift_alert=mean_shift_alert,
                project=project,
                region=region,
                temp_location=temp_location,
                staging_location=staging_location,
                sdk_container_image=sdk_container_image,
                setup_file=setup_file,
                flexrs_goal=flexrs_goal,
                input_ready=input_ready,
                input_settle_minutes=input_settle_minutes,
                input_marker=input_marker,
                input_wait_minutes=input_wait_minutes,
                cost_jump_ratio=cost_jump_ratio,
                map_points=map_points,
                thumbnail_budget_mb=thumbnail_budget_mb,
                mosaic_grid=mosaic_grid,
                report=report,
                report_window_days=report_window_days,
                store=store,
                store_uri=store_uri,
                bigquery_index=bigquery_index,
                ds=ds,
                run_id=dsl.PIPELINE_JOB_NAME_PLACEHOLDER,
                scheduled_time=times[0],
                created_time=times[1],
            ),
            retries=0,
        )
        if ALLOWED_ROOTS:
            planned.set_env_variable("IMAGE_EMBEDDINGS_ALLOWED_ROOTS", ALLOWED_ROOTS)
        the_plan = planned.outputs["plan"]
        waited = _retry(wait_for_input(plan=the_plan, wait_minutes=input_wait_minutes), retries=0)
        extract = _retry(extract_embeddings(plan=the_plan).after(waited))
        validated = _retry(validate_extraction(plan=the_plan).after(extract), retries=0)
        reduced = reduce_methods(
            plan=the_plan,
            reductions=planned.outputs["reductions"],
            map_points=map_points,
            thumbnail_budget_mb=thumbnail_budget_mb,
            mosaic_grid=mosaic_grid,
        ).after(validated)
        indexed = _retry(build_index(plan=the_plan).after(validated))
        compared = _retry(compare_models(plan=the_plan).after(validated), retries=0)
        published = _retry(
            publish(
                plan=the_plan,
                extraction=validated.outputs["Output"],
                extract_job=extract.outputs["Output"],
                reduce_jobs=reduced.output,
                index_job=indexed.outputs["Output"],
                comparison=compared.outputs["Output"],
                input_ready=waited.output,
                cost_jump_ratio=cost_jump_ratio,
            ),
            retries=1,
        )
        _retry(morning_report(plan=the_plan, extraction=validated.outputs["Output"]).after(published), retries=0)
        _retry(publish_store(plan=the_plan).after(reduced), retries=1)

    return image_embeddings


image_embeddings = nightly_pipeline()


def compile_pipeline(path: str = OUTPUT) -> str:
    os.makedirs(os.path.dirname(path) or ".", exist_ok=True)
    compiler.Compiler().compile(image_embeddings, package_path=path)
    return path


if __name__ == "__main__":
    parser = argparse.ArgumentParser(description="Compile the nightly pipeline to KFP v2 YAML.")
    parser.add_argument("--output", default=OUTPUT)
    print(compile_pipeline(parser.parse_args().output))
