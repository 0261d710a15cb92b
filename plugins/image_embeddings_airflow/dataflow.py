"""Dataflow side of the nightly DAG: wait for a submitted job, cancel it when the task is killed.

On DataflowRunner each Beam task only *submits* its job (the launcher runs with
``--detach`` and the operator returns once Dataflow has accepted the job and its
id is in XCom as ``dataflow_job_id``). A ``DataflowJobDoneSensor`` after it
waits for ``JOB_STATE_DONE`` in the triggerer and then reads the job's metrics.

Why split submit from wait: a retry of the waiting task (say, an API hiccup)
polls the same job again instead of submitting a second one.

Kill behaviour (the chosen one, tested): when a user marks the waiting task
failed/success or clears it, the trigger's ``on_kill`` cancels the Dataflow job,
so nothing keeps running (and billing) behind Airflow's back. The same holds
while the Beam task itself is deferred (``NightlyBeamOperator`` swaps in
``CancellingJobStateCompleteTrigger``) or running (the provider's ``on_kill``).
A triggerer restart does not cancel anything: the trigger is picked up again.
"""

from __future__ import annotations

from collections.abc import Sequence
from typing import Any

from airflow.providers.google.cloud.hooks.dataflow import DataflowHook, DataflowJobStatus
from airflow.providers.google.cloud.sensors.dataflow import DataflowJobStatusSensor
from airflow.providers.google.cloud.triggers.dataflow import DataflowJobStateCompleteTrigger, DataflowJobStatusTrigger
from airflow.sdk.exceptions import AirflowException, AirflowFailException

from beam_jobs.contract import DATAFLOW_RUNNER, METRIC_NAMESPACES


def is_dataflow(runner: object) -> bool:
    """The rendered ``runner`` template names Dataflow (any case)."""
    return str(runner).lower() == DATAFLOW_RUNNER.lower()


def cancel_dataflow_job(
    job_id: str, project_id: str | None, location: str | None, gcp_conn_id: str, impersonation_chain=None
) -> None:
    """Ask Dataflow to cancel ``job_id`` (returns once requested; no wait for JOB_STATE_CANCELLED)."""
    hook = DataflowHook(gcp_conn_id=gcp_conn_id, impersonation_chain=impersonation_chain, cancel_timeout=None)
    hook.cancel_job(job_id=job_id, project_id=project_id, location=location)


class _CancelOnKill:
    """Mixin for Dataflow triggers: a user killing the deferred task cancels the job."""

    job_id: str
    project_id: str | None
    location: str
    gcp_conn_id: str
    impersonation_chain: Any

    async def on_kill(self) -> None:
        from asgiref.sync import sync_to_async

        if not self.job_id:
            return
        self.log.warning("task killed by a user: cancelling Dataflow job %s (%s)", self.job_id, self.location)
        try:
            # The sync hook resolves its connection while constructed: keep that off the event loop.
            await sync_to_async(cancel_dataflow_job)(
                self.job_id, self.project_id, self.location, self.gcp_conn_id, self.impersonation_chain
            )
        except Exception:
            self.log.exception("could not cancel Dataflow job %s; it may still be running", self.job_id)


class CancellingJobStatusTrigger(_CancelOnKill, DataflowJobStatusTrigger):
    def serialize(self) -> tuple[str, dict[str, Any]]:
        _, kwargs = super().serialize()
        return f"{__name__}.CancellingJobStatusTrigger", kwargs


class CancellingJobStateCompleteTrigger(_CancelOnKill, DataflowJobStateCompleteTrigger):
    def serialize(self) -> tuple[str, dict[str, Any]]:
        _, kwargs = super().serialize()
        return f"{__name__}.CancellingJobStateCompleteTrigger", kwargs


def _number(value: Any) -> int | float | None:
    """Dataflow's JSON may carry int64 values as strings."""
    try:
        number = float(value)
    except (TypeError, ValueError):
        return None
    return int(number) if number.is_integer() else number


def job_metrics(metrics: list[dict[str, Any]], namespaces: Sequence[str] = METRIC_NAMESPACES) -> dict[str, Any]:
    """Committed user counters of our jobs from Dataflow's ``MetricUpdate`` list, summed over steps.

    Dataflow reports each user counter per step, twice (committed, and with
    ``context.tentative == "true"``); distributions come as ``distribution``.
    """
    out: dict[str, Any] = {}
    for update in metrics:
        name = update.get("name") or {}
        context = name.get("context") or {}
        if name.get("origin") != "user" or context.get("namespace") not in namespaces:
            continue
        if str(context.get("tentative", "")).lower() == "true":
            continue
        counter = name.get("name")
        if (scalar := _number(update.get("scalar"))) is not None:
            out[counter] = out.get(counter, 0) + scalar
        elif isinstance(update.get("distribution"), dict):
            dist = {field: _number(update["distribution"].get(field)) for field in ("count", "sum", "min", "max")}
            if not dist["count"] or None in dist.values():
                continue
            prev = out.get(counter) or {"count": 0, "sum": 0, "min": dist["min"], "max": dist["max"]}
            merged = {
                "count": prev["count"] + dist["count"],
                "sum": prev["sum"] + dist["sum"],
                "min": min(prev["min"], dist["min"]),
                "max": max(prev["max"], dist["max"]),
            }
            merged["mean"] = round(merged["sum"] / merged["count"], 3)
            out[counter] = merged
    return dict(sorted(out.items()))


class DataflowJobDoneSensor(DataflowJobStatusSensor):
    """After a Beam task: on Dataflow, wait (deferred) for its job to be DONE, then read the job's metrics.

    ``job_id`` is the Beam task's ``dataflow_job_id`` XCom; ``dataflow`` is the plan's
    Dataflow settings (its project and region are where the job runs). With a local runner
    the job already ran inside the Beam task, so this returns at once (the graph
    stays the same for both runners). A job that ends FAILED or CANCELLED fails
    this task without retries (clear the Beam task to submit it again); an error
    while polling is retried, and the retry polls the same job.
    Returns ``{"runner", "job_id", "state", "metrics"}`` (pushed to XCom).
    """

    template_fields: Sequence[str] = (
        *DataflowJobStatusSensor.template_fields,
        "runner",
        "project_id",
        "location",
        "dataflow",
        "job",
    )

    def __init__(
        self,
        *,
        runner: str,
        beam_task_id: str,
        dataflow: dict[str, Any] | None = None,
        job: dict[str, Any] | None = None,
        **kwargs: Any,
    ) -> None:
        kwargs.setdefault("expected_statuses", {DataflowJobStatus.JOB_STATE_DONE})
        kwargs.setdefault("deferrable", True)
        kwargs.setdefault("poll_interval", 60)
        # Not the XComArg beam_task.output["dataflow_job_id"]: with a local runner nothing pushes that
        # key, and an XComArg of a missing key fails the rendering instead of yielding None. Mapped
        # (the reduce steps): the Beam task instance of the same map index; unmapped both are -1.
        kwargs.setdefault(
            "job_id",
            "{{ ti.xcom_pull(task_ids='" + beam_task_id + "', key='dataflow_job_id', map_indexes=ti.map_index) }}",
        )
        super().__init__(**kwargs)
        self.runner = runner
        self.beam_task_id = beam_task_id
        self.dataflow = dataflow
        self.job = job  # mapped: the flags of the job this instance waits for (shown in its rendered fields)

    def execute(self, context: Any) -> dict[str, Any] | None:
        if not is_dataflow(self.runner):
            self.log.info("runner %s: %s ran its job in-process; nothing to wait for", self.runner, self.beam_task_id)
            return {"runner": self.runner, "job_id": None, "state": None, "metrics": {}}
        settings = self.dataflow or {}
        self.project_id = settings.get("project") or self.project_id
        self.location = settings.get("region") or self.location
        if not self.job_id or self.job_id == "None":
            raise AirflowFailException(
                f"{self.beam_task_id} left no dataflow_job_id in XCom: did the launcher log 'Created job with id'?"
            )
        self.log.info("waiting for Dataflow job %s (%s, %s) to be DONE", self.job_id, self.project_id, self.location)
        # Deferred straight away: the triggerer polls; no worker slot is held while the job runs.
        self.defer(
            timeout=self.execution_timeout,
            trigger=CancellingJobStatusTrigger(
                job_id=self.job_id,
                expected_statuses=self.expected_statuses,
                project_id=self.project_id,
                location=self.location,
                gcp_conn_id=self.gcp_conn_id,
                poll_sleep=self.poll_interval,
                impersonation_chain=self.impersonation_chain,
            ),
            method_name="execute_complete",
        )
        return None

    def execute_complete(self, context: Any, event: dict[str, Any]) -> dict[str, Any]:
        if event.get("status") != "success":
            message = str(event.get("message"))
            if "terminal state" in message:
                # A job that failed or was cancelled will not come back by polling again: no retries.
                raise AirflowFailException(
                    f"Dataflow job {self.job_id} did not finish: {message}. "
                    f"Clear {self.beam_task_id} (and downstream) to submit it again."
                )
            # Anything else is the polling itself failing (API or credentials): retried, same job.
            raise AirflowException(f"could not check Dataflow job {self.job_id}: {message}")
        self.log.info(event.get("message"))
        try:
            raw = self.hook.fetch_job_metrics_by_id(
                job_id=self.job_id, project_id=self.project_id, location=self.location
            )
            metrics = job_metrics(raw.get("metrics", []))
        except Exception:
            self.log.exception("could not read metrics of Dataflow job %s", self.job_id)
            metrics = {}
        self.log.info("Dataflow job %s metrics: %s", self.job_id, metrics)
        return {
            "runner": self.runner,
            "job_id": self.job_id,
            "state": DataflowJobStatus.JOB_STATE_DONE,
            "metrics": metrics,
        }
