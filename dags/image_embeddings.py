"""
### Nightly image embeddings

Embeds the images that landed for the run's date with one or more pretrained
Keras models (param `models`; Beam job `beam_jobs.extract_embeddings`, one pass
that decodes each image once), checks the result, reduces the embeddings to 2D
for every (model, method) pair (`beam_jobs.reduce_dim`, one mapped `reduce`
task instance per pair), compares the models when there are two or more
(`beam_jobs.compare`) and publishes the run as an Asset event with its counts
and the location of the maps, grouped by model.

```
plan -> wait_for_input -> extract_embeddings -> extract_embeddings_done -> validate_extraction
     -> reductions -> reduce[model, method] -> reduce_done[model, method] -> publish   (.expand)
     -> compare_models ------------------------------------------------/   (2+ models)
     -> choose_index   -> build_index -> build_index_done -------------/   (param `index`)
```

On `DataflowRunner` each Beam task submits its job and the `*_done` task
waits for it in the triggerer (`DataflowJobDoneSensor`, a `DataflowJobStatusSensor`
on the Beam task's `dataflow_job_id` XCom), then reads the job's metrics. Marking a waiting task
failed cancels its Dataflow job. With a local runner the jobs run inside the
Beam tasks and the `*_done` tasks return at once.

**Outputs** (one partition per logical date, replaced whole on every run, so
re-runs and `airflow backfill create` never leave two copies):

- `<output_root>/embeddings/ds=YYYY-MM-DD/` embeddings Parquet, failures JSONL, manifest.json
- `<output_root>/projections/method=<m>/ds=YYYY-MM-DD/` projection Parquet, map.png, map.html (the first
  model's; the others' under `projections/model=<name>/method=<m>/ds=YYYY-MM-DD/`)
- `<output_root>/comparisons/ds=YYYY-MM-DD/` comparison.json and comparison.png (two or more models)
- `<output_root>/index/ds=YYYY-MM-DD/` similarity index (faiss), rows, near/exact duplicates, manifest.json
- `<output_root>/runs/ds=YYYY-MM-DD/run.json` the published record

**Trigger form**: `input` may use `{{ ds }}` (the run's date); `methods` picks
the reductions; `runner` is `FnApiRunner` (this machine) or `DataflowRunner`
(needs gs:// paths and the Airflow Variables `image_embeddings_project`,
`image_embeddings_region`, `image_embeddings_temp_location`, or the same params;
workers run the image named by `sdk_container_image` (built from `worker.Dockerfile`),
or else install the jobs from the setup.py named by `IMAGE_EMBEDDINGS_SETUP_FILE`,
which the Docker image sets); `engine` and `precision` choose how the model runs
(`auto`: decided on each worker for its CPU). Bad values are refused before any job starts: the
trigger form checks each field, the `plan` task the fields together.

Owner: ml-platform. Runbook: README.md, "Operating the DAG".
"""

from __future__ import annotations

import logging
import os
from datetime import UTC, datetime, timedelta

from airflow.sdk import DAG, Asset, AsyncCallback, DeadlineAlert, DeadlineReference, TriggerRule, task

from beam_jobs.contract import JOB_EXTRACT, JOB_INDEX, JOB_REDUCE
from image_embeddings_airflow.alerts import FailureAlert
from image_embeddings_airflow.dataflow import DataflowJobDoneSensor
from image_embeddings_airflow.operators import InputFilesSensor, NightlyBeamOperator
from image_embeddings_airflow.params import trigger_params
from image_embeddings_airflow.runs import DAG_ID, MAPS_ASSET, PUBLISH_TASK

# Deployment settings read once at parse time from the environment (cheap; no Variable or DB access).
PYTHON = os.environ.get("IMAGE_EMBEDDINGS_PYTHON") or None  # None: the interpreter running Airflow
# A nightly run still going this long after it was queued raises a deadline alert (webhook + log).
# Opt-in: Airflow 3.3's dag.test() fails on DAGs with a deadline (DagRun.update_state looks the
# alert up by an id it does not have there), so local demo and test runs leave it unset.
DEADLINE_MINUTES = int(os.environ.get("IMAGE_EMBEDDINGS_DEADLINE_MINUTES") or 0)

LOG = logging.getLogger(__name__)

MAPS = Asset(name=MAPS_ASSET, uri="image-embeddings://maps", group="image_embeddings")

default_args = {
    "owner": "ml-platform",
    "retries": 2,
    "retry_delay": timedelta(minutes=2),
    "retry_exponential_backoff": 2.0,
    "max_retry_delay": timedelta(minutes=30),
    # Logged always; POSTed to the 'image_embeddings_alerts' connection when it exists.
    "on_failure_callback": FailureAlert("task"),
}

with DAG(
    dag_id=DAG_ID,
    description="Embed the night's images (Beam + ResNet50), reduce to 2D (PCA, UMAP), publish the maps",
    doc_md=__doc__,
    schedule="0 3 * * *",
    start_date=datetime(2026, 11, 1, tzinfo=UTC),
    catchup=False,
    # One night at a time on a local runner; raise it (and use --max-active-runs in backfills) on Dataflow.
    max_active_runs=1,
    dagrun_timeout=timedelta(hours=8),
    default_args=default_args,
    on_failure_callback=FailureAlert("dag"),
    deadline=DeadlineAlert(
        reference=DeadlineReference.DAGRUN_QUEUED_AT,
        interval=timedelta(minutes=DEADLINE_MINUTES),
        callback=AsyncCallback(
            "image_embeddings_airflow.alerts.deadline_missed", kwargs={"limit_minutes": DEADLINE_MINUTES}
        ),
    )
    if DEADLINE_MINUTES
    else None,
    tags=["ml", "embeddings", "beam", "nightly"],
    # Each field's schema is checked when a run is created (trigger form, REST API, backfill, dag.test).
    params=trigger_params(),
) as dag:

    @task(retries=0, multiple_outputs=True)
    def plan(params: dict | None = None, **context) -> dict:
        """Check the run's parameters together and resolve its paths; fails at once, without retries."""
        from airflow.sdk import Variable
        from airflow.sdk.exceptions import AirflowFailException

        from image_embeddings_airflow.runs import DATAFLOW_SETTINGS, PlanError, build_plan

        run = context["dag_run"]
        when = run.logical_date or run.run_after  # manual runs may have no logical date in Airflow 3
        ds = when.strftime("%Y-%m-%d")
        local = {**context, "ds": ds, "ds_nodash": ds.replace("-", "")}
        rendered = context["task"].render_template(params["input"], local)
        dataflow = {
            name: params.get(name) or Variable.get(f"image_embeddings_{name}", default=None)
            for name in DATAFLOW_SETTINGS
        }
        try:
            resolved = build_plan(dict(params), ds, run.run_id, rendered, dataflow)
        except PlanError as exc:
            raise AirflowFailException(str(exc)) from exc
        if not resolved["input_varies_by_date"]:
            LOG.warning("input %r does not contain the run's date: every date reads the same files", resolved["input"])
        LOG.info("plan for ds=%s: %s", ds, resolved)
        return resolved

    # Each key of the plan is its own XCom: tasks below take planned["<key>"] (an XComArg, resolved
    # when the task's templates are rendered), which also makes them downstream of plan.
    planned = plan()

    wait_for_input = InputFilesSensor(
        task_id="wait_for_input",
        pattern=planned["input"],
        wait_minutes="{{ params.input_wait_minutes }}",
        rule=planned["input_ready"],
        settle_minutes=planned["input_settle_minutes"],
        marker=planned["input_marker"],
        poke_interval=300,
        retries=0,
    )

    # Project and region come from the plan's Dataflow settings; the operator ignores all of it
    # with a local runner.
    dataflow_config = {"job_name": "image-embeddings-{{ task.task_id | replace('_', '-') }}-{{ ds_nodash }}"}
    # Mapped instances run at once: each Dataflow job needs a name of its own.
    mapped_dataflow_config = {
        "job_name": "image-embeddings-{{ task.task_id | replace('_', '-') }}-{{ ti.map_index }}-{{ ds_nodash }}"
    }

    extract = NightlyBeamOperator(
        task_id="extract_embeddings",
        job=JOB_EXTRACT,
        runner="{{ params.runner }}",
        py_interpreter=PYTHON,
        pipeline_options={
            "input": planned["input"],
            "output": planned["embeddings_dir"],
            "model": planned["model"],
            "weights": planned["weights"],
            "engine": planned["engine"],
            "precision": planned["precision"],
            "batch_size": planned["batch_size"],
            "skip_known": planned["skip_known"],
            "run_id": "{{ run_id }}",
        },
        dataflow_config=dataflow_config,
        dataflow_options=planned["dataflow"],
        execution_timeout=timedelta(hours=4),
    )

    def job_done(beam_task_id: str) -> DataflowJobDoneSensor:
        return DataflowJobDoneSensor(
            task_id=f"{beam_task_id}_done",
            beam_task_id=beam_task_id,
            runner="{{ params.runner }}",
            dataflow=planned["dataflow"],
            # Waiting is cheap (deferred); a job that ends FAILED fails the task without retries.
            execution_timeout=timedelta(hours=6),
        )

    extract_done = job_done(extract.task_id)

    @task(retries=0, multiple_outputs=True)
    def validate_extraction(plan: dict) -> dict:
        """Read the job's manifest: fail when nothing was embedded or too many inputs failed."""
        from airflow.sdk.exceptions import AirflowFailException

        from beam_jobs.contract import MANIFEST
        from image_embeddings_airflow.metrics import emit_extraction
        from image_embeddings_airflow.paths import join, read_json
        from image_embeddings_airflow.runs import ExtractionRejected, check_extraction

        manifest = read_json(join(plan["embeddings_dir"], MANIFEST))
        try:
            summary = check_extraction(manifest, plan["max_failure_rate"], plan["embeddings_dir"])
        except ExtractionRejected as exc:
            raise AirflowFailException(str(exc)) from exc
        finally:
            # Emitted for rejected runs too: a failure-rate spike is what the dashboards are for.
            emit_extraction(manifest)
        LOG.info(
            "extraction ok: %s embedded, %s failed of %s inputs (%s images/s)",
            summary["embedded"],
            summary["failed"],
            summary["inputs"],
            summary["images_per_second"],
        )
        return summary

    @task(retries=0)
    def reductions(plan: dict, extraction: dict, params: dict | None = None) -> list[dict]:
        """The reduce job's flags for every (model, method) pair: what the mapped reduce task expands over."""
        from beam_jobs.launch import reduction_options

        model_ids = {name: model["model_id"] for name, model in extraction["models"].items()}
        return [
            reduction_options(
                plan, r, model_ids, params["map_points"], params["thumbnail_budget_mb"], params["mosaic_grid"]
            )
            for r in plan["reductions"]
        ]

    # One mapped task instance per (model, method): the graph stays this size whatever the night asks for.
    validated = validate_extraction(planned)
    reduce_flags = reductions(planned, validated)
    reducer = NightlyBeamOperator.partial(
        task_id="reduce",
        job=JOB_REDUCE,
        runner="{{ params.runner }}",
        py_interpreter=PYTHON,
        dataflow_config=mapped_dataflow_config,
        dataflow_options=planned["dataflow"],
        execution_timeout=timedelta(hours=2),
    ).expand(pipeline_options=reduce_flags)
    reducer_done = DataflowJobDoneSensor.partial(
        task_id="reduce_done",
        beam_task_id="reduce",
        runner="{{ params.runner }}",
        dataflow=planned["dataflow"],
        execution_timeout=timedelta(hours=6),
    ).expand(job=reduce_flags)

    @task(retries=0)
    def compare_models(plan: dict) -> dict:
        """Two or more models: how much their neighbourhoods differ (comparison.json, comparison.png)."""
        from airflow.sdk.exceptions import AirflowSkipException

        if not plan["compare"]:
            raise AirflowSkipException("one model: nothing to compare")
        from beam_jobs.compare.job import run

        report = run(
            ["--input", plan["embeddings_dir"], "--output", plan["comparison_dir"], "--run_id", plan["run_id"]]
        )
        for pair in report["comparisons"]:
            LOG.info("%s: overlap@%s %s", " vs ".join(pair["models"]), pair["k"], pair["knn_overlap"]["mean"])
        return report

    @task.branch(retries=0)
    def choose_index(index: bool) -> list[str]:
        return ["build_index"] if index else []

    indexer = NightlyBeamOperator(
        task_id="build_index",
        job=JOB_INDEX,
        runner="{{ params.runner }}",
        py_interpreter=PYTHON,
        pipeline_options={
            "input": planned["embeddings_dir"],
            "output": planned["index_dir"],
            "window_days": planned["index_window_days"],
            "duplicate_threshold": planned["duplicate_threshold"],
            # A several-model partition: the index is the first model's.
            "model_id": validated["model_id"],
            "run_id": "{{ run_id }}",
        },
        dataflow_config=dataflow_config,
        dataflow_options=planned["dataflow"],
        execution_timeout=timedelta(hours=2),
    )
    indexer_done = job_done(indexer.task_id)

    @task(task_id=PUBLISH_TASK, trigger_rule=TriggerRule.NONE_FAILED_MIN_ONE_SUCCESS, outlets=[MAPS], retries=1)
    def publish(plan: dict, extraction: dict, params: dict | None = None, **context) -> dict:
        """Record the run: counts, throughput and where the maps are, as an Asset event and a run.json."""
        from airflow.sdk import Variable

        from beam_jobs.contract import run_record_path
        from image_embeddings_airflow.alerts import cost_alert, drift_alert_payload, post_alert
        from image_embeddings_airflow.metrics import emit_cost, emit_projection
        from image_embeddings_airflow.paths import read_json, write_json
        from image_embeddings_airflow.runs import drift_alerts, night_record, prices, reduction_key

        # The *_done results of the Beam tasks that ran; the mapped reduce_done's come in the reductions' order.
        ti = context["ti"]
        jobs = {"extract_embeddings": ti.xcom_pull(task_ids="extract_embeddings_done")}
        done = ti.xcom_pull(task_ids="reduce_done", map_indexes=list(range(len(plan["reductions"])))) or []
        jobs.update({reduction_key(r): job for r, job in zip(plan["reductions"], done, strict=False)})
        if plan.get("index"):
            jobs["build_index"] = ti.xcom_pull(task_ids="build_index_done")
        overrides = Variable.get("image_embeddings_prices", default=None, deserialize_json=True)
        table, price_problems = prices(overrides)
        for problem in price_problems:
            LOG.warning("Variable image_embeddings_prices: %s (the default is used)", problem)
        record, projections, jump = night_record(
            plan,
            extraction,
            jobs,
            read_json,
            input_ready=ti.xcom_pull(task_ids=wait_for_input.task_id),
            table=table,
            overridden=bool(overrides),
            cost_jump_ratio=float(params.get("cost_jump_ratio", 2.0)),
        )
        for method, manifest in projections.items():
            emit_projection(method, manifest)
            # Drift never fails the run: crossing a threshold posts an alert through the failure notifier's hook.
            problems = drift_alerts(manifest.get("drift"), plan)
            if problems:
                post_alert(drift_alert_payload(plan, method, manifest, problems, context["run_id"]))
        write_json(run_record_path(plan["output_root"], plan["ds"]), record)
        context["outlet_events"][MAPS].extra = record
        emit_cost(record["cost"])
        if jump:
            cost_alert(plan["ds"], plan["run_id"], jump)
        embeddings = record["embeddings"]
        LOG.info(
            "published ds=%s: %s embedded of %s inputs, %s images/s",
            plan["ds"],
            embeddings["embedded"],
            embeddings["inputs"],
            embeddings["images_per_second"],
        )
        for name, model in record.get("models", {}).items():
            for method, entry in model["projections"].items():
                LOG.info(
                    "  %s %s: %s rows; map %s and %s", name, method, entry["rows"], entry["map_png"], entry["map_html"]
                )
        if "comparison" in record:
            LOG.info("  comparison: %s", record["comparison"])
        if "index" in record:
            LOG.info("  index: %s", record["index"])
        return record

    planned >> wait_for_input >> extract >> extract_done >> validated
    reducer >> reducer_done
    published = publish(planned, validated)
    reducer_done >> published
    validated >> compare_models(planned) >> published
    validated >> choose_index(planned["index"]) >> indexer >> indexer_done >> published
