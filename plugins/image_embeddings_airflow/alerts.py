"""Failure alerts for the nightly DAG: always logged; also POSTed to a webhook when one is configured.

Configure the webhook as an Airflow connection named ``image_embeddings_alerts`` (type http or
https; host, port and path), e.g. ``AIRFLOW_CONN_IMAGE_EMBEDDINGS_ALERTS=https://hooks.example.com/T0/B1``.
The JSON body has a ``text`` line (what Slack and most chat webhooks show) plus the fields.
Without the connection the alert is only logged: no deployment needs a webhook to run the DAG.

Alerts about a planned night name its morning report picture (``report_png``, and a line in ``text``): the
report task writes it after publish, also after a failure. When the picture exists as the alert is sent and
the connection's extra says ``{"attach_images": true}`` (a webhook that takes images), it is attached as
``image`` (name, content type, base64); otherwise it is linked. The report task sends one more alert, with
the picture, for a night that failed, alerted on drift, or whose novelty is above its usual band.
"""

from __future__ import annotations

import base64
import json
import logging
import urllib.request
from typing import Any

from airflow.sdk import BaseNotifier

from beam_jobs.contract import REPORT_PNG

LOG = logging.getLogger(__name__)
ALERTS_CONN_ID = "image_embeddings_alerts"
ATTACH_IMAGES = "attach_images"  # the connection's extra key: the webhook takes an image in the JSON body
MAX_IMAGE_BYTES = 3 * 2**20  # report.png is ~0.3 MB; a larger file is linked, never posted


def webhook_url(conn) -> str:
    scheme = "https" if (conn.conn_type or "").lower() == "https" else "http"
    if conn.host and conn.host.startswith(("http://", "https://")):
        return conn.host
    port = f":{conn.port}" if conn.port else ""
    path = (conn.schema or "").lstrip("/")
    return f"{scheme}://{conn.host}{port}/{path}"


def alert_payload(context: dict[str, Any], what: str) -> dict[str, Any]:
    ti = context.get("ti") or context.get("task_instance")
    dag_run = context.get("dag_run")
    exception = context.get("exception")
    payload = {
        "what": what,
        "dag_id": getattr(dag_run, "dag_id", None) or getattr(ti, "dag_id", None),
        "run_id": getattr(dag_run, "run_id", None) or getattr(ti, "run_id", None),
        "task_id": getattr(ti, "task_id", None) if what == "task" else None,
        "try_number": getattr(ti, "try_number", None) if what == "task" else None,
        "logical_date": str(getattr(dag_run, "logical_date", None) or ""),
        "error": f"{type(exception).__name__}: {exception}" if exception else context.get("reason"),
    }
    where = f"task {payload['task_id']} (try {payload['try_number']})" if what == "task" else "DAG run"
    payload["text"] = f":red_circle: {payload['dag_id']} {payload['run_id']}: {where} failed: {payload['error']}"
    report_png = _report_png(_planned_report_dir(ti))
    if report_png:
        payload["report_png"] = report_png
    return payload


def _report_png(report_dir: str | None) -> str | None:
    """Where the report task writes the night's picture (it may not be there yet)."""
    return f"{report_dir.rstrip('/')}/{REPORT_PNG}" if report_dir else None


def _planned_report_dir(ti) -> str | None:
    """The night's report folder from the plan task's XCom; None before there is a plan (or no XCom here)."""
    try:
        return ti.xcom_pull(task_ids="plan", key="report_dir") if ti is not None else None
    except Exception:  # noqa: BLE001 - an alert must go out whatever the context can or cannot read
        return None


def drift_alert_payload(
    plan: dict[str, Any], method: str, manifest: dict[str, Any], problems: list[str], run_id: str
) -> dict[str, Any]:
    """An alert for a night whose embeddings drifted from the reference (the run itself succeeded)."""
    reference = manifest.get("reference") or {}
    payload = {
        "what": "drift",
        "dag_id": "image_embeddings",
        "run_id": run_id,
        "ds": plan.get("ds"),
        "method": method,
        "reference": reference.get("dir"),
        "drift": manifest.get("drift"),
        "problems": problems,
        "report_png": _report_png(plan.get("report_dir")),
    }
    payload["text"] = (
        f":large_yellow_circle: image_embeddings {run_id} ds={plan.get('ds')}: drift against the {method} "
        f"reference {reference.get('dir')}: " + "; ".join(problems)
    )
    return payload


class FailureAlert(BaseNotifier):
    """Notifier for task and DAG-run failures (``on_failure_callback``)."""

    template_fields = ("conn_id",)

    def __init__(self, what: str = "task", conn_id: str = ALERTS_CONN_ID, timeout: float = 10.0):
        super().__init__()
        self.what = what
        self.conn_id = conn_id
        self.timeout = timeout

    def notify(self, context: dict[str, Any]) -> None:
        post_alert(alert_payload(context, self.what), self.conn_id, self.timeout)


def report_alert(plan: dict[str, Any], summary: dict[str, Any], night_failed: bool, drifted: bool) -> dict | None:
    """The report task's alert, with the picture, for a night worth a look; None for a quiet night."""
    why = [w for w, on in (("the night failed", night_failed), ("drift alerted", drifted)) if on]
    if summary.get("novelty_status") == "above":
        why.append(f"novelty {summary.get('novelty_rate')} above its usual band")
    if not why or not summary.get("png"):
        return None
    return {
        "what": "report",
        "ds": plan.get("ds"),
        "run_id": plan.get("run_id"),
        "why": why,
        "report_png": summary["png"],
        "report_html": summary.get("html"),
        "text": f":bar_chart: image_embeddings ds={plan.get('ds')} morning report ({'; '.join(why)})",
    }


def with_report_image(payload: dict[str, Any], attach: bool) -> dict[str, Any]:
    """The payload naming its report picture in ``text``, and with the picture itself when ``attach`` and the
    file exists (local or gs://) within ``MAX_IMAGE_BYTES``."""
    path = payload.get("report_png")
    if not path:
        return payload
    out = {**payload, "text": f"{payload['text']} · morning report: {path}"}
    if attach:
        try:
            from beam_jobs.storage import read_bytes  # gs:// too

            data = read_bytes(path, limit=MAX_IMAGE_BYTES + 1)
        except Exception as exc:  # noqa: BLE001 - not written yet (a task failing before the report): linked
            LOG.info("report picture %s not attached: %s", path, exc)
            return out
        if len(data) <= MAX_IMAGE_BYTES:
            out["image"] = {"name": REPORT_PNG, "content_type": "image/png", "base64": base64.b64encode(data).decode()}
    return out


def post_alert(payload: dict[str, Any], conn_id: str = ALERTS_CONN_ID, timeout: float = 10.0) -> None:
    """Log the alert; POST it as JSON to the ``conn_id`` connection's URL if that connection exists."""
    LOG.error("ALERT %s", payload["text"])
    try:
        from airflow.sdk import BaseHook

        conn = BaseHook.get_connection(conn_id)
    except Exception:  # noqa: BLE001 - no connection configured: the log line is the alert
        LOG.info("no '%s' connection: alert logged only", conn_id)
        return
    # A URI connection's extras are strings (?attach_images=true); a JSON one may hold a real boolean.
    attach = str((conn.extra_dejson or {}).get(ATTACH_IMAGES, "")).lower() in ("true", "1", "yes")
    payload = with_report_image(payload, attach)
    request = urllib.request.Request(
        webhook_url(conn),
        data=json.dumps(payload, default=str).encode("utf-8"),
        headers={"Content-Type": "application/json"},
        method="POST",
    )
    try:
        with urllib.request.urlopen(request, timeout=timeout) as response:
            LOG.info("alert sent to %s: HTTP %s", conn_id, response.status)
    except Exception as exc:  # noqa: BLE001 - a broken webhook must not hide the original failure
        LOG.error("alert webhook %s failed: %s", conn_id, exc)


def cost_alert(ds: str, run_id: str, why: str, conn_id: str = ALERTS_CONN_ID) -> dict[str, Any]:
    """The night cost much more than the nights before it (``beam_jobs.nightly.cost.cost_jump`` said why)."""
    payload = {
        "what": "cost",
        "ds": ds,
        "run_id": run_id,
        "reason": why,
        "text": f":moneybag: image_embeddings ds={ds} ({run_id}): {why}",
    }
    post_alert(payload, conn_id)
    return payload


def _field(context: dict[str, Any], name: str):
    run = context.get("dag_run") or {}
    return context.get(name) or (run.get(name) if isinstance(run, dict) else getattr(run, name, None))


async def deadline_missed(context: dict[str, Any] | None = None, limit_minutes: int = 0, **kwargs: Any) -> None:
    """Deadline-alert callback (runs in the triggerer): the nightly run is still going after the limit."""
    import asyncio

    context = context or {}
    dag_id, run_id = _field(context, "dag_id"), _field(context, "run_id")
    payload = {
        "what": "deadline",
        "dag_id": dag_id,
        "run_id": run_id,
        "limit_minutes": limit_minutes,
        "text": f":hourglass: {dag_id} {run_id}: still running {limit_minutes} min after it was queued",
    }
    await asyncio.to_thread(post_alert, payload)
