"""DataflowRunner wiring of the nightly DAG, without Dataflow.

Dataflow cannot be reached from here, so these tests stop at its edge: the
DAG's own tasks are rendered with a real plan, the real Beam provider launches
a stand-in interpreter that parses the command with the jobs' own parsers and
Beam's PipelineOptions (then prints Beam's "Created job" line), and the
deferrals are checked for the trigger, job id, project and region the
triggerer would poll. Cancelling on kill is checked at the one call that would
reach Dataflow.
"""

from __future__ import annotations

import asyncio
import json
import os
import stat
import subprocess
import sys
from pathlib import Path
from typing import Any

import pytest

from tests.conftest import ROOT

DS = "2026-11-20"
JOB_ID = "2026-11-20_03_00_00-4242424242"
DATAFLOW = {
    "project": "acme-ml",
    "region": "europe-west4",
    "temp_location": "gs://acme-tmp/beam",
    "staging_location": "gs://acme-tmp/staging",
    "setup_file": "/opt/image-embeddings/setup.py",
    "sdk_container_image": "europe-west4-docker.pkg.dev/acme-ml/images/embeddings-worker:2026-11-20",
}

# Stands in for the interpreter the operator launches: parses exactly what it was given with the
# jobs' parsers and Beam's options, records the result, and logs what Beam logs on submission.
LAUNCHER = """#!{python}
import json, os, sys
sys.path.insert(0, {root!r})
from apache_beam.options.pipeline_options import (
    DebugOptions, GoogleCloudOptions, PipelineOptions, SetupOptions, StandardOptions, WorkerOptions,
)
from beam_jobs.config import ExtractConfig, ReduceConfig

if sys.argv[1] == "-c":  # the provider asks the interpreter for its Beam version first
    os.execv(sys.executable, [sys.executable, *sys.argv[1:]])
assert sys.argv[1] == "-m", sys.argv
module, args = sys.argv[2], sys.argv[3:]
config = {{"beam_jobs.extract_embeddings": ExtractConfig, "beam_jobs.reduce_dim": ReduceConfig}}[module]
cfg, beam_args = config.parse(args)
opts = PipelineOptions(beam_args)
gcp = opts.view_as(GoogleCloudOptions)
record = {{
    "module": module, "args": args, "beam_args": beam_args, "cfg": {{k: str(v) for k, v in vars(cfg).items()}},
    "runner": opts.view_as(StandardOptions).runner, "project": gcp.project, "region": gcp.region,
    "temp_location": gcp.temp_location, "staging_location": gcp.staging_location, "job_name": gcp.job_name,
    "labels": gcp.labels, "flexrs_goal": gcp.flexrs_goal, "setup_file": opts.view_as(SetupOptions).setup_file,
    "sdk_container_image": opts.view_as(WorkerOptions).sdk_container_image,
    "experiments": opts.view_as(DebugOptions).experiments,
    "harness_threads": opts.view_as(DebugOptions).number_of_worker_harness_threads,
}}
with open(os.environ["FAKE_LAUNCH_RECORD"], "w") as f:
    json.dump(record, f)
print("INFO apiclient: Created job with id: [{job_id}]", file=sys.stderr, flush=True)
"""


class RecordingTI:
    """The slice of a task instance that rendering and the Beam operator use: XCom in and out."""

    def __init__(self, xcoms: dict[tuple, Any], map_index: int = -1):
        self.xcoms = xcoms
        self.map_index = map_index
        self.pushed: dict[str, Any] = {}

    def xcom_pull(self, task_ids: str | None = None, key: str = "return_value", map_indexes: int | None = None, **_):
        """Keys (task, key), or (task, key, map index) for a mapped task's instance."""
        if map_indexes is not None and map_indexes >= 0:
            return self.xcoms.get((task_ids, key, map_indexes))
        return self.xcoms.get((task_ids, key))

    def xcom_push(self, key: str, value: Any, **_) -> None:
        self.pushed[key] = value


@pytest.fixture(scope="module")
def dag():
    from airflow.dag_processing.dagbag import DagBag

    return DagBag(dag_folder=os.path.join(ROOT, "dags")).dags["image_embeddings"]


@pytest.fixture
def dataflow_plan(dag):
    from beam_jobs.nightly.plan import build_plan

    params = {
        **{k: dag.params[k] for k in dag.params},
        "runner": "DataflowRunner",
        "input": "gs://acme-images/ds={{ ds }}/*.jpg",
        "output_root": "gs://acme-out/nightly",
        "weights": "gs://acme-models/resnet50_notop.h5",
        "methods": ["pca", "umap"],
        "models": ["resnet50", "mobilenet_v3_large"],
        "flexrs_goal": "COST_OPTIMIZED",
    }
    run_id = f"scheduled__{DS}T03:00:00+00:00"
    plan = build_plan(params, DS, run_id, f"gs://acme-images/ds={DS}/*.jpg", DATAFLOW)
    return params, plan


def plan_xcoms(plan: dict) -> dict[tuple[str, str], Any]:
    """The plan task's XComs: the whole plan, and each key on its own (``multiple_outputs``), with the
    extraction's flags the plan task adds from the function the Kubeflow step uses."""
    from beam_jobs.nightly.launch import extract_options

    planned = {**plan, "extract_options": extract_options(plan)}
    return {("plan", "return_value"): planned, **{("plan", key): value for key, value in planned.items()}}


def render(
    dag, task_id: str, params: dict, xcoms: dict, mapped: dict | None = None, map_index: int = -1
) -> tuple[Any, dict]:
    """The task as a worker runs it, templates rendered; a mapped task's instance ``map_index`` from the
    values ``mapped`` it expands with."""
    task = dag.get_task(task_id)
    if mapped is not None:
        task = task.unmap(mapped)
        task.dag = dag
    task = task.prepare_for_execution()
    ti = RecordingTI(xcoms, map_index)
    context = {
        "params": params,
        "ti": ti,
        "task_instance": ti,
        "task": task,
        "ds": DS,
        "ds_nodash": DS.replace("-", ""),
        "run_id": xcoms[("plan", "return_value")]["run_id"],
    }
    task.render_template_fields(context)
    return task, context


@pytest.fixture
def launcher(tmp_path, monkeypatch) -> tuple[str, Path]:
    path = tmp_path / "fake-python"
    path.write_text(LAUNCHER.format(python=sys.executable, root=ROOT, job_id=JOB_ID))
    path.chmod(path.stat().st_mode | stat.S_IXUSR)
    record = tmp_path / "launch.json"
    monkeypatch.setenv("FAKE_LAUNCH_RECORD", str(record))
    # A deployment defines this connection (credentials); the hooks only read it until they call GCP.
    monkeypatch.setenv("AIRFLOW_CONN_GOOGLE_CLOUD_DEFAULT", "google-cloud-platform://")
    return str(path), record


@pytest.mark.slow  # launches the jobs' parsers and Beam in a subprocess per case (~6-15 s)
@pytest.mark.parametrize(
    ("task_id", "module", "job_flags"),
    [
        (
            "extract_embeddings",
            "beam_jobs.extract_embeddings",
            {
                "input": "gs://acme-images/ds=2026-11-20/*.jpg",
                "output": "gs://acme-out/nightly/embeddings/ds=2026-11-20",
                "weights": "gs://acme-models/resnet50_notop.h5",
                "engine": "auto",
                "precision": "auto",
            },
        ),
        (
            "reduce",
            "beam_jobs.reduce_dim",
            {
                "inputs": "('gs://acme-out/nightly/embeddings/ds=2026-11-20',)",
                "output": "gs://acme-out/nightly/projections/model=mobilenet_v3_large/method=umap/ds=2026-11-20",
                "method": "umap",
                "model_id": "mobilenet-id",
            },
        ),
    ],
)
def test_beam_task_on_dataflow_submits_detached_and_defers_with_job_id(
    dag, dataflow_plan, launcher, task_id, module, job_flags
):
    from airflow.providers.google.cloud.hooks.dataflow import DataflowJobStatus  # noqa: F401 - provider present
    from airflow.sdk.exceptions import TaskDeferred

    from beam_jobs.nightly.launch import reduction_options
    from image_embeddings_airflow.dataflow import CancellingJobStateCompleteTrigger

    params, plan = dataflow_plan
    mapped = None
    if task_id == "reduce":  # the mapped instance of (mobilenet_v3_large, umap), as the reductions task lists it
        (umap,) = [r for r in plan["reductions"] if r["model"] == "mobilenet_v3_large" and r["method"] == "umap"]
        flags = reduction_options(plan, umap, {"mobilenet_v3_large": "mobilenet-id"}, 100, 1.0, 0)
        mapped = {"pipeline_options": flags}
    task, context = render(dag, task_id, params, plan_xcoms(plan), mapped, map_index=3)
    interpreter, record_file = launcher
    task.py_interpreter = interpreter
    with pytest.raises(TaskDeferred) as deferred:
        task.execute(context)

    launched = json.loads(record_file.read_text())
    assert launched["module"] == module
    for key, value in job_flags.items():
        assert launched["cfg"][key] == value, key
    assert launched["cfg"]["detach"] == "True"
    assert launched["cfg"]["run_id"] == plan["run_id"]
    assert launched["runner"] == "DataflowRunner"
    assert (launched["project"], launched["region"]) == ("acme-ml", "europe-west4")
    assert launched["temp_location"] == "gs://acme-tmp/beam"
    assert launched["staging_location"] == "gs://acme-tmp/staging"
    assert launched["setup_file"] == "/opt/image-embeddings/setup.py"
    assert launched["sdk_container_image"] == DATAFLOW["sdk_container_image"]
    # One SDK process per worker VM, whose engine uses every vCPU (README, "Performance").
    assert "no_use_multiple_sdk_containers" in launched["experiments"]
    assert launched["harness_threads"] == 4
    assert launched["flexrs_goal"] == "COST_OPTIMIZED"  # the param, as Beam's own option
    # Dataflow job names: lowercase letters, digits and hyphens; the provider adds a unique suffix.
    # Mapped instances run at once: the map index keeps their job names apart.
    name = task_id.replace("_", "-") + ("-3" if mapped else "")
    assert launched["job_name"].startswith(f"image-embeddings-{name}-20261120-")
    assert all(c.islower() or c.isdigit() or c == "-" for c in launched["job_name"])
    assert not any(a.startswith("--wait") for a in launched["args"])

    # The provider read the job id from the launcher's log and published it for the sensor.
    assert context["ti"].pushed["dataflow_job_id"] == JOB_ID
    trigger = deferred.value.trigger
    assert isinstance(trigger, CancellingJobStateCompleteTrigger)
    assert (trigger.job_id, trigger.project_id, trigger.location) == (JOB_ID, "acme-ml", "europe-west4")
    assert trigger.wait_until_finished is False  # submit only: the *_done sensor waits


def test_done_sensor_waits_on_the_beam_tasks_job_id_in_the_triggerer(dag, dataflow_plan):
    from airflow.providers.google.cloud.hooks.dataflow import DataflowJobStatus
    from airflow.sdk.exceptions import AirflowFailException, TaskDeferred

    from image_embeddings_airflow.dataflow import CancellingJobStatusTrigger

    params, plan = dataflow_plan
    # Unmapped, and the mapped reduce_done's instances, each waiting on its own reduce instance's job.
    cases = [("extract_embeddings", None, -1), ("build_index", None, -1), ("reduce", {"job": {}}, 0)]
    cases.append(("reduce", {"job": {}}, 3))
    for beam_task, mapped, index in cases:
        key = (beam_task, "dataflow_job_id") if index < 0 else (beam_task, "dataflow_job_id", index)
        xcoms = {**plan_xcoms(plan), key: f"{JOB_ID}-{beam_task}{index}"}
        sensor, context = render(dag, f"{beam_task}_done", params, xcoms, mapped, index)
        with pytest.raises(TaskDeferred) as deferred:
            sensor.execute(context)
        trigger = deferred.value.trigger
        assert isinstance(trigger, CancellingJobStatusTrigger)
        assert trigger.job_id == f"{JOB_ID}-{beam_task}{index}"
        assert trigger.expected_statuses == {DataflowJobStatus.JOB_STATE_DONE}
        assert (trigger.project_id, trigger.location) == ("acme-ml", "europe-west4")
        assert deferred.value.method_name == "execute_complete"
        # The triggerer rebuilds the trigger from its serialized form, in another process.
        classpath, kwargs = trigger.serialize()
        module, _, name = classpath.rpartition(".")
        rebuilt = getattr(__import__(module, fromlist=[name]), name)(**kwargs)
        assert rebuilt.serialize() == (classpath, kwargs)

    # No job id (the launcher never logged one) is a clear failure, not a wait on "None".
    sensor, context = render(dag, "extract_embeddings_done", params, plan_xcoms(plan))
    with pytest.raises(AirflowFailException, match="left no dataflow_job_id"):
        sensor.execute(context)


class StandInHook:
    """Dataflow's API at the sensor's one call per question: get_job and the job's metrics."""

    def __init__(self, job: dict | Exception, metrics: dict | None = None):
        self.job, self.metrics, self.calls = job, metrics or {"metrics": []}, []

    def get_job(self, job_id, project_id=None, location=None):
        self.calls.append(("get_job", job_id, project_id, location))
        if isinstance(self.job, Exception):
            raise self.job
        return self.job

    def fetch_job_metrics_by_id(self, job_id, project_id=None, location=None):
        self.calls.append(("metrics", job_id, project_id, location))
        return self.metrics


@pytest.fixture
def done_sensor(dag, dataflow_plan):
    params, plan = dataflow_plan
    xcoms = {**plan_xcoms(plan), ("reduce", "dataflow_job_id", 1): JOB_ID}
    sensor, context = render(dag, "reduce_done", params, xcoms, {"job": {}}, 1)
    assert sensor.job_id == JOB_ID  # the job of its own map index
    sensor.project_id, sensor.location = "acme-ml", "europe-west4"
    return sensor, context


@pytest.mark.parametrize(
    ("state", "outcome"),
    [
        ("JOB_STATE_DONE", "done"),
        ("JOB_STATE_FAILED", "fail: failed"),
        ("JOB_STATE_CANCELLED", "fail: was cancelled"),
        ("JOB_STATE_DRAINED", "fail: was drained"),
        ("JOB_STATE_UPDATED", "fail: was replaced by another job"),
        ("JOB_STATE_RUNNING", "retry: still JOB_STATE_RUNNING"),
        ("JOB_STATE_PAUSED_FOR_AUDIT", "retry: does not know"),  # a state newer than this code
    ],
)
def test_done_sensor_decides_from_the_jobs_state_not_the_message(done_sensor, state, outcome):
    from airflow.sdk.exceptions import AirflowException, AirflowFailException

    sensor, context = done_sensor
    hook = StandInHook({"currentState": "JOB_STATE_RUNNING"}, {"metrics": []})
    sensor.__dict__["hook"] = hook  # the provider's cached hook property
    # The message is misleading on purpose: only the state counts.
    event = {"status": "ended", "state": state, "job_id": JOB_ID, "message": "reached an expected state: DONE"}
    if outcome == "done":
        assert sensor.execute_complete(context, event)["state"] == state
        assert [c[0] for c in hook.calls] == ["metrics"]  # the state came with the event: no get_job
        return
    kind, _, words = outcome.partition(": ")
    with pytest.raises(AirflowException, match=words) as raised:
        sensor.execute_complete(context, event)
    # Failing for good (no retries) only for the states that have ended; unknown or running: retried.
    assert isinstance(raised.value, AirflowFailException) is (kind == "fail")
    if kind == "fail":
        assert "Clear reduce " in str(raised.value)
    assert hook.calls == []


def test_done_sensor_reads_the_state_once_when_polling_failed(done_sensor):
    from airflow.sdk.exceptions import AirflowException, AirflowFailException

    sensor, context = done_sensor
    # The provider's own trigger event (a wording that used to decide): no state, so get_job decides.
    event = {"status": "error", "message": f"Job with id '{JOB_ID}' is already in terminal state: JOB_STATE_DONE"}
    sensor.__dict__["hook"] = hook = StandInHook({"id": JOB_ID, "currentState": "JOB_STATE_FAILED"})
    with pytest.raises(AirflowFailException, match=r"failed .JOB_STATE_FAILED"):
        sensor.execute_complete(context, event)
    assert hook.calls == [("get_job", JOB_ID, "acme-ml", "europe-west4")]
    sensor.__dict__["hook"] = StandInHook({"id": JOB_ID, "currentState": "JOB_STATE_DONE"})
    assert sensor.execute_complete(context, event)["state"] == "JOB_STATE_DONE"
    # The API unreachable: retried, and the retry polls the same job.
    sensor.__dict__["hook"] = StandInHook(ConnectionError("503 Service Unavailable"))
    with pytest.raises(AirflowException, match=r"could not check Dataflow job .*503") as polled:
        sensor.execute_complete(context, {"status": "error", "message": "deadline exceeded"})
    assert not isinstance(polled.value, AirflowFailException)


def test_status_trigger_ends_on_any_state_it_does_not_know_to_be_going(monkeypatch):
    from image_embeddings_airflow.dataflow import CancellingJobStatusTrigger

    class StandInAsyncHook:
        def __init__(self, states):
            self.states = list(states)

        async def get_job_status(self, job_id, project_id, location):
            return self.states.pop(0)

    def events(states):
        trigger = CancellingJobStatusTrigger(
            job_id="j1", expected_statuses={"JOB_STATE_DONE"}, project_id="p", location="europe-west4", poll_sleep=0
        )
        monkeypatch.setattr(CancellingJobStatusTrigger, "async_hook", StandInAsyncHook(states), raising=False)

        async def collect():
            return [event.payload async for event in trigger.run()]

        return asyncio.run(collect())

    going = ["JOB_STATE_QUEUED", "JOB_STATE_RUNNING", "JOB_STATE_DRAINING"]
    assert events([*going, "JOB_STATE_DRAINED"]) == [{"status": "ended", "state": "JOB_STATE_DRAINED", "job_id": "j1"}]
    assert events(["JOB_STATE_RUNNING", 99]) == [{"status": "ended", "state": "99", "job_id": "j1"}]


def test_done_sensor_passes_through_on_a_local_runner(dag, dataflow_plan):
    params, plan = dataflow_plan
    params = {**params, "runner": "FnApiRunner"}
    sensor, context = render(dag, "reduce_done", params, plan_xcoms(plan), {"job": {}}, 0)
    passed = {"runner": "FnApiRunner", "job_id": None, "state": None, "metrics": {}, "resources": {}}
    assert sensor.execute(context) == passed
    # The Beam task's own measure of its local job (CPU seconds, peak memory) becomes the job's resources:
    # a mapped instance reads its own Beam instance's (same map index), not another's.
    used = {"cpu_seconds": 12.5, "peak_memory_mb": 812.0}
    other = {"cpu_seconds": 99.0, "peak_memory_mb": 1.0}
    xcoms = {**plan_xcoms(plan), ("reduce", "local_resources", 1): used, ("reduce", "local_resources", 0): other}
    sensor, context = render(dag, "reduce_done", params, xcoms, {"job": {}}, 1)
    assert sensor.execute(context)["resources"] == used
    extract = {**plan_xcoms(plan), ("extract_embeddings", "local_resources"): used}
    sensor, context = render(dag, "extract_embeddings_done", params, extract)
    assert sensor.execute(context)["resources"] == used


def test_killing_a_deferred_task_cancels_its_dataflow_job(monkeypatch):
    from image_embeddings_airflow import dataflow
    from image_embeddings_airflow.dataflow import CancellingJobStateCompleteTrigger, CancellingJobStatusTrigger

    cancelled = []
    # The one call that would reach Dataflow's API.
    monkeypatch.setattr(dataflow, "cancel_dataflow_job", lambda *args: cancelled.append(args))
    status = CancellingJobStatusTrigger(
        job_id="j1", expected_statuses={"JOB_STATE_DONE"}, project_id="p", location="europe-west4"
    )
    launch = CancellingJobStateCompleteTrigger(job_id="j2", project_id="p", location="us-central1")
    asyncio.run(status.on_kill())
    asyncio.run(launch.on_kill())
    assert cancelled == [
        ("j1", "p", "europe-west4", "google_cloud_default", None),
        ("j2", "p", "us-central1", "google_cloud_default", None),
    ]
    # Nothing was submitted yet: nothing to cancel.
    asyncio.run(CancellingJobStateCompleteTrigger(job_id="", project_id="p").on_kill())
    assert len(cancelled) == 2


def test_job_metrics_sum_committed_user_counters_over_steps():
    from image_embeddings_airflow.dataflow import job_metrics

    def counter(name, value, step, tentative=False, namespace="extract_embeddings"):
        context = {"namespace": namespace, "step": step}
        if tentative:
            context["tentative"] = "true"
        return {"name": {"origin": "user", "name": name, "context": context}, "scalar": value}

    metrics = [
        counter("embedded", 40, "s5"),
        counter("embedded", 4, "s6"),
        counter("embedded", 44, "s5", tentative=True),
        counter("failed", "4", "s4"),  # int64 as a JSON string
        counter("rows_read", 9, "s1", namespace="someone_else"),
        {"name": {"origin": "dataflow/v1b3", "name": "ElementCount", "context": {}}, "scalar": 100},
        {
            "name": {"origin": "user", "name": "batch_size", "context": {"namespace": "extract_embeddings"}},
            "distribution": {"count": 2, "sum": 40, "min": 8, "max": 32},
        },
        {
            "name": {"origin": "user", "name": "batch_size", "context": {"namespace": "extract_embeddings"}},
            "distribution": {"count": "1", "sum": "4", "min": "4", "max": "4"},
        },
    ]
    assert job_metrics(metrics) == {
        "batch_size": {"count": 3, "sum": 44, "min": 4, "max": 32, "mean": 14.667},
        "embedded": 44,
        "failed": 4,
    }


@pytest.mark.slow  # imports Beam in a fresh interpreter
def test_jobs_log_the_dataflow_job_id_where_the_provider_reads_it():
    """The jobs' __main__ logging must let Beam's INFO 'Created job' line through to the output."""
    from airflow.providers.google.cloud.hooks.dataflow import process_line_and_extract_dataflow_job_id_callback

    code = (
        "import logging; from beam_jobs.runtime import configure_logging; configure_logging();"
        "logging.getLogger('apache_beam.runners.dataflow.internal.apiclient')"
        f".info('Created job with id: [%s]', {JOB_ID!r})"
    )
    proc = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, check=True, cwd=ROOT)
    found = []
    callback = process_line_and_extract_dataflow_job_id_callback(found.append)
    for line in (proc.stdout + proc.stderr).splitlines():
        callback(line)
    assert found == [JOB_ID]


@pytest.mark.slow  # starts the reduce_dim job (Beam) in a subprocess
def test_detach_is_refused_on_a_local_runner(tmp_path):
    proc = subprocess.run(
        [
            sys.executable,
            "-m",
            "beam_jobs.reduce_dim",
            "--input",
            str(tmp_path),
            "--output",
            str(tmp_path / "o"),
            "--method",
            "pca",
            "--detach",
            "--runner",
            "FnApiRunner",
        ],
        capture_output=True,
        text=True,
        cwd=ROOT,
    )
    assert proc.returncode == 2, proc.stderr
    assert "--detach needs a remote runner" in proc.stderr
