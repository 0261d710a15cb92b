"""The nightly pipeline on Kubeflow Pipelines: compiled structure, parity with the DAG, the steps' launching.

Fast: the compiled YAML (tasks, dependencies, params, retry policy, images, caching), the jobs' flags
against the DAG's own rendered tasks, the launcher against a stand-in Dataflow at its API edge (Dataflow
cannot be reached from here). Slow: the whole pipeline under ``kfp.local`` (SubprocessRunner, no Docker)
and a ``dag.test()`` night on the same images, outputs compared.
"""

from __future__ import annotations

import builtins
import glob
import json
import os
import signal
import subprocess
import sys
import time
from typing import Any

import pytest

from tests.conftest import ROOT

kfp = pytest.importorskip("kfp")  # the [kfp] extra; `make install` installs it

DS = "2026-11-20"
DATAFLOW = {"project": "acme-ml", "region": "europe-west4", "temp_location": "gs://acme-tmp/beam"}
JOB_TASKS = ("extract-embeddings", "reduce-dim", "build-index")


@pytest.fixture(scope="module")
def compiled(tmp_path_factory) -> dict[str, Any]:
    import yaml

    from pipelines.image_embeddings_kfp import compile_pipeline

    path = compile_pipeline(str(tmp_path_factory.mktemp("kfp") / "pipeline.yaml"))
    with open(path) as handle:
        return yaml.safe_load(handle)


@pytest.fixture(scope="module")
def dag():
    from airflow.dag_processing.dagbag import DagBag

    return DagBag(dag_folder=os.path.join(ROOT, "dags")).dags["image_embeddings"]


def _fresh_imports(module: str) -> list[str]:
    code = (
        f"import sys; before = set(sys.modules); import {module};"
        "new = {m.split('.')[0] for m in set(sys.modules) - before};"
        "print(sorted(m for m in new if m not in sys.stdlib_module_names))"
    )
    proc = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, cwd=ROOT, check=True)
    return json.loads(proc.stdout.strip().replace("'", '"'))


def test_shared_decisions_and_launcher_import_only_the_standard_library():
    assert set(_fresh_imports("beam_jobs.nightly")) <= {"beam_jobs"}
    assert set(_fresh_imports("beam_jobs.nightly.launch")) <= {"beam_jobs"}


def test_pipeline_file_is_wiring_only():
    """Like the DAG file: no TensorFlow, Beam, numpy, nor Airflow when the pipeline is defined or compiled."""
    heavy = {"tensorflow", "apache_beam", "numpy", "airflow", "keras"}
    assert not heavy & set(_fresh_imports("pipelines.image_embeddings_kfp"))


# --------------------------------------------------------------------------- the compiled YAML


def test_tasks_and_dependencies(compiled):
    root = compiled["root"]["dag"]["tasks"]
    deps = {name: set(task.get("dependentTasks", [])) for name, task in root.items()}
    assert deps == {
        "plan": set(),
        "wait-for-input": {"plan"},
        "extract-embeddings": {"plan", "wait-for-input"},
        "validate-extraction": {"plan", "extract-embeddings"},
        "reduce-methods": {"plan", "validate-extraction"},
        "build-index": {"plan", "validate-extraction"},
        "compare-models": {"plan", "validate-extraction"},
        "publish": {
            *("plan", "wait-for-input", "extract-embeddings", "validate-extraction"),
            *("reduce-methods", "build-index", "compare-models"),
        },
        # After publish; its own problems are alerts, never the night's failure.
        "morning-report": {"plan", "validate-extraction", "publish"},
        # After the maps, beside publish (a store that is down does not hold the maps back).
        "publish-store": {"plan", "reduce-methods"},
    }
    # One reduce per (model, method): a loop over the plan's reductions inside the reduce-methods pipeline.
    inner = compiled["components"]["comp-reduce-methods"]["dag"]["tasks"]
    (loop,) = inner.values()
    assert loop["parameterIterator"]["items"]["inputParameter"] == "pipelinechannel--reductions"
    assert loop["taskInfo"]["name"] == "reductions"
    body = compiled["components"][loop["componentRef"]["name"]]["dag"]["tasks"]
    assert list(body) == ["reduce-dim"]
    reduction = body["reduce-dim"]["inputs"]["parameters"]["reduction"]
    assert reduction["componentInputParameter"] == "pipelinechannel--reductions-loop-item"
    # The run's figures and maps reach the UI as artifacts.
    outputs = compiled["components"]["comp-reduce-dim"]["outputDefinitions"]["artifacts"]
    assert {name: spec["artifactType"]["schemaTitle"] for name, spec in outputs.items()} == {
        "map_html": "system.HTML",
        "map_summary": "system.Markdown",
        "metrics": "system.Metrics",
        "projections": "system.Dataset",
    }
    validate = compiled["components"]["comp-validate-extraction"]["outputDefinitions"]["artifacts"]
    assert validate["metrics"]["artifactType"]["schemaTitle"] == "system.Metrics"
    for job in JOB_TASKS:
        params = compiled["components"][f"comp-{job}"]["outputDefinitions"]["parameters"]
        assert params["gcp_resources"]["parameterType"] == "STRING"


def _all_tasks(compiled) -> dict[str, dict]:
    tasks = dict(compiled["root"]["dag"]["tasks"])
    for component in compiled["components"].values():
        tasks.update(component.get("dag", {}).get("tasks", {}))
    return tasks


def test_retry_policy_matches_the_dag_and_nothing_is_cached(compiled, dag):
    tasks = _all_tasks(compiled)
    beam = dag.get_task("extract_embeddings")
    expected = {
        "maxRetryCount": beam.retries,
        "backoffDuration": f"{int(beam.retry_delay.total_seconds())}s",
        "backoffFactor": beam.retry_exponential_backoff,
        "backoffMaxDuration": f"{int(beam.max_retry_delay.total_seconds())}s",
    }
    for name in JOB_TASKS:
        assert tasks[name]["retryPolicy"] == expected, name
    # Decisions on parameters and data fail once, as in the DAG.
    for name, airflow_task in (
        ("plan", "plan"),
        ("wait-for-input", "wait_for_input"),
        ("validate-extraction", "validate_extraction"),
    ):
        assert dag.get_task(airflow_task).retries == 0
        assert "retryPolicy" not in tasks[name]
    assert tasks["publish"]["retryPolicy"]["maxRetryCount"] == dag.get_task("publish").retries == 1
    # A nightly run must run its jobs, never reuse an earlier run's cached result.
    for name in ("plan", "wait-for-input", "extract-embeddings", "validate-extraction", "reduce-dim", "publish"):
        assert tasks[name]["cachingOptions"] == {}, name
    assert tasks["build-index"]["cachingOptions"] == {}


def test_params_are_the_dags(compiled, dag):
    from beam_jobs.contract import DEFAULT_BATCH_SIZE, METHODS

    params = compiled["root"]["inputDefinitions"]["parameters"]
    # The DAG has every param of the table; the compiled pipeline has them too, with ds. KFP parameters hold
    # no nulls: a param the table leaves unset (None) is '' there.
    assert set(params) == set(dag.params) | {"ds"}
    assert params["methods"]["defaultValue"] == list(METHODS) == dag.params["methods"]
    assert params["batch_size"]["defaultValue"] == DEFAULT_BATCH_SIZE == dag.params["batch_size"]
    for name in set(dag.params) - {"input", "output_root", "weights", "sdk_container_image"}:
        expected = "" if dag.params[name] is None else dag.params[name]
        assert params[name]["defaultValue"] == expected, name
    # Where the images are and where outputs go have no sensible default: the run must say.
    assert "defaultValue" not in params["input"]
    assert "defaultValue" not in params["output_root"]
    assert params["methods"]["parameterType"] == "LIST"


def test_every_step_runs_in_the_worker_image(compiled):
    from pipelines.image_embeddings_kfp import WORKER_IMAGE

    executors = compiled["deploymentSpec"]["executors"]
    assert len(executors) == 10  # plan, wait, extract, validate, reduce, compare, index, publish, report, store
    for name, executor in executors.items():
        container = executor["container"]
        assert container["image"] == WORKER_IMAGE, name
        # kfp comes with the image (the [kfp] extra): nothing is pip-installed when a step starts.
        assert "pip install" not in " ".join(container["command"]), name
    assert compiled["root"]["inputDefinitions"]["parameters"]["sdk_container_image"]["defaultValue"] == WORKER_IMAGE


def test_the_image_is_chosen_when_compiling(tmp_path):
    image = "europe-west4-docker.pkg.dev/acme-ml/images/embeddings-worker:2026-12-01"
    out = tmp_path / "p.yaml"
    env = {**os.environ, "IMAGE_EMBEDDINGS_WORKER_IMAGE": image, "PYTHONPATH": ROOT}
    proc = subprocess.run(
        [sys.executable, "-m", "pipelines.image_embeddings_kfp", "--output", str(out)],
        capture_output=True,
        text=True,
        cwd=ROOT,
        env=env,
        timeout=120,
    )
    assert proc.returncode == 0, proc.stderr[-2000:]
    text = out.read_text()
    assert text.count(f"image: {image}") == 10  # one per executor
    assert "image-embeddings-worker:latest" not in text


# --------------------------------------------------------------------------- the same jobs as the DAG's tasks


class _TI:
    def __init__(self, xcoms: dict):
        self.xcoms = xcoms

    def xcom_pull(self, task_ids: str | None = None, key: str = "return_value", **_):
        return self.xcoms.get((task_ids, key))


def _rendered_flags(dag, task_id: str, plan: dict) -> list[str]:
    """The flags the DAG's Beam task launches its job with, rendered from the same plan (labels aside)."""
    from airflow.providers.apache.beam.hooks.beam import beam_options_to_args

    from beam_jobs.nightly.launch import extract_options, index_options

    task = dag.get_task(task_id).prepare_for_execution()
    # What the DAG's plan and validate tasks return beside the plan: the flags from the same functions.
    planned = {**plan, "extract_options": extract_options(plan)}
    xcoms = {("plan", "return_value"): planned, **{("plan", key): value for key, value in planned.items()}}
    validated = {"model_id": "primary-model-id", "index_options": index_options(plan, "primary-model-id")}
    ti = _TI({**xcoms, **{("validate_extraction", key): value for key, value in validated.items()}})
    params = {name: dag.params[name] for name in dag.params}
    context = {"params": params, "ti": ti, "task_instance": ti, "task": task, "run_id": plan["run_id"]}
    context.update(ds=DS, ds_nodash=DS.replace("-", ""))
    task.render_template_fields(context)
    return beam_options_to_args({**task.pipeline_options, "runner": task.runner})


def test_steps_launch_the_jobs_with_the_dags_flags(dag, tmp_path):
    from beam_jobs.nightly.launch import extract_options, index_options, job_command, reduction_options
    from beam_jobs.nightly.plan import build_plan

    params = {name: dag.params[name] for name in dag.params}
    params.update(weights="random", output_root=str(tmp_path / "out"))
    plan = build_plan(params, DS, "scheduled__2026-11-20", str(tmp_path / f"ds={DS}" / "*"))
    extract = job_command("extract_embeddings", extract_options(plan), plan, "extract-embeddings")
    assert extract[:3] == [sys.executable, "-m", "beam_jobs.extract_embeddings"]
    assert sorted(extract[3:]) == sorted(_rendered_flags(dag, "extract_embeddings", plan))
    # The DAG's reduce instances take their flags from its reductions task; the Kubeflow steps build the same.
    model_ids = {name: f"{name}-id" for name in plan["models"]}
    extraction = {"models": {name: {"model_id": mid} for name, mid in model_ids.items()}}
    expanded = dag.get_task("reductions").python_callable(plan, extraction, params=params)
    assert len(expanded) == len(plan["reductions"]) == len(plan["methods"])
    for reduction, flags in zip(plan["reductions"], expanded, strict=True):
        options = reduction_options(
            plan, reduction, model_ids, params["map_points"], params["thumbnail_budget_mb"], params["mosaic_grid"]
        )
        assert options == flags
        command = job_command("reduce_dim", options, plan, f"reduce-{reduction['method']}")
        assert command[:3] == [sys.executable, "-m", "beam_jobs.reduce_dim"]
    index = job_command("build_index", index_options(plan, "primary-model-id"), plan, "build-index")
    assert index[:3] == [sys.executable, "-m", "beam_jobs.build_index"]
    assert sorted(index[3:]) == sorted(_rendered_flags(dag, "build_index", plan))


def test_dataflow_command_submits_detached_with_the_plans_settings():
    from beam_jobs.config import ExtractConfig
    from beam_jobs.nightly.launch import extract_options, job_command
    from beam_jobs.nightly.plan import build_plan

    params = {
        "methods": ["pca"],
        "runner": "DataflowRunner",
        "model": "resnet50",
        "batch_size": 32,
        "max_failure_rate": 0.1,
        "weights": "gs://m/w.h5",
        "output_root": "gs://b/out",
    }
    image = "europe-west4-docker.pkg.dev/acme-ml/images/embeddings-worker:1"
    plan = build_plan(params, DS, "r", f"gs://b/i/ds={DS}/*", {**DATAFLOW, "sdk_container_image": image})
    command = job_command("extract_embeddings", extract_options(plan), plan, "extract-embeddings")
    cfg, beam_args = ExtractConfig.parse(command[3:])
    assert cfg.detach is True
    assert cfg.output == f"gs://b/out/embeddings/ds={DS}"
    assert "--runner=DataflowRunner" in beam_args
    assert "--project=acme-ml" in beam_args
    assert "--region=europe-west4" in beam_args
    assert f"--sdk_container_image={image}" in beam_args
    assert "--experiments=no_use_multiple_sdk_containers" in beam_args
    (name,) = [a.split("=", 1)[1] for a in beam_args if a.startswith("--job_name=")]
    assert name.startswith("image-embeddings-extract-embeddings-20261120-")
    assert all(c.islower() or c.isdigit() or c == "-" for c in name)


def test_options_render_as_the_beam_provider_renders_them():
    from airflow.providers.apache.beam.hooks.beam import beam_options_to_args

    from beam_jobs.nightly.launch import options_to_args

    options = {"a": 1, "b": True, "c": False, "d": None, "e": ["x", "y"], "f": {"k": 1}, "g": "s p"}
    assert options_to_args(options) == beam_options_to_args(options)


# --------------------------------------------------------------------------- Dataflow: wait and cancel


class ScriptedJobs:
    """Stands in for the Dataflow API: answers the states given, records cancellations."""

    def __init__(self, states: list[Any]):
        self.states = list(states)
        self.cancelled: list[str] = []

    def state(self, job_id: str) -> str:
        answer = self.states.pop(0)
        if isinstance(answer, Exception):
            raise answer
        return answer

    def cancel(self, job_id: str) -> None:
        self.cancelled.append(job_id)


def test_waiting_ends_with_the_jobs_end_state():
    from beam_jobs.nightly.launch import JobFailed, wait_for_job

    jobs = ScriptedJobs(["JOB_STATE_PENDING", ConnectionError("503"), "JOB_STATE_RUNNING", "JOB_STATE_DONE"])
    assert wait_for_job(jobs, "j1", sleep=lambda _: None) == "JOB_STATE_DONE"
    with pytest.raises(JobFailed, match="j2 ended in JOB_STATE_FAILED"):
        wait_for_job(ScriptedJobs(["JOB_STATE_RUNNING", "JOB_STATE_FAILED"]), "j2", sleep=lambda _: None)
    with pytest.raises(JobFailed, match="JOB_STATE_CANCELLED"):
        wait_for_job(ScriptedJobs(["JOB_STATE_CANCELLED"]), "j3", sleep=lambda _: None)
    with pytest.raises(JobFailed, match="could not read the state of Dataflow job j4: 403"):
        wait_for_job(ScriptedJobs([PermissionError("403")] * 3), "j4", max_errors=3, sleep=lambda _: None)


def _plan_on_dataflow() -> dict:
    return {"runner": "DataflowRunner", "ds": DS, "dataflow": {"project": "acme-ml", "region": "europe-west4"}}


def test_a_dataflow_step_submits_then_waits_and_reports_the_job(tmp_path):
    from beam_jobs.nightly.launch import JobFailed, run_step

    launcher = [sys.executable, "-c", "print('INFO apiclient: Created job with id: [2026-11-20_03_00-42]')"]
    seen: list[str] = []
    jobs = ScriptedJobs(["JOB_STATE_RUNNING", "JOB_STATE_DONE"])
    result = run_step(launcher, _plan_on_dataflow(), on_job_id=seen.append, jobs=jobs, poll_s=0)
    assert result == {"job_id": "2026-11-20_03_00-42", "state": "JOB_STATE_DONE"}
    assert seen == ["2026-11-20_03_00-42"]
    failing = [sys.executable, "-c", "import sys; print('usage: bad flag'); sys.exit(2)"]
    with pytest.raises(JobFailed, match=r"exited with status 2:\nusage: bad flag"):
        run_step(failing, _plan_on_dataflow(), jobs=ScriptedJobs([]))
    silent = [sys.executable, "-c", "print('no id here')"]
    with pytest.raises(JobFailed, match="printed no Dataflow job id"):
        run_step(silent, _plan_on_dataflow(), jobs=ScriptedJobs([]))


def test_gcp_resources_name_the_dataflow_job():
    from beam_jobs.nightly.launch import gcp_resources

    assert json.loads(gcp_resources("acme-ml", "europe-west4", "j-1")) == {
        "resources": [
            {
                "resourceType": "DataflowJob",
                "resourceUri": "https://dataflow.googleapis.com/v1b3/projects/acme-ml/locations/europe-west4/jobs/j-1",
            }
        ]
    }


STOPPED_STEP = """
import sys
from beam_jobs.nightly.launch import StepStopped, run_step

class Jobs:
    def state(self, job_id):
        return "JOB_STATE_RUNNING"
    def cancel(self, job_id):
        with open(sys.argv[1], "w") as f:
            f.write(job_id)

plan = {"runner": "DataflowRunner", "ds": "2026-11-20", "dataflow": {"project": "p", "region": "r"}}
launcher = [sys.executable, "-c", "print('Created job with id: [job-7]', flush=True)"]
try:
    run_step(launcher, plan, on_job_id=lambda j: print("JOB", j, flush=True), jobs=Jobs(), poll_s=0.1)
except StepStopped as exc:
    print("STOPPED", exc, flush=True)
    sys.exit(143)
"""


def test_stopping_a_waiting_step_cancels_its_dataflow_job(tmp_path):
    """What a cancelled run does to the step's pod (SIGTERM): the Dataflow job is cancelled, the step fails."""
    record = tmp_path / "cancelled"
    proc = subprocess.Popen(
        [sys.executable, "-c", STOPPED_STEP, str(record)],
        stdout=subprocess.PIPE,
        text=True,
        cwd=ROOT,
        env={**os.environ, "PYTHONPATH": ROOT},
    )
    lines = []
    for line in proc.stdout:
        lines.append(line)
        if line.startswith("JOB job-7"):
            break
    time.sleep(0.3)  # polling now
    proc.send_signal(signal.SIGTERM)
    out = "".join(lines) + proc.stdout.read()
    assert proc.wait(timeout=30) == 143, out
    assert "STOPPED stopped by signal 15" in out
    assert record.read_text() == "job-7"


# --------------------------------------------------------------------------- the plan without Airflow


def test_plan_step_refuses_bad_params_before_any_work(tmp_path):
    from beam_jobs.nightly.paths import PlanError
    from beam_jobs.nightly.steps import plan_step

    good = {
        "input": str(tmp_path / "ds={{ ds }}" / "*"),
        "output_root": str(tmp_path / "out"),
        "weights": "random",
        "model": "resnet50",
        "engine": "auto",
        "precision": "auto",
        "methods": ["pca", "umap"],
        "runner": "FnApiRunner",
        "batch_size": 32,
        "max_failure_rate": 0.1,
    }
    # A recurring run scheduled at 03:00 on the 21st embeds the day that ended, the 20th.
    plan = plan_step(good, "", "run-1", "2026-11-21T03:00:00Z", "")
    assert plan["ds"] == "2026-11-20"
    assert plan["input"] == str(tmp_path / "ds=2026-11-20" / "*")
    assert plan["embeddings_dir"] == str(tmp_path / "out" / "embeddings" / "ds=2026-11-20")
    assert plan_step(good, "2026-11-18", "run-1", "2026-11-20T03:00:00Z")["ds"] == "2026-11-18"
    bad = {
        **good,
        "methods": ["pca", "tsne"],
        "batch_size": 0,
        "max_failure_rate": 2,
        "runner": "Spark",
        "mosaic_grid": 100,
        "models": ["vgg16"],
    }
    with pytest.raises(PlanError) as refused:
        plan_step(bad, "2026-11-20", "run-1")
    text = str(refused.value)
    for part in (
        "methods ['pca', 'tsne']",
        "batch_size 0",
        "max_failure_rate 2",
        "runner 'Spark'",
        "mosaic_grid 100: 100 is greater than the maximum of 64",
        "models ['vgg16']",
    ):
        assert part in text
    # build_plan's own checks, as in the DAG's plan task.
    with pytest.raises(PlanError, match=r"weights file .* does not exist"):
        plan_step({**good, "weights": str(tmp_path / "nope.h5")}, "2026-11-20", "run-1")
    with pytest.raises(PlanError, match="ds '20-11-2026' is not a date"):
        plan_step(good, "20-11-2026", "run-1")


def test_input_step_waits_for_the_nights_images_then_fails_saying_which_glob(tmp_path):
    from beam_jobs.nightly.steps import InputMissing, wait_for_input

    folder = tmp_path / f"ds={DS}"
    plan = {"input": str(folder / "*")}
    with pytest.raises(InputMissing, match=r"no input: '.*ds=2026-11-20/\*' was not ready .* 0 minute.*no file"):
        wait_for_input(plan, 0)
    naps: list[float] = []

    def land_images(seconds: float) -> None:  # the images arrive while the step sleeps
        naps.append(seconds)
        folder.mkdir(exist_ok=True)
        (folder / f"img_{len(naps)}.jpg").write_bytes(b"x")

    assert wait_for_input(plan, 10, poke_s=300, sleep=land_images)["files"] == 1
    assert naps == [300]
    with pytest.raises(InputMissing, match=r"after waiting 0\.001 minute"):
        wait_for_input({"input": str(tmp_path / "never" / "*")}, 0.001, poke_s=0.01)


def test_dates_fill_the_input_as_the_dags_jinja_does():
    from beam_jobs.nightly.plan import fill_date, run_date

    assert fill_date("gs://b/ds={{ ds }}/*", DS) == "gs://b/ds=2026-11-20/*"
    assert fill_date("/i/{{ds_nodash}}/{{  ds }}", DS) == "/i/20261120/2026-11-20"
    assert fill_date("/i/{{ params.x }}", DS) == "/i/{{ params.x }}"  # left for build_plan to refuse
    # An unresolved placeholder (kfp.local, a one-off run) is skipped; the next timestamp decides, and the
    # run embeds the day before it: the run at 03:00 on D+1 embeds the images filed under D.
    assert run_date("", "{{$.pipeline_job_schedule_time_utc}}", "2026-11-21T23:30:00-02:00") == "2026-11-21"
    assert run_date("", "2026-12-07T03:00:00Z") == "2026-12-06"
    assert run_date("2026-12-07", "2026-12-07T03:00:00Z") == "2026-12-07"  # a named date is the date
    assert run_date(None, "") == time.strftime("%Y-%m-%d", time.gmtime(time.time() - 86400))


# ----------------------------------------------------------------- submitting: one date, a backfill, a schedule


class SignatureCheckedClient:
    """Stands in for a KFP server: each call is bound to the real ``kfp.Client`` method's signature, then recorded."""

    def __init__(self, state: str = "SUCCEEDED"):
        self.calls: list[tuple[str, dict]] = []
        self.state = state

    def __getattr__(self, name: str):
        import inspect
        from types import SimpleNamespace

        real = inspect.signature(getattr(kfp.Client, name))

        def call(*args, **kwargs):
            bound = real.bind(self, *args, **kwargs)
            self.calls.append((name, {k: v for k, v in bound.arguments.items() if k != "self"}))
            return SimpleNamespace(run_id=f"run-{len(self.calls)}", experiment_id="exp-1", state=self.state)

        return call


def test_backfill_submits_one_run_per_date_with_its_date(tmp_path):
    from pipelines.submit import RunFailed, dates, parse_params, submit_dates

    params = parse_params(
        ["input=gs://b/images/ds={{ ds }}/*", "output_root=gs://b/out", 'methods=["pca"]', "batch_size=64"]
    )
    assert params == {
        "input": "gs://b/images/ds={{ ds }}/*",
        "output_root": "gs://b/out",
        "methods": ["pca"],
        "batch_size": 64,
    }
    days = dates("2026-11-29", "2026-12-02")
    assert days == ["2026-11-29", "2026-11-30", "2026-12-01", "2026-12-02"]
    client = SignatureCheckedClient()
    submit_dates(client, "pipeline.yaml", params, list(reversed(days)), "image-embeddings-nightly")
    # Oldest first, each run waited for before the next date is submitted (the index and frame are shared).
    submitted = [(name, call) for name, call in client.calls if name == "create_run_from_pipeline_package"]
    assert [call["arguments"]["ds"] for _, call in submitted] == days
    assert [name for name, _ in client.calls] == ["create_run_from_pipeline_package", "wait_for_run_completion"] * 4
    assert all(call["enable_caching"] is False for _, call in submitted)
    assert submitted[0][1]["run_name"] == "image-embeddings-nightly-2026-11-29"
    with pytest.raises(ValueError, match="share state"):
        submit_dates(SignatureCheckedClient(), "pipeline.yaml", params, days, "x", parallel=True)
    unshared = {**params, "index": False, "reference_policy": "refit"}
    parallel = SignatureCheckedClient()
    submit_dates(parallel, "pipeline.yaml", unshared, days, "x", parallel=True)
    assert {name for name, _ in parallel.calls} == {"create_run_from_pipeline_package"}
    failing = SignatureCheckedClient(state="FAILED")
    with pytest.raises(RunFailed, match="ds=2026-11-29: run run-1 ended FAILED; later dates not submitted"):
        submit_dates(failing, "pipeline.yaml", params, days, "x")
    assert len(failing.calls) == 2
    with pytest.raises(ValueError, match="before --from-date"):
        dates("2026-11-30", "2026-11-01")
    with pytest.raises(ValueError, match="smaller ranges"):
        dates("2025-01-01", "2026-12-31")


def test_schedule_is_one_recurring_run_without_catch_up():
    from pipelines.submit import kfp_cron, schedule

    client = SignatureCheckedClient()
    schedule(client, "pipeline.yaml", {"input": "x"}, "0 3 * * *", "image-embeddings-nightly")
    (_, experiment), (name, recurring) = client.calls
    assert experiment == {"name": "image-embeddings-nightly"}
    assert name == "create_recurring_run"
    assert recurring["cron_expression"] == "0 0 3 * * *"  # KFP's cron has seconds first
    assert (recurring["max_concurrency"], recurring["no_catchup"], recurring["enable_caching"]) == (1, True, False)
    assert recurring["params"] == {"input": "x", "ds": ""}  # each run takes its scheduled date
    with pytest.raises(ValueError, match="5 fields"):
        kfp_cron("daily")


@pytest.mark.slow  # importing google.cloud.aiplatform takes ~15 s here
def test_vertex_jobs_take_the_same_arguments():
    import inspect

    from google.cloud import aiplatform

    from pipelines.submit import vertex_jobs

    class Recording:
        def PipelineJob(self, **kwargs):
            inspect.signature(aiplatform.PipelineJob).bind(**kwargs)
            return kwargs

    jobs = vertex_jobs(Recording(), "pipeline.yaml", {"input": "x"}, ["2026-11-20", ""], "gs://b/root")
    assert [job["parameter_values"]["ds"] for job in jobs] == ["2026-11-20", ""]
    assert {job["enable_caching"] for job in jobs} == {False}
    assert "cron" in inspect.signature(aiplatform.PipelineJob.create_schedule).parameters


def test_submit_refuses_a_half_range_before_contacting_anything(capsys):
    from pipelines.submit import main

    with pytest.raises(SystemExit) as exited:
        main(["--host", "http://127.0.0.1:9", "--from-date", "2026-11-01"])
    assert exited.value.code == 2
    assert "--from-date needs --to-date" in capsys.readouterr().err


# --------------------------------------------------------------------------- a whole night, both orchestrators

# The cheapest honest night: a few sample photos and one broken file, seeded random weights, the registry's
# smallest model on TensorFlow (no engine choice or conversion to pay for), the same params on both sides.
NIGHT_PARAMS = {
    "index": True,  # the build-index step once through each orchestrator
    "weights": "random",
    "models": ["mobilenet_v3_large"],
    "engine": "tf",
    "max_failure_rate": 0.5,
    "input_wait_minutes": 0,
    "input_ready": "any",  # staged just before the run: not settled (test_input_ready covers the wait)
}


def _rows(folder: str, prefix: str) -> list[dict]:
    import pyarrow.parquet as pq

    rows = []
    for path in sorted(glob.glob(os.path.join(folder, f"{prefix}-*.parquet"))):
        rows += pq.read_table(path).to_pylist()
    return sorted(rows, key=lambda row: row["image_uri"])


@pytest.fixture(scope="module")
def nights(dag, airflow_db, sample_dir, tmp_path_factory):
    """The same images through the Airflow DAG (dag.test(), PCA) and the Kubeflow pipeline (kfp.local, no
    Docker, PCA and UMAP), into two output roots. Returns (root, images, dag run, seconds per orchestrator)."""
    from kfp import local
    from kfp.local.orchestrator import dag_orchestrator, enhanced_dag_orchestrator

    from pipelines.image_embeddings_kfp import nightly_pipeline
    from tests.airflow_support import conf_for, run_dag, stage_images

    root = tmp_path_factory.mktemp("two-orchestrators")
    images = stage_images(sample_dir, root, DS, count=4, broken=True)  # UMAP needs 4 rows
    seconds = {}
    started = time.monotonic()
    dr = run_dag(dag, DS, conf_for(root, output_root=str(root / "airflow"), methods=["pca"], **NIGHT_PARAMS))
    seconds["airflow"] = time.monotonic() - started

    local.init(runner=local.SubprocessRunner(use_venv=False), pipeline_root=str(root / "kfp-root"))
    pipeline = nightly_pipeline(run_times=False)  # kfp.local cannot resolve the run-time placeholders
    started = time.monotonic()
    with pytest.MonkeyPatch.context() as mp:
        # kfp.local swaps builtins.print for an indenting one while a pipeline runs and does not always put it
        # back when a step fails; numba (imported later by UMAP in other tests) then refuses to type print.
        mp.setattr(builtins, "print", builtins.print)
        # kfp.local has two schedulers and picks the simple one when the root DAG has no loop of its own;
        # only the other runs the loop inside the reduce-methods sub-pipeline (real KFP runs both kinds).
        mp.setattr(dag_orchestrator, "run_dag", enhanced_dag_orchestrator.run_enhanced_dag)
        pipeline(
            input=str(root / "images" / "ds={{ ds }}" / "*"),
            output_root=str(root / "kfp"),
            methods=["pca", "umap"],
            ds=DS,
            **NIGHT_PARAMS,
        )
    seconds["kfp"] = time.monotonic() - started
    print(f"seconds per orchestrator: {seconds}")
    return root, images, dr, seconds


@pytest.mark.slow
def test_local_kfp_night_gives_the_dags_outputs(nights):
    import numpy as np

    root, images, dr, _ = nights
    assert str(dr.state) == "success"
    airflow, kfp_out = root / "airflow", root / "kfp"
    emb = {name: out / "embeddings" / f"ds={DS}" for name, out in (("airflow", airflow), ("kfp", kfp_out))}

    rows = {name: _rows(str(folder), "embeddings") for name, folder in emb.items()}
    assert [r["image_uri"] for r in rows["kfp"]] == [r["image_uri"] for r in rows["airflow"]] == images
    for a, k in zip(rows["airflow"], rows["kfp"], strict=True):
        for column in ("model_id", "content_sha256", "width", "height"):
            assert k[column] == a[column], column
        # The same network on the same pixels, but not always in the same batch: TensorFlow's kernels may pick
        # another algorithm for another batch size, so the vectors agree to float noise, not bit for bit.
        ka, aa = np.asarray(k["embedding"], dtype=np.float64), np.asarray(a["embedding"], dtype=np.float64)
        cosine = float(ka @ aa / (np.linalg.norm(ka) * np.linalg.norm(aa)))
        assert cosine > 0.99999, (a["image_uri"], cosine)
        assert np.linalg.norm(ka - aa) <= 1e-4 * np.linalg.norm(aa), a["image_uri"]
    assert {r["run_id"] for r in rows["airflow"]} == {dr.run_id}
    assert {r["run_id"] for r in rows["kfp"]} != {dr.run_id}  # each orchestrator's own run id

    manifests = {name: json.loads((folder / "manifest.json").read_text()) for name, folder in emb.items()}
    for key in ("inputs", "embedded", "failed", "failures_by_reason", "model_id", "embedding_dim"):
        assert manifests["kfp"][key] == manifests["airflow"][key], key
    assert (manifests["kfp"]["inputs"], manifests["kfp"]["failed"]) == (len(images) + 1, 1)

    pca = {
        name: _rows(str(out / "projections" / "method=pca" / f"ds={DS}"), "projection")
        for name, out in (("airflow", airflow), ("kfp", kfp_out))
    }
    assert [r["image_uri"] for r in pca["kfp"]] == images
    for a, k in zip(pca["airflow"], pca["kfp"], strict=True):
        assert (k["x"], k["y"]) == pytest.approx((a["x"], a["y"]), abs=1e-5)
    umap = _rows(str(kfp_out / "projections" / "method=umap" / f"ds={DS}"), "projection")
    assert [r["image_uri"] for r in umap] == images

    records = {
        name: json.loads((out / "runs" / f"ds={DS}" / "run.json").read_text())
        for name, out in (("airflow", airflow), ("kfp", kfp_out))
    }
    kfp_record, dag_record = records["kfp"], records["airflow"]
    assert set(kfp_record) == set(dag_record)
    assert kfp_record["ds"] == dag_record["ds"] == DS
    assert kfp_record["model_id"] == dag_record["model_id"]
    for key in ("inputs", "embedded", "failed", "engines"):
        assert kfp_record["embeddings"][key] == dag_record["embeddings"][key], key
    assert set(kfp_record["projections"]) == {"pca", "umap"}
    assert kfp_record["projections"]["pca"]["rows"] == dag_record["projections"]["pca"]["rows"] == len(images)
    assert kfp_record["projections"]["pca"]["explained_variance_ratio"] == pytest.approx(
        dag_record["projections"]["pca"]["explained_variance_ratio"]
    )
    for key in ("rows", "mode", "exact_duplicate_rows", "near_duplicate_pairs"):
        assert kfp_record["index"][key] == dag_record["index"][key], key
    assert kfp_record["index"]["rows"] == len(images)
    assert kfp_record["index"]["dir"] == str(kfp_out / "index" / f"ds={DS}")
    assert kfp_record["projections"]["umap"]["map_html"] == str(
        kfp_out / "projections" / "method=umap" / f"ds={DS}" / "map.html"
    )


@pytest.mark.slow
def test_local_kfp_night_leaves_its_maps_and_figures_as_artifacts(nights):
    root, images, _, _ = nights
    kfp_root = root / "kfp-root"
    for method in ("pca", "umap"):
        partition = root / "kfp" / "projections" / f"method={method}" / f"ds={DS}"
        html = [
            p
            for p in kfp_root.glob("**/reduce-dim/map_html")
            if p.read_bytes() == (partition / "map.html").read_bytes()
        ]
        assert len(html) == 1, method
        summary = (html[0].parent / "map_summary").read_text()
        assert summary.startswith(f"### {method} map, ds={DS}")
        assert f"| rows | {len(images)} |" in summary
        assert "](data:image/png;base64," in summary
    executor_outputs = [json.loads(p.read_text()) for p in kfp_root.glob("**/validate-extraction/executor_output.json")]
    (validate,) = executor_outputs
    metrics = validate["artifacts"]["metrics"]["artifacts"][0]["metadata"]
    assert metrics["inputs"] == len(images) + 1
    assert metrics["failed"] == 1


@pytest.mark.slow
def test_local_kfp_run_refuses_bad_params_before_the_extraction_step(sample_dir, tmp_path, capfd):
    """kfp.local: mosaic_grid=100, batch_size=0 and an unknown model fail the plan step; no job starts, so no
    embeddings folder is written (the refusal names every problem)."""
    from kfp import local

    from pipelines.image_embeddings_kfp import nightly_pipeline
    from tests.airflow_support import stage_images

    stage_images(sample_dir, tmp_path, DS, count=2)
    local.init(runner=local.SubprocessRunner(use_venv=False), pipeline_root=str(tmp_path / "kfp-root"))
    pipeline = nightly_pipeline(run_times=False)
    bad = {**NIGHT_PARAMS, "mosaic_grid": 100, "batch_size": 0, "models": ["vgg16"]}
    with pytest.MonkeyPatch.context() as mp:
        mp.setattr(builtins, "print", builtins.print)  # kfp.local's print swap (see the nights fixture)
        with pytest.raises(RuntimeError) as refused:
            pipeline(
                input=str(tmp_path / "images" / "ds={{ ds }}" / "*"),
                output_root=str(tmp_path / "kfp"),
                methods=["pca"],
                ds=DS,
                **bad,
            )
    assert "plan" in str(refused.value)
    said = capfd.readouterr()
    for problem in (
        "mosaic_grid 100: 100 is greater than the maximum of 64",
        "batch_size 0: 0 is less than the minimum of 1",
        "models ['vgg16']: 'vgg16' is not one of",
    ):
        assert problem in said.out + said.err
    assert not (tmp_path / "kfp" / "embeddings").exists()
