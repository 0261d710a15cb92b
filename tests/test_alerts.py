"""image_embeddings_airflow.alerts: failure and deadline alerts, logged and POSTed to a real loopback webhook."""

from __future__ import annotations

import pytest

# Imported at collection: importing Airflow configures its logging (replacing the root logger's
# handlers), which must happen before caplog installs its own for a test.
from image_embeddings_airflow.alerts import FailureAlert, deadline_missed
from tests.airflow_support import DAG_FILE, Webhook


@pytest.fixture
def webhook(monkeypatch):
    """A real HTTP server on loopback standing in for the team's chat webhook, as the alerts connection."""
    server = Webhook()
    monkeypatch.setenv("AIRFLOW_CONN_IMAGE_EMBEDDINGS_ALERTS", server.url)
    yield server.received
    server.close()


def test_alert_without_connection_is_logged_only(caplog):
    with caplog.at_level("INFO"):
        FailureAlert("dag", conn_id="no_such_alerts_conn").notify({"reason": "task_failure", "dag_run": None})
    assert any("ALERT" in r.getMessage() for r in caplog.records)
    assert any("alert logged only" in r.getMessage() for r in caplog.records)


def test_deadline_alert_is_configured_and_its_callback_posts(webhook, monkeypatch):
    import asyncio
    import importlib.util

    # The DAG file as a deployment with the deadline on parses it (the setting is read at parse time).
    monkeypatch.setenv("IMAGE_EMBEDDINGS_DEADLINE_MINUTES", "90")
    spec = importlib.util.spec_from_file_location("image_embeddings_with_deadline", DAG_FILE)
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    deadline = module.dag.deadline
    deadlines = deadline if isinstance(deadline, list) else [deadline]
    assert [(d.interval.total_seconds(), d.callback.path) for d in deadlines] == [
        (5400.0, "image_embeddings_airflow.alerts.deadline_missed")
    ]
    asyncio.run(deadline_missed(context={"dag_run": {"dag_id": "image_embeddings", "run_id": "r1"}}, limit_minutes=90))
    assert webhook[-1]["what"] == "deadline"
    assert webhook[-1]["run_id"] == "r1"
    assert "90 min" in webhook[-1]["text"]


@pytest.mark.slow
def test_task_failure_is_alerted_on_the_webhook(refused_night):
    """A real dag.test() run whose plan fails (conftest.refused_night, shared with test_dag): the task's
    failure callback posts one alert to the loopback webhook named by the alerts connection."""
    dr, _, _, received = refused_night
    assert str(dr.state) == "failed"
    task_alerts = [a for a in received if a["what"] == "task"]
    assert len(task_alerts) == 1
    alert = task_alerts[0]
    assert alert["task_id"] == "plan"
    assert alert["dag_id"] == "image_embeddings"
    assert "does not exist" in alert["error"]
    assert "plan" in alert["text"]


def test_a_drift_alert_says_which_night_reference_and_threshold():
    from image_embeddings_airflow.alerts import drift_alert_payload

    manifest = {"reference": {"dir": "/out/references/method=pca/fixed"}, "drift": {"mmd_p_value": 0.004}}
    payload = drift_alert_payload({"ds": "2026-11-21"}, "pca", manifest, ["MMD p-value 0.004 < 0.01"], "scheduled__x")
    assert payload["what"] == "drift"
    assert payload["drift"] == {"mmd_p_value": 0.004}
    assert "ds=2026-11-21" in payload["text"]
    assert "/out/references/method=pca/fixed" in payload["text"]
    assert payload["text"].endswith("MMD p-value 0.004 < 0.01")


def test_the_report_alert_goes_out_for_a_night_worth_a_look_only():
    from image_embeddings_airflow.alerts import report_alert

    plan = {"ds": "2026-11-21", "run_id": "r"}
    summary = {"png": "/out/reports/ds=2026-11-21/report.png", "html": "/x.html", "novelty_status": "within"}
    assert report_alert(plan, summary, night_failed=False, drifted=False) is None
    assert report_alert(plan, {**summary, "png": None}, night_failed=True, drifted=False) is None  # no picture
    failed = report_alert(plan, summary, night_failed=True, drifted=True)
    assert failed["why"] == ["the night failed", "drift alerted"]
    assert failed["report_png"] == summary["png"]
    novel = report_alert(plan, {**summary, "novelty_status": "above", "novelty_rate": 0.3}, False, False)
    assert novel["why"] == ["novelty 0.3 above its usual band"]


@pytest.mark.parametrize("attach", ["true", None])
def test_the_report_picture_is_attached_when_the_webhook_takes_images_else_linked(tmp_path, monkeypatch, attach):
    """A real PNG through a real loopback webhook: attached (base64, the same bytes) when the connection's extra
    says attach_images, linked in the text otherwise; a picture not written yet is linked, never an error."""
    import base64

    from PIL import Image

    from image_embeddings_airflow.alerts import post_alert

    png = tmp_path / "report.png"
    Image.new("RGB", (64, 32), (200, 30, 30)).save(png)
    server = Webhook()
    try:
        monkeypatch.setenv(
            "AIRFLOW_CONN_IMAGE_EMBEDDINGS_ALERTS", server.url + (f"?attach_images={attach}" if attach else "")
        )
        post_alert({"what": "report", "text": "look", "report_png": str(png)})
        post_alert({"what": "drift", "text": "drift", "report_png": str(tmp_path / "not-yet.png")})
    finally:
        server.close()
    with_picture, not_yet = server.received
    assert with_picture["text"] == f"look · morning report: {png}"
    if attach:
        assert with_picture["image"]["content_type"] == "image/png"
        assert base64.b64decode(with_picture["image"]["base64"]) == png.read_bytes()
    else:
        assert "image" not in with_picture
    assert "image" not in not_yet
    assert not_yet["text"].endswith("not-yet.png")
