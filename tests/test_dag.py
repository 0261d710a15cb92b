"""The nightly DAG: integrity, parameter checks, and real dag.test() runs on sample images (SQLite, FnApiRunner)."""

from __future__ import annotations

import glob
import json
import os
import shutil
import subprocess
import sys
from datetime import UTC, datetime
from pathlib import Path

import pyarrow.parquet as pq
import pytest

from tests.conftest import ROOT

DAG_FILE = os.path.join(ROOT, "dags", "image_embeddings.py")
BEAM_TASKS = {"extract_embeddings", "reduce_pca", "reduce_umap"}


@pytest.fixture(scope="module")
def dagbag():
    from airflow.dag_processing.dagbag import DagBag

    return DagBag(dag_folder=os.path.join(ROOT, "dags"))


@pytest.fixture(scope="module")
def dag(dagbag):
    return dagbag.dags["image_embeddings"]


# --------------------------------------------------------------------------- integrity


def test_dagbag_has_no_import_errors(dagbag):
    assert dagbag.import_errors == {}
    assert list(dagbag.dags) == ["image_embeddings"]


def test_dag_file_imports_no_tensorflow_beam_or_numpy():
    code = (
        "import importlib.util, sys, time; t = time.perf_counter();"
        f"spec = importlib.util.spec_from_file_location('d', {DAG_FILE!r});"
        "m = importlib.util.module_from_spec(spec); spec.loader.exec_module(m);"
        "print(sorted(x for x in ('tensorflow', 'apache_beam', 'numpy', 'keras', 'umap') if x in sys.modules))"
    )
    proc = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, env=os.environ, check=True)
    assert proc.stdout.strip().splitlines()[-1] == "[]"


def test_schedule_and_defaults(dag):
    assert dag.schedule == "0 3 * * *"
    assert dag.catchup is False
    assert dag.max_active_runs == 1
    assert dag.start_date == datetime(2026, 11, 1, tzinfo=UTC)
    assert "Nightly image embeddings" in (dag.doc_md or "")
    assert {"ml", "embeddings", "beam", "nightly"} <= set(dag.tags)
    assert dag.owner == "ml-platform"


def test_structure(dag):
    def down(task_id):
        return set(dag.get_task(task_id).downstream_task_ids)

    assert down("plan") == {"wait_for_input", "validate_extraction", "choose_methods", "publish"}
    assert down("wait_for_input") == {"extract_embeddings"}
    assert down("extract_embeddings") == {"extract_embeddings_done"}
    assert down("extract_embeddings_done") == {"validate_extraction"}
    assert down("validate_extraction") == {"choose_methods", "publish"}
    assert down("choose_methods") == {"reduce_pca", "reduce_umap"}
    assert down("reduce_pca") == {"reduce_pca_done"}
    assert down("reduce_umap") == {"reduce_umap_done"}
    assert down("reduce_pca_done") == down("reduce_umap_done") == {"publish"}
    assert dag.get_task("publish").trigger_rule == "none_failed_min_one_success"
    assert [o.name for o in dag.get_task("publish").outlets] == ["image_embeddings_maps"]


def test_retries_backoff_and_fail_fast_tasks(dag):
    for task in dag.tasks:
        assert task.retries is not None
        if task.task_id in BEAM_TASKS:
            assert task.retries == 2
            assert task.retry_exponential_backoff == 2.0
            assert task.max_retry_delay.total_seconds() == 1800
            assert task.execution_timeout is not None
    # Decisions on parameters and data are not transient: they fail once, without retries.
    for task_id in ("plan", "wait_for_input", "validate_extraction", "choose_methods"):
        assert dag.get_task(task_id).retries == 0


def test_beam_tasks_launch_the_job_modules(dag):
    from image_embeddings_airflow.operators import NightlyBeamOperator

    for task_id, module in (
        ("extract_embeddings", "beam_jobs.extract_embeddings"),
        ("reduce_pca", "beam_jobs.reduce_dim"),
        ("reduce_umap", "beam_jobs.reduce_dim"),
    ):
        task = dag.get_task(task_id)
        assert isinstance(task, NightlyBeamOperator)
        assert task.py_file == module
        assert task.py_options == ["-m"]
        assert task.runner == "{{ params.runner }}"
    assert dag.get_task("reduce_umap").pipeline_options["method"] == "umap"


def test_params_defaults_are_valid_and_match_the_jobs(dag):
    from beam_jobs.config import MAX_BATCH_SIZE as JOB_MAX_BATCH_SIZE
    from beam_jobs.models import REGISTRY
    from image_embeddings_airflow.runs import MAX_BATCH_SIZE, MODELS

    dag.params.validate()
    assert set(dag.params) >= {
        "input",
        "output_root",
        "model",
        "weights",
        "methods",
        "runner",
        "batch_size",
        "max_failure_rate",
    }
    assert "{{ ds }}" in dag.params["input"]
    assert set(MODELS) == set(REGISTRY)
    assert MAX_BATCH_SIZE == JOB_MAX_BATCH_SIZE  # copied, not imported, to keep DAG parsing light
    for name in dag.params:
        assert dag.params.get_param(name).description, name


@pytest.mark.parametrize(
    "bad",
    [
        {"methods": ["tsne"]},
        {"methods": []},
        {"methods": ["pca", "pca"]},
        {"runner": "SparkRunner"},
        {"batch_size": 0},
        {"batch_size": "32"},
        {"max_failure_rate": 1.5},
        {"model": "vgg16"},
    ],
)
def test_trigger_form_refuses_bad_values(dag, bad):
    from airflow.sdk.definitions.param import ParamsDict
    from airflow.sdk.exceptions import ParamValidationError

    params = ParamsDict({k: dag.params.get_param(k) for k in dag.params})
    with pytest.raises(ParamValidationError):  # update() checks each value against its schema
        params.update(bad)


def test_plan_refuses_combinations_the_form_cannot_check(tmp_path):
    from image_embeddings_airflow.runs import PlanError, build_plan

    ok = {
        "methods": ["pca"],
        "runner": "FnApiRunner",
        "model": "resnet50",
        "batch_size": 32,
        "max_failure_rate": 0.1,
        "output_root": str(tmp_path / "out"),
        "weights": "random",
    }
    plan = build_plan(ok, "2026-11-20", "r", str(tmp_path / "images/ds=2026-11-20/*"))
    assert plan["embeddings_dir"] == str(tmp_path / "out/embeddings/ds=2026-11-20")
    assert plan["projections"] == {"pca": str(tmp_path / "out/projections/method=pca/ds=2026-11-20")}
    assert plan["input_varies_by_date"] is True
    folder = build_plan(ok, "2026-11-20", "r", str(tmp_path / "images/ds=2026-11-20") + "/")
    assert folder["input"] == str(tmp_path / "images/ds=2026-11-20/*")
    prefix = build_plan({**ok, "output_root": "gs://b/out"}, "2026-11-20", "r", "gs://b/images/ds=2026-11-20/")
    assert prefix["input"] == "gs://b/images/ds=2026-11-20/*"
    with pytest.raises(PlanError, match=r"weights file .* does not exist"):
        build_plan({**ok, "weights": str(tmp_path / "missing.h5")}, "2026-11-20", "r", "/x/*")
    with pytest.raises(PlanError, match="must be a gs:// path with DataflowRunner") as err:
        build_plan({**ok, "runner": "DataflowRunner"}, "2026-11-20", "r", "/x/*", {"project": "p", "region": "r"})
    assert "needs temp_location" in str(err.value)
    df = build_plan(
        {**ok, "runner": "DataflowRunner", "output_root": "gs://b/out"},
        "2026-11-20",
        "r",
        "gs://b/images/ds=2026-11-20/*",
        {"project": "p", "region": "europe-west4", "temp_location": "gs://b/tmp", "setup_file": "/app/setup.py"},
    )
    assert df["dataflow"] == {
        "project": "p",
        "region": "europe-west4",
        "temp_location": "gs://b/tmp",
        "staging_location": "gs://b/tmp",
        "setup_file": "/app/setup.py",
    }
    assert df["embeddings_dir"] == "gs://b/out/embeddings/ds=2026-11-20"


# --------------------------------------------------------------------------- real runs


def stage_images(sample_dir: str, root: Path, ds: str, count: int, broken: bool = False) -> list[str]:
    folder = root / "images" / f"ds={ds}"
    folder.mkdir(parents=True, exist_ok=True)
    files = sorted(glob.glob(os.path.join(sample_dir, "*")))[:count]
    for f in files:
        shutil.copy(f, folder)
    if broken:
        (folder / "broken.jpg").write_bytes(b"\xff\xd8\xff\xe0 not really a jpeg")
    return sorted(str(folder / os.path.basename(f)) for f in files)


def conf_for(root: Path, **kw) -> dict:
    return {
        "input": str(root / "images" / "ds={{ ds }}" / "*"),
        "output_root": str(root / "out"),
        "weights": "random",
        "methods": ["pca"],
        "max_failure_rate": 0.5,
        "input_wait_minutes": 0,
        **kw,
    }


def run_dag(dag, ds: str, conf: dict):
    return dag.test(logical_date=datetime.fromisoformat(ds).replace(tzinfo=UTC), run_conf=conf)


def parquet_rows(folder: str, prefix: str) -> list[dict]:
    rows = []
    for f in sorted(glob.glob(os.path.join(folder, f"{prefix}-*.parquet"))):
        rows += pq.read_table(f).to_pylist()
    return rows


def task_states(dagrun) -> dict[str, str]:
    return {ti.task_id: str(ti.state) for ti in dagrun.get_task_instances()}


@pytest.mark.slow
def test_nightly_run_end_to_end(dag, airflow_db, sample_dir, tmp_path):
    ds = "2026-11-20"
    images = stage_images(sample_dir, tmp_path, ds, count=12, broken=True)
    dr = run_dag(dag, ds, conf_for(tmp_path, methods=["pca", "umap"]))
    assert str(dr.state) == "success", task_states(dr)
    # Local runner: the jobs ran inside the Beam tasks; the *_done tasks pass straight through.
    assert {t: s for t, s in task_states(dr).items() if t.endswith("_done")} == dict.fromkeys(
        ("extract_embeddings_done", "reduce_pca_done", "reduce_umap_done"), "success"
    )
    out = tmp_path / "out"
    emb = out / "embeddings" / f"ds={ds}"
    rows = parquet_rows(str(emb), "embeddings")
    assert sorted(r["image_uri"] for r in rows) == images
    assert {r["run_id"] for r in rows} == {dr.run_id}
    manifest = json.loads((emb / "manifest.json").read_text())
    assert (manifest["inputs"], manifest["embedded"], manifest["failed"]) == (13, 12, 1)
    for method in ("pca", "umap"):
        folder = out / "projections" / f"method={method}" / f"ds={ds}"
        assert sorted(r["image_uri"] for r in parquet_rows(str(folder), "projection")) == images
        assert (folder / "map.png").stat().st_size > 10_000
        assert (folder / "map.html").exists()
    record = json.loads((out / "runs" / f"ds={ds}" / "run.json").read_text())
    assert record["embeddings"]["embedded"] == 12
    assert set(record["projections"]) == {"pca", "umap"}
    assert record["projections"]["umap"]["map_html"].endswith(f"method=umap/ds={ds}/map.html")
    assert "dataflow_jobs" not in record

    from airflow.models.asset import AssetEvent, AssetModel
    from airflow.utils.session import create_session
    from sqlalchemy import select

    with create_session() as session:
        events = session.scalars(
            select(AssetEvent)
            .join(AssetModel, AssetModel.id == AssetEvent.asset_id)
            .where(AssetModel.name == "image_embeddings_maps")
        ).all()
        extras = [e.extra for e in events if e.source_run_id == dr.run_id]
    assert len(extras) == 1
    assert extras[0]["embeddings"]["inputs"] == 13
    assert extras[0]["projections"]["pca"]["rows"] == 12


@pytest.mark.slow
def test_backfill_three_dates_and_rerun_leaves_one_copy(dag, airflow_db, sample_dir, tmp_path):
    dates = {"2026-11-17": 3, "2026-11-18": 4, "2026-11-19": 5}
    expected = {ds: stage_images(sample_dir, tmp_path, ds, n) for ds, n in dates.items()}
    for ds in dates:
        dr = run_dag(dag, ds, conf_for(tmp_path))
        assert str(dr.state) == "success", (ds, task_states(dr))
    # A late image arrives for the 18th and the date is re-run.
    extra = stage_images(sample_dir, tmp_path, "2026-11-18", 6)
    dr = run_dag(dag, "2026-11-18", conf_for(tmp_path))
    assert str(dr.state) == "success", task_states(dr)
    expected["2026-11-18"] = extra

    out = tmp_path / "out"
    for ds, images in expected.items():
        emb = parquet_rows(str(out / "embeddings" / f"ds={ds}"), "embeddings")
        proj = parquet_rows(str(out / "projections" / "method=pca" / f"ds={ds}"), "projection")
        assert sorted(r["image_uri"] for r in emb) == images, ds
        assert sorted(r["image_uri"] for r in proj) == images, ds
    assert sorted(os.listdir(out / "embeddings")) == [f"ds={ds}" for ds in sorted(dates)]
    assert sorted(os.listdir(out / "projections" / "method=pca")) == [f"ds={ds}" for ds in sorted(dates)]


@pytest.mark.slow
def test_invalid_param_is_refused_before_any_job_starts(dag, airflow_db, sample_dir, tmp_path):
    ds = "2026-11-21"
    stage_images(sample_dir, tmp_path, ds, 2)
    dr = run_dag(dag, ds, conf_for(tmp_path, weights=str(tmp_path / "no-such.weights.h5")))
    states = task_states(dr)
    assert str(dr.state) == "failed"
    assert states["plan"] == "failed"
    assert states["extract_embeddings"] in ("upstream_failed", "None")
    assert not (tmp_path / "out").exists()


@pytest.mark.slow
def test_missing_input_fails_clearly_without_running_jobs(dag, airflow_db, tmp_path):
    dr = run_dag(dag, "2026-11-22", conf_for(tmp_path))
    states = task_states(dr)
    assert str(dr.state) == "failed"
    assert states["plan"] == "success"
    assert states["wait_for_input"] == "failed"
    assert states["extract_embeddings"] == "upstream_failed"
    assert not (tmp_path / "out").exists()


@pytest.fixture
def webhook(monkeypatch):
    """A real HTTP server on loopback standing in for the team's chat webhook."""
    import threading
    from http.server import BaseHTTPRequestHandler, HTTPServer

    received: list[dict] = []

    class Handler(BaseHTTPRequestHandler):
        def do_POST(self):
            received.append(json.loads(self.rfile.read(int(self.headers["Content-Length"]))))
            self.send_response(200)
            self.end_headers()

        def log_message(self, *args):
            pass

    server = HTTPServer(("127.0.0.1", 0), Handler)
    thread = threading.Thread(target=server.serve_forever, daemon=True)
    thread.start()
    monkeypatch.setenv("AIRFLOW_CONN_IMAGE_EMBEDDINGS_ALERTS", f"http://127.0.0.1:{server.server_port}/hooks/team")
    yield received
    server.shutdown()


@pytest.mark.slow
def test_task_failure_is_alerted_on_the_webhook(dag, airflow_db, sample_dir, tmp_path, webhook):
    ds = "2026-11-23"
    stage_images(sample_dir, tmp_path, ds, 1)
    dr = run_dag(dag, ds, conf_for(tmp_path, weights=str(tmp_path / "missing.weights.h5")))
    assert str(dr.state) == "failed"
    task_alerts = [a for a in webhook if a["what"] == "task"]
    assert len(task_alerts) == 1
    alert = task_alerts[0]
    assert alert["task_id"] == "plan"
    assert alert["dag_id"] == "image_embeddings"
    assert "does not exist" in alert["error"]
    assert "plan" in alert["text"]


def test_alert_without_connection_is_logged_only(caplog):
    from image_embeddings_airflow.alerts import FailureAlert

    with caplog.at_level("INFO"):
        FailureAlert("dag", conn_id="no_such_alerts_conn").notify({"reason": "task_failure", "dag_run": None})
    assert any("ALERT" in r.getMessage() for r in caplog.records)
    assert any("alert logged only" in r.getMessage() for r in caplog.records)


def test_manifest_figures_reach_statsd_when_metrics_are_on():
    """A real UDP socket on loopback as the StatsD server; a fresh process with [metrics] statsd_on."""
    import socket

    sock = socket.socket(socket.AF_INET, socket.SOCK_DGRAM)
    sock.bind(("127.0.0.1", 0))
    sock.settimeout(20)
    env = {
        **os.environ,
        "AIRFLOW__METRICS__STATSD_ON": "True",
        "AIRFLOW__METRICS__STATSD_HOST": "127.0.0.1",
        "AIRFLOW__METRICS__STATSD_PORT": str(sock.getsockname()[1]),
        "PYTHONPATH": os.path.join(ROOT, "plugins"),
    }
    code = (
        # What Airflow's task runner does at start-up: build the metrics backend from [metrics].
        "from airflow.sdk._shared.observability.metrics import stats;"
        "from airflow.sdk.observability.metrics import stats_utils;"
        "stats.initialize(factory=stats_utils.get_stats_factory(), export_legacy_names=True);"
        "from image_embeddings_airflow.metrics import emit_extraction;"
        "print(emit_extraction({'inputs': 13, 'embedded': 12, 'failed': 1, 'images_per_second': 4.5,"
        " 'seconds': 3.0, 'failure_rate': 0.077, 'model_id': 'not a number'}))"
    )
    proc = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, env=env, timeout=120)
    assert proc.returncode == 0, proc.stderr[-2000:]
    packets = []
    try:
        while len(packets) < 6:
            packets.append(sock.recv(4096).decode())
    finally:
        sock.close()
    lines = {line for p in packets for line in p.splitlines()}
    assert "airflow.image_embeddings.extract.embedded:12|g" in lines
    assert "airflow.image_embeddings.extract.failed:1|g" in lines
    assert "airflow.image_embeddings.extract.images_per_second:4.5|g" in lines
    assert not any("model_id" in line for line in lines)


def test_deadline_alert_is_configured_and_its_callback_posts(webhook):
    import asyncio

    from image_embeddings_airflow.alerts import deadline_missed

    code = (
        "import importlib.util;"
        f"spec = importlib.util.spec_from_file_location('d', {DAG_FILE!r});"
        "m = importlib.util.module_from_spec(spec); spec.loader.exec_module(m);"
        "d = m.dag.deadline; d = d if isinstance(d, list) else [d];"
        "print(len(d), d[0].interval.total_seconds(), d[0].callback.path)"
    )
    env = {**os.environ, "IMAGE_EMBEDDINGS_DEADLINE_MINUTES": "90"}
    proc = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, env=env, check=True)
    assert proc.stdout.split()[-3:] == ["1", "5400.0", "image_embeddings_airflow.alerts.deadline_missed"]
    asyncio.run(deadline_missed(context={"dag_run": {"dag_id": "image_embeddings", "run_id": "r1"}}, limit_minutes=90))
    assert webhook[-1]["what"] == "deadline"
    assert webhook[-1]["run_id"] == "r1"
    assert "90 min" in webhook[-1]["text"]
