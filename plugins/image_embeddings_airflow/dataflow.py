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
from beam_jobs.nightly.cost import service_metrics

# XCom key under which a Beam task on a local runner leaves its job's CPU seconds and peak memory.
LOCAL_RESOURCES_KEY = "local_resources"


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


# Dataflow's JobState values (google.dataflow.v1beta3.JobState). Decisions are made on these names,
# never on the wording of a provider's message.
JOB_DONE = "JOB_STATE_DONE"
# Ended, and not DONE: polling again will not change it, so the sensor fails without retries.
JOB_ENDED_BADLY = {
    "JOB_STATE_FAILED": "failed",
    "JOB_STATE_CANCELLED": "was cancelled",
    # Drained: stopped taking input and finished what it had, so the night's output is incomplete.
    "JOB_STATE_DRAINED": "was drained (it stopped before reading all its input)",
    # Updated: replaced by another job (Dataflow's in-place update); this job's output is not the night's.
    "JOB_STATE_UPDATED": "was replaced by another job (updated)",
}
# Still on its way to an end: keep polling.
JOB_GOING = frozenset(
    {
        "JOB_STATE_UNKNOWN",
        "JOB_STATE_STOPPED",  # not yet started
        "JOB_STATE_PENDING",
        "JOB_STATE_QUEUED",  # FlexRS: waiting for capacity, can take hours
        "JOB_STATE_RUNNING",
        "JOB_STATE_CANCELLING",
        "JOB_STATE_DRAINING",
        "JOB_STATE_UPDATING",
        "JOB_STATE_RESOURCE_CLEANING_UP",
        "JOB_STATE_UNSPECIFIED",
    }
)


def state_name(state: Any) -> str:
    """``JOB_STATE_...`` from a JobState enum, its number (a value newer than the client library) or a string."""
    name = getattr(state, "name", None)
    return str(name if name is not None else state)


class CancellingJobStatusTrigger(_CancelOnKill, DataflowJobStatusTrigger):
    """Polls the job's state until it is no longer in ``JOB_GOING``; the event carries the state itself.

    Unlike the provider's trigger (whose event says DONE/terminal only in its message text), any
    state outside ``JOB_GOING``, including one newer than this code, ends the wait, and the sensor
    decides from ``event["state"]``.
    """

    def serialize(self) -> tuple[str, dict[str, Any]]:
        _, kwargs = super().serialize()
        return f"{__name__}.CancellingJobStatusTrigger", kwargs

    async def run(self):
        import asyncio

        from airflow.triggers.base import TriggerEvent

        try:
            while True:
                state = state_name(
                    await self.async_hook.get_job_status(
                        job_id=self.job_id, project_id=self.project_id, location=self.location
                    )
                )
                if state not in JOB_GOING:
                    yield TriggerEvent({"status": "ended", "state": state, "job_id": self.job_id})
                    return
                self.log.info("Dataflow job %s is %s; next poll in %s s", self.job_id, state, self.poll_sleep)
                await asyncio.sleep(self.poll_sleep)
        except Exception as exc:
            self.log.exception("polling Dataflow job %s failed", self.job_id)
            yield TriggerEvent({"status": "error", "state": None, "job_id": self.job_id, "message": str(exc)})


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
    stays the same for both runners). Success is decided from the job's state (the
    trigger's event, or one ``get_job`` call when the polling failed), never from
    message text: DONE succeeds; FAILED, CANCELLED, DRAINED or UPDATED fail this
    task without retries (clear the Beam task to submit it again); a state this
    code does not know, or an error while polling, is retried, and the retry
    polls the same job.
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
            # What the Beam task measured of its job's process (CPU seconds, peak memory): the cost fields.
            ti = context.get("ti")
            # Mapped (the reduce steps): the Beam task instance of the same map index, as for the job id.
            where = (
                {"task_ids": self.beam_task_id, "key": LOCAL_RESOURCES_KEY, "map_indexes": ti.map_index} if ti else {}
            )
            resources = ti.xcom_pull(**where) if ti else None
            return {"runner": self.runner, "job_id": None, "state": None, "metrics": {}, "resources": resources or {}}
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

    def job_state(self, event: dict[str, Any]) -> str:
        """The job's state: the trigger's event says it; when the polling failed, one ``get_job`` call."""
        if event.get("state"):
            return str(event["state"])
        self.log.warning("no state in the trigger's event (%s); asking Dataflow once", event.get("message"))
        try:
            job = self.hook.get_job(job_id=self.job_id, project_id=self.project_id, location=self.location)
        except Exception as exc:
            # The polling itself failing (API or credentials) is retried; the retry polls the same job.
            raise AirflowException(
                f"could not check Dataflow job {self.job_id}: {event.get('message')}; get_job: {exc}"
            ) from exc
        return state_name(job.get("currentState") or "JOB_STATE_UNKNOWN")

    def execute_complete(self, context: Any, event: dict[str, Any]) -> dict[str, Any]:
        state = self.job_state(event)
        if state in JOB_ENDED_BADLY:
            # An ended job will not come back by polling again: no retries.
            raise AirflowFailException(
                f"Dataflow job {self.job_id} {JOB_ENDED_BADLY[state]} ({state}). "
                f"Clear {self.beam_task_id} (and downstream) to submit it again."
            )
        if state in JOB_GOING:
            raise AirflowException(f"Dataflow job {self.job_id} is still {state}: polling again (retry)")
        if state != JOB_DONE:
            # A state newer than this code: never taken for success; retried, then failed, for a person to look.
            raise AirflowException(
                f"Dataflow job {self.job_id} is in state {state}, which this DAG does not know: not treated as "
                "done. Check the job in the Dataflow console."
            )
        self.log.info("Dataflow job %s is %s", self.job_id, state)
        try:
            raw = self.hook.fetch_job_metrics_by_id(
                job_id=self.job_id, project_id=self.project_id, location=self.location
            )
            metrics = job_metrics(raw.get("metrics", []))
            # vCPU, memory, disk, shuffle and GPU time: what the night is billed for (the run record's cost).
            resources = service_metrics(raw.get("metrics", []))
        except Exception:
            self.log.exception("could not read metrics of Dataflow job %s", self.job_id)
            metrics, resources = {}, {}
        self.log.info("Dataflow job %s metrics: %s; resources: %s", self.job_id, metrics, resources)
        return {
            "runner": self.runner,
            "job_id": self.job_id,
            "state": state,
            "metrics": metrics,
            "resources": resources,
        }
