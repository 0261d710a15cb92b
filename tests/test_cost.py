"""Cost per night: Dataflow's billing metrics from a recorded getMetrics response, the USD estimate, the run
record's cost, the local runner's CPU seconds and peak memory, and the alert on a jump."""

from __future__ import annotations

import json
import os
import subprocess
import sys
import textwrap

import pytest

from tests.conftest import ROOT

FIXTURE = os.path.join(ROOT, "tests", "fixtures", "dataflow_job_metrics.json")
JOB_ID = "2026-11-21_03_00_00-4242424242"


@pytest.fixture(scope="module")
def recorded() -> dict:
    with open(FIXTURE) as handle:
        return json.load(handle)


def test_service_metrics_read_from_a_recorded_response(recorded):
    from beam_jobs.nightly.cost import service_metrics

    assert service_metrics(recorded["metrics"]) == {
        "vcpu_seconds": 43200.0,  # the committed value, not the tentative one
        "memory_mb_seconds": 165888000.0,
        "pd_gb_seconds": 2700000.0,
        "ssd_gb_seconds": 0.0,
        "shuffle_bytes": 104857600.0,
        "billable_shuffle_bytes": 52428800.0,
        "streaming_bytes": 0.0,
        "gpu_seconds": 0.0,
    }


def test_cost_estimate_from_the_price_table(recorded):
    from beam_jobs.nightly.cost import DEFAULT_PRICES, cost_summary, job_cost, prices, service_metrics

    resources = service_metrics(recorded["metrics"])
    # 12 vCPU-hours at 0.056, 45 GB-hours of memory at 0.003557, 750 GB-hours of PD, 0.0524 GB of billed shuffle.
    expected = 12 * 0.056 + 45 * 0.003557 + 750 * 0.000054 + 0.0524288 * 0.011
    assert job_cost(resources, DEFAULT_PRICES) == pytest.approx(expected, abs=1e-6)
    flexrs = 12 * 0.0336 + 45 * 0.0021342 + 750 * 0.000054 + 0.0524288 * 0.011
    assert job_cost(resources, DEFAULT_PRICES, flexrs=True) == pytest.approx(flexrs, abs=1e-6)
    table, problems = prices({"vcpu_hour": 0.07, "tpu_hour": 1, "pd_gb_hour": "cheap"})
    assert table["vcpu_hour"] == 0.07
    assert problems == [
        "price 'tpu_hour' is not one of " + ", ".join(DEFAULT_PRICES),
        "price pd_gb_hour 'cheap' must be a number >= 0",
    ]
    jobs = {
        "extract_embeddings": {"runner": "DataflowRunner", "job_id": JOB_ID, "resources": resources},
        "reduce_pca": {"runner": "DataflowRunner", "job_id": "j2", "resources": {"vcpu_seconds": 3600.0}},
        "reduce_umap": None,  # not selected
    }
    cost = cost_summary(jobs, 11988, dict(DEFAULT_PRICES))
    assert cost["usd"] == pytest.approx(expected + 0.056, abs=1e-5)
    assert cost["usd_per_1000_images"] == pytest.approx(cost["usd"] / 11.988, abs=1e-5)
    assert cost["jobs"]["extract_embeddings"]["job_id"] == JOB_ID
    assert cost["jobs"]["extract_embeddings"]["vcpu_seconds"] == 43200.0
    assert cost["cpu_seconds"] == 46800.0
    assert cost["prices"]["as_of"]
    assert "cloud.google.com/dataflow/pricing" in cost["prices"]["source"]


def test_done_sensor_carries_the_jobs_resources(dag_and_plan, recorded):
    from tests.test_dataflow import StandInHook, plan_xcoms, render

    dag, params, plan = dag_and_plan
    xcoms = {**plan_xcoms(plan), ("extract_embeddings", "dataflow_job_id"): JOB_ID}
    sensor, context = render(dag, "extract_embeddings_done", params, xcoms)
    sensor.__dict__["hook"] = StandInHook({"currentState": "JOB_STATE_DONE"}, recorded)
    done = sensor.execute_complete(context, {"status": "ended", "state": "JOB_STATE_DONE", "job_id": JOB_ID})
    assert done["metrics"] == {"embedded": 11988, "failed": 12}
    assert done["resources"]["vcpu_seconds"] == 43200.0
    assert done["resources"]["billable_shuffle_bytes"] == 52428800.0


@pytest.fixture(scope="module")
def dag_and_plan():
    from airflow.dag_processing.dagbag import DagBag

    from beam_jobs.nightly.plan import build_plan
    from tests.test_dataflow import DATAFLOW, DS

    dag = DagBag(dag_folder=os.path.join(ROOT, "dags")).dags["image_embeddings"]
    params = {
        **{k: dag.params[k] for k in dag.params},
        "runner": "DataflowRunner",
        "input": "gs://acme-images/ds={{ ds }}/*.jpg",
        "output_root": "gs://acme-out/nightly",
        "weights": "gs://acme-models/resnet50_notop.h5",
    }
    return dag, params, build_plan(params, DS, "r", f"gs://acme-images/ds={DS}/*.jpg", DATAFLOW)


def test_local_job_cpu_seconds_and_peak_memory():
    # In a fresh interpreter: the children's high-water mark of this pytest process is whatever the
    # biggest earlier test's child reached (a TF job), so a 200 MB child here would not raise it.
    script = textwrap.dedent(
        """
        import json, subprocess, sys
        from image_embeddings_airflow.operators import ChildResources

        # A child that burns ~0.3 s of CPU and holds ~200 MB: what a local job's launcher process is to the task.
        code = (
            "import time; b = bytearray(200 * 2**20); t = time.process_time()\\n"
            "while time.process_time() - t < 0.3: pass"
        )
        with ChildResources() as used:
            subprocess.run([sys.executable, "-c", code], check=True)
        # A smaller job after it in the same process: its peak cannot be told from the earlier one's.
        with ChildResources() as again:
            subprocess.run([sys.executable, "-c", "pass"], check=True)
        print(json.dumps([used.figures, again.figures]))
        """
    )
    env = {**os.environ, "PYTHONPATH": os.pathsep.join([os.path.join(ROOT, "plugins"), ROOT])}
    proc = subprocess.run([sys.executable, "-c", script], capture_output=True, text=True, env=env, check=True)
    used, again = json.loads(proc.stdout.strip().splitlines()[-1])
    assert 0.25 <= used["cpu_seconds"] < 5
    assert used["peak_memory_mb"] >= 200
    assert again["peak_memory_mb"] is None


def test_cost_jump_alerts_over_the_ratio_of_the_median():
    from beam_jobs.nightly.cost import cost_jump

    nights = [{"usd_per_1000_images": v} for v in (0.07, 0.08, 0.075, 0.5)]  # one odd night: the median holds
    assert cost_jump({"usd_per_1000_images": 0.15}, nights, 2.0) is None
    why = cost_jump({"usd_per_1000_images": 0.2}, nights, 2.0)
    assert why == "usd per 1000 images is 0.2, 2.6x the median 0.0775 of the 4 nights before (alert above 2x)"
    assert cost_jump({"usd_per_1000_images": 0.2}, nights, 0) is None  # off
    assert cost_jump({"usd_per_1000_images": 0.2}, nights[:2], 2.0) is None  # too few nights to say
    # Local runs compare CPU seconds per 1,000 images; nights of the other kind do not count.
    local = [{"usd_per_1000_images": None, "cpu_seconds_per_1000_images": v} for v in (900, 1000, 1100)]
    assert "cpu seconds per 1000 images is 5000" in cost_jump({"cpu_seconds_per_1000_images": 5000}, local, 3)
    assert cost_jump({"cpu_seconds_per_1000_images": 5000}, nights, 3) is None


def test_cost_alert_reaches_the_webhook():
    from image_embeddings_airflow.alerts import cost_alert
    from tests.airflow_support import Webhook

    server = Webhook()
    try:
        with pytest.MonkeyPatch.context() as mp:
            mp.setenv("AIRFLOW_CONN_IMAGE_EMBEDDINGS_ALERTS", server.url)
            cost_alert("2026-11-21", "scheduled__2026-11-21", "usd per 1000 images is 0.2, 2.5x the median")
    finally:
        server.close()
    (body,) = server.received
    assert body["what"] == "cost"
    assert "2.5x the median" in body["text"]


def test_earlier_records_are_the_published_nights_before(tmp_path):
    from beam_jobs.contract import run_record_path
    from beam_jobs.nightly.cost import earlier_records
    from image_embeddings_airflow.paths import read_json, write_json

    out = str(tmp_path)
    for day, usd in (("2026-11-18", 0.07), ("2026-11-19", 0.08), ("2026-11-21", 0.5)):
        write_json(run_record_path(out, day), {"ds": day, "cost": {"usd_per_1000_images": usd}})
    records = earlier_records(out, "2026-11-21", 14, read_json)
    assert [r["ds"] for r in records] == ["2026-11-19", "2026-11-18"]  # not the night itself; gaps skipped
