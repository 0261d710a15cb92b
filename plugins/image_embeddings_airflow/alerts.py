"""Failure alerts for the nightly DAG: always logged; also POSTed to a webhook when one is configured.

Configure the webhook as an Airflow connection named ``image_embeddings_alerts`` (type http or
https; host, port and path), e.g. ``AIRFLOW_CONN_IMAGE_EMBEDDINGS_ALERTS=https://hooks.example.com/T0/B1``.
The JSON body has a ``text`` line (what Slack and most chat webhooks show) plus the fields.
Without the connection the alert is only logged: no deployment needs a webhook to run the DAG.
"""

from __future__ import annotations

import json
import logging
import urllib.request
from typing import Any

from airflow.sdk import BaseNotifier

LOG = logging.getLogger(__name__)
ALERTS_CONN_ID = "image_embeddings_alerts"


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
    return payload


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


def post_alert(payload: dict[str, Any], conn_id: str = ALERTS_CONN_ID, timeout: float = 10.0) -> None:
    """Log the alert; POST it as JSON to the ``conn_id`` connection's URL if that connection exists."""
    LOG.error("ALERT %s", payload["text"])
    try:
        from airflow.sdk import BaseHook

        conn = BaseHook.get_connection(conn_id)
    except Exception:  # noqa: BLE001 - no connection configured: the log line is the alert
        LOG.info("no '%s' connection: alert logged only", conn_id)
        return
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
