"""
### Nightly image embeddings

**The run at 03:00 on day D+1 embeds the images filed under D** (a data-interval timetable: the run's
logical date is the day that ended). Manual triggers and backfills embed the dates they name.

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

**Backfills** run nights side by side, but `reduce` and `build_index` wait for the night before
(`wait_for_downstream`): a fitted 2D frame and the index that extends the earlier one are built oldest
night first, as a sequential run would; the extractions, where a backfill's time goes, stay parallel. A free
slot goes to the night furthest along (`weight_rule="upstream"`), so nights finish oldest first.

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

Owner: ml-platform. Runbook: docs/dag.md, "Operating the DAG".
"""

from __future__ import annotations

import logging
import os
from datetime import UTC, datetime, timedelta

from airflow.sdk import (
    DAG,
    Asset,
    AsyncCallback,
    CronDataIntervalTimetable,
    DeadlineAlert,
    DeadlineReference,
    TriggerRule,
    task,
)

from beam_jobs.contract import JOB_EXTRACT, JOB_INDEX, JOB_REDUCE
from image_embeddings_airflow import DAG_ID, MAPS_ASSET, PUBLISH_TASK
from image_embeddings_airflow.alerts import FailureAlert
from image_embeddings_airflow.dataflow import DataflowJobDoneSensor
from image_embeddings_airflow.operators import InputFilesSensor, NightlyBeamOperator
from image_embeddings_airflow.params import trigger_params

# Deployment settings read once at parse time from the environment (cheap; no Variable or DB access).
PYTHON = os.environ.get("IMAGE_EMBEDDINGS_PYTHON") or None  # None: the interpreter running Airflow
# A nightly run still going this long after it was queued raises a deadline alert (webhook + log).
# Opt-in: Airflow 3.3's dag.test() fails on DAGs with a deadline (DagRun.update_state looks the
# alert up by an id it does not have there), so local demo and test runs leave it unset.
DEADLINE_MINUTES = int(os.environ.get("IMAGE_EMBEDDINGS_DEADLINE_MINUTES") or 0)

LOG = logging.getLogger(__name__)
# How the plan's messages tell an operator to supply a Dataflow setting, here where Variables exist.
VARIABLE_HINT = "set the '{name}' param or the Airflow Variable 'image_embeddings_{name}'"

MAPS = Asset(name=MAPS_ASSET, uri="image-embeddings://maps", group="image_embeddings")

default_args = {
    "owner": "ml-platform",
    "retries": 2,
    "retry_delay": timedelta(minutes=2),
    "retry_exponential_backoff": 2.0,
    "max_retry_delay": timedelta(minutes=30),
    # A task's priority is the number of tasks before it, so a free slot goes to the night furthest along: in a
    # backfill the oldest night reaches its date-ordered reduce and build_index first, and those run while later
    # nights extract, instead of every night's extraction being queued first (the default, "downstream").
    "weight_rule": "upstream",
    # Logged always; POSTed to the 'image_embeddings_alerts' connection when it exists.
    "on_failure_callback": FailureAlert("task"),
}

with DAG(
    dag_id=DAG_ID,
    description="Embed the day's images with Beam, reduce them to 2D (PCA, UMAP), index them, publish the maps",
    doc_md=__doc__,
    # A data interval per day: the run that fires at 03:00 on D+1 has the logical date D and embeds the
    # images filed under D, a day that has ended. (A plain cron string would be a CronTriggerTimetable in
    # Airflow 3, whose logical date is the firing time: 03:00 would read a day that has barely begun.)
    schedule=CronDataIntervalTimetable("0 3 * * *", timezone="UTC"),
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

        from beam_jobs.nightly.launch import extract_options
        from beam_jobs.nightly.paths import PlanError
        from beam_jobs.nightly.plan import DATAFLOW_SETTINGS
        from beam_jobs.nightly.steps import plan_night

        run = context["dag_run"]
        # The night's date: the data interval's start on scheduled runs and backfills (the day that ended),
        # the date the user names on manual ones; a manual run may have no logical date in Airflow 3.
        ds = (run.logical_date or run.run_after).strftime("%Y-%m-%d")
        local = {**context, "ds": ds, "ds_nodash": ds.replace("-", "")}
        rendered = context["task"].render_template(params["input"], local)
        # A Dataflow setting left unset in the form comes from its Airflow Variable.
        dataflow = {
            name: params.get(name) or Variable.get(f"image_embeddings_{name}", default=None)
            for name in DATAFLOW_SETTINGS
        }
        try:
            resolved = plan_night(dict(params), ds, run.run_id, rendered, dataflow, setting_hint=VARIABLE_HINT)
        except PlanError as exc:
            raise AirflowFailException(str(exc)) from exc
        return {**resolved, "extract_options": extract_options(resolved)}

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
        pipeline_options=planned["extract_options"],
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

        from beam_jobs.nightly.launch import index_options
        from beam_jobs.nightly.record import ExtractionRejected
        from beam_jobs.nightly.steps import validate_step
        from image_embeddings_airflow.metrics import emit_extraction
        from image_embeddings_airflow.paths import read_json

        try:
            summary = validate_step(plan, read_json=read_json, on_manifest=emit_extraction)
        except ExtractionRejected as exc:
            raise AirflowFailException(str(exc)) from exc
        # The index job's flags need the primary model's model_id, which the extraction decided.
        return {**summary, "index_options": index_options(plan, summary["model_id"])}

    @task(retries=0)
    def reductions(plan: dict, extraction: dict, params: dict | None = None) -> list[dict]:
        """The reduce job's flags for every (model, method) pair: what the mapped reduce task expands over."""
        from beam_jobs.nightly.launch import reduction_options

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
    # Tasks that read or extend earlier nights' state (a reference fitted when missing, the earlier index)
    # wait for the previous night's same task and its *_done (wait_for_downstream, which implies
    # depends_on_past; on Dataflow the job ends in *_done): in a backfill the extractions run side by side,
    # these one night at a time, oldest first, as a sequential run would see them.
    reducer = NightlyBeamOperator.partial(
        task_id="reduce",
        depends_on_past=True,  # implied by wait_for_downstream on plain operators, not on .partial()
        wait_for_downstream=True,
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

    # Runs in the Airflow worker (a few seconds of numpy on a sample, not a Beam job); its output is replaced
    # whole, so a retry is safe, and the timeout keeps a stuck read from holding a worker slot all night.
    @task(execution_timeout=timedelta(hours=1))
    def compare_models(plan: dict) -> dict:
        """Two or more models: how much their neighbourhoods differ (comparison.json, comparison.png)."""
        from airflow.sdk.exceptions import AirflowSkipException

        from beam_jobs.nightly.steps import compare_step

        if not plan["compare"]:
            raise AirflowSkipException("one model: nothing to compare")
        return compare_step(plan)

    @task.branch(retries=0)
    def choose_index(index: bool) -> list[str]:
        return ["build_index"] if index else []

    indexer = NightlyBeamOperator(
        task_id="build_index",
        wait_for_downstream=True,
        job=JOB_INDEX,
        runner="{{ params.runner }}",
        py_interpreter=PYTHON,
        # A several-model partition: the index is the first model's.
        pipeline_options=validated["index_options"],
        dataflow_config=dataflow_config,
        dataflow_options=planned["dataflow"],
        execution_timeout=timedelta(hours=2),
    )
    indexer_done = job_done(indexer.task_id)

    @task(task_id=PUBLISH_TASK, trigger_rule=TriggerRule.NONE_FAILED_MIN_ONE_SUCCESS, outlets=[MAPS], retries=1)
    def publish(plan: dict, extraction: dict, params: dict | None = None, **context) -> dict:
        """Record the run: counts, throughput and where the maps are, as an Asset event and a run.json."""
        from airflow.sdk import Variable
        from airflow.sdk.exceptions import AirflowFailException

        from beam_jobs.nightly.cost import prices
        from beam_jobs.nightly.plan import reduction_key
        from beam_jobs.nightly.record import FrameChanged
        from beam_jobs.nightly.steps import publish_step
        from image_embeddings_airflow import alerts, metrics
        from image_embeddings_airflow.paths import read_json, write_json

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
        run_id = context["run_id"]
        try:
            record = publish_step(
                plan,
                extraction,
                jobs,
                ti.xcom_pull(task_ids=wait_for_input.task_id),
                params["cost_jump_ratio"],
                prices=table,
                prices_overridden=bool(overrides),
                read_json=read_json,
                write_json=write_json,
                on_projection=metrics.emit_projection,
                # Drift never fails the run: it posts an alert through the failure notifier's hook.
                on_drift=lambda method, manifest, problems: alerts.post_alert(
                    alerts.drift_alert_payload(plan, method, manifest, problems, run_id)
                ),
                on_cost_jump=lambda why: alerts.cost_alert(plan["ds"], run_id, why),
            )
        except FrameChanged as exc:  # the failure notifier posts the alert, with this message
            raise AirflowFailException(str(exc)) from exc
        # The event also names where the morning report will be (the report task runs after this one).
        context["outlet_events"][MAPS].extra = {**record, "report_dir": plan["report_dir"]}
        metrics.emit_cost(record["cost"])
        return record

    # After publish whatever happened before it (a rejected night still has failures to show); a report
    # problem alerts and never fails the night.
    @task(trigger_rule=TriggerRule.ALL_DONE, retries=0, execution_timeout=timedelta(hours=1))
    def report(plan: dict | None = None, **context) -> dict:
        """The morning report: what changed tonight, in pictures (reports/ds=.../report.html, .png, .json)."""
        from airflow.sdk.exceptions import AirflowSkipException

        from beam_jobs.nightly.steps import report_night
        from image_embeddings_airflow import alerts

        if not plan:
            raise AirflowSkipException("no plan: the night never started")
        from beam_jobs.nightly.frame import drift_alerts

        ti, run_id = context["ti"], context["run_id"]
        model_id = ti.xcom_pull(task_ids="validate_extraction", key="model_id")
        payload = {"what": "report", "ds": plan["ds"], "run_id": run_id}
        summary = report_night(
            plan,
            model_id,
            on_problem=lambda text: alerts.post_alert({**payload, "error": text, "text": f":warning: {text}"}),
        )
        # publish returns the night's record: none means the night did not get that far.
        record = ti.xcom_pull(task_ids=PUBLISH_TASK)
        drifted = any(drift_alerts(p.get("drift"), plan) for p in ((record or {}).get("projections") or {}).values())
        alert = alerts.report_alert({**plan, "run_id": run_id}, summary, record is None, drifted)
        if alert:
            alerts.post_alert(alert)
        return summary

    # After the maps (their 2D coordinates go into the store too); beside publish, so a store that is down
    # fails the night without holding back its maps.
    @task(retries=1, execution_timeout=timedelta(hours=2))
    def publish_store(plan: dict, **context) -> dict:
        """The night into the vector store (param store): Lance (a folder or gs://), or BigQuery through the
        Google provider's BigQueryInsertJobOperator (create, load the date's partition, per-model tables, vector
        indexes); skipped when the store is none."""
        from airflow.sdk.exceptions import AirflowSkipException

        from beam_jobs.nightly.steps import model_ids
        from beam_jobs.nightly.store import store_night
        from beam_jobs.publish_store.config import STORE_BIGQUERY, STORE_NONE

        if plan["store"] == STORE_NONE:
            raise AirflowSkipException("no vector store configured (param store is none)")
        if plan["store"] == STORE_BIGQUERY:
            from image_embeddings_airflow import bigquery

            jobs = bigquery.publish_night(plan, list(model_ids(plan).values()), context)
            return {"store": STORE_BIGQUERY, "dataset": plan["store_uri"], "jobs": jobs}
        return store_night(plan)

    # A run's state is its leaves' state, and `report` (all_done) is a leaf that succeeds or skips after a
    # failure too: without this task a night whose plan or extraction failed would be marked success.
    # (Airflow's "watcher" pattern; its own failure alerts nothing, the run's on_failure_callback does.)
    @task(trigger_rule=TriggerRule.ONE_FAILED, retries=0, on_failure_callback=None)
    def night_status() -> None:
        """Fails the run when any task of the night failed; skipped when none did."""
        from airflow.sdk.exceptions import AirflowFailException

        raise AirflowFailException("a task of this night failed (its own log says why); the run is failed")

    planned >> wait_for_input >> extract >> extract_done >> validated
    reducer >> reducer_done
    published = publish(planned, validated)
    published >> report(planned)
    reducer_done >> published
    reducer_done >> publish_store(planned)
    validated >> compare_models(planned) >> published
    validated >> choose_index(planned["index"]) >> indexer >> indexer_done >> published
    list(dag.tasks) >> night_status()
