"""Operators of the nightly DAG: a runner-aware Beam launcher and a sensor for the night's images."""

from __future__ import annotations

import sys
import time
from collections.abc import Callable, Sequence
from typing import Any

from airflow.providers.apache.beam.operators.beam import BeamRunPythonPipelineOperator
from airflow.providers.google.cloud.operators.dataflow import DataflowConfiguration
from airflow.providers.google.cloud.triggers.dataflow import DataflowJobStateCompleteTrigger
from airflow.sdk import BaseSensorOperator, PokeReturnValue
from airflow.sdk.exceptions import AirflowSensorTimeout

from beam_jobs.nightly.readiness import input_ready_record, input_verdict
from image_embeddings_airflow.dataflow import LOCAL_RESOURCES_KEY, CancellingJobStateCompleteTrigger, is_dataflow
from image_embeddings_airflow.paths import snapshot


class NightlyBeamOperator(BeamRunPythonPipelineOperator):
    """``BeamRunPythonPipelineOperator`` for ``python -m beam_jobs.<job>`` whose runner comes from params.

    The runner is only known once templates are rendered, so the choices that
    depend on it are made in ``execute``:

    * DataflowRunner: submit only. The launcher gets ``--detach`` and the
      ``dataflow_options`` (the plan's temp/staging locations and setup_file);
      ``dataflow_config`` (job name; project and region from
      ``dataflow_options`` unless it names them) applies with
      ``wait_until_finished=False``. The provider reads the job id from the
      launcher's INFO log ("Created job with id: [...]"), pushes it to XCom as
      ``dataflow_job_id`` and defers until Dataflow has accepted the job. A
      ``DataflowJobDoneSensor`` downstream waits for it to finish.
    * any local runner: synchronous, no Dataflow configuration. Deferring here
      would run the whole pipeline inside the triggerer process.

    Killing the task cancels its Dataflow job in both states: running (the
    provider's ``on_kill``) and deferred (``CancellingJobStateCompleteTrigger``).
    """

    template_fields: Sequence[str] = (*BeamRunPythonPipelineOperator.template_fields, "dataflow_options")
    template_fields_renderers = {**BeamRunPythonPipelineOperator.template_fields_renderers, "dataflow_options": "json"}

    def __init__(
        self,
        *,
        job: str,
        dataflow_options: dict[str, Any] | str | None = None,
        py_interpreter: str | None = None,
        **kwargs: Any,
    ) -> None:
        super().__init__(
            py_file=f"beam_jobs.{job}",
            py_options=["-m"],
            # The interpreter running Airflow has the project installed (see README); override per deployment.
            py_interpreter=py_interpreter or sys.executable,
            **kwargs,
        )
        self.dataflow_options = dataflow_options or {}

    @property
    def on_dataflow(self) -> bool:
        return is_dataflow(self.runner)

    def _cast_dataflow_config(self) -> None:
        if not self.on_dataflow:
            # No Dataflow settings (and no "dataflow_config is defined" warning) for local runs.
            self.dataflow_config = DataflowConfiguration(job_name=self.task_id)
            return
        if isinstance(self.dataflow_config, dict):
            settings = self.dataflow_options or {}
            where = {"project_id": settings.get("project"), "location": settings.get("region")}
            self.dataflow_config = {**{key: value for key, value in where.items() if value}, **self.dataflow_config}
        super()._cast_dataflow_config()
        # Submit only: DataflowJobDoneSensor waits, so a retry there never submits a second job.
        self.dataflow_config.wait_until_finished = False

    def defer(self, *, trigger: Any, method_name: str, kwargs: dict[str, Any] | None = None, timeout: Any = None):
        if type(trigger) is DataflowJobStateCompleteTrigger:
            # Same trigger, plus on_kill: marking this deferred task failed cancels the Dataflow job.
            trigger = CancellingJobStateCompleteTrigger(**trigger.serialize()[1])
        super().defer(trigger=trigger, method_name=method_name, kwargs=kwargs, timeout=timeout)

    def execute(self, context: Any):
        self.deferrable = self.on_dataflow
        if self.on_dataflow:
            # Project and region reach the launcher through dataflow_config (the provider sets both flags).
            extra = {
                option: value
                for option, value in (self.dataflow_options or {}).items()
                if option not in ("project", "region") and value not in (None, "", "None")
            }
            self.pipeline_options = {**extra, **self.pipeline_options, "detach": True}
        self.log.info(
            "launching %s %s %s with runner %s (deferrable=%s)",
            self.py_interpreter,
            " ".join(self.py_options),
            self.py_file,
            self.runner,
            self.deferrable,
        )
        if self.on_dataflow:
            return super().execute(context)
        with ChildResources() as used:
            result = super().execute(context)
        self.log.info("local job used %s", used.figures)
        context["ti"].xcom_push(key=LOCAL_RESOURCES_KEY, value=used.figures)
        return result


class ChildResources:
    """CPU seconds (user + system) and peak resident memory of the child processes that end inside the block.

    A local runner's job is the launcher's child process (and its workers), so this is the job's
    cost in the units a machine is billed by. Peak memory is ``ru_maxrss`` of the children: a
    high-water mark over every child this process has waited for, so it is the job's own only when
    it rose inside the block. A worker runs each task in a process of its own, where it always
    does; where one process runs several tasks (``dag.test``) a job smaller than an earlier one
    gets None rather than the earlier job's figure.
    """

    def __enter__(self) -> ChildResources:
        import resource

        self._start = resource.getrusage(resource.RUSAGE_CHILDREN)
        self.figures: dict[str, float] = {}
        return self

    def __exit__(self, *exc: object) -> None:
        import resource

        end = resource.getrusage(resource.RUSAGE_CHILDREN)
        cpu = (end.ru_utime - self._start.ru_utime) + (end.ru_stime - self._start.ru_stime)
        # ru_maxrss is in KiB on Linux.
        peak = round(end.ru_maxrss / 1024, 1) if end.ru_maxrss > self._start.ru_maxrss else None
        self.figures = {"cpu_seconds": round(cpu, 3), "peak_memory_mb": peak}


class InputFilesSensor(BaseSensorOperator):
    """Waits until the night's input (a local or gs:// glob) is complete by the plan's rule.

    ``rule`` (the param ``input_ready``): ``settled``, the matching files' count and sizes unchanged
    for ``settle_minutes`` (read from the store's change times, so nothing has to survive between
    pokes); ``marker``, the ``marker`` object beside the files exists; ``any``, one file matches.
    Runs in reschedule mode (no worker slot held between pokes), poking at least twice per settle
    window. ``wait_minutes`` is templated: 0 fails at once when the input is not ready (backfilling
    old dates, whose files settled long ago), the default waits for late uploads. A timeout ends in a
    failure that says which glob and why, and is not retried. Returns (XCom) which rule let the run
    start and how many files and bytes it saw.
    """

    template_fields: Sequence[str] = ("pattern", "wait_minutes", "rule", "settle_minutes", "marker")

    def __init__(
        self,
        *,
        pattern: str,
        wait_minutes: int | str = 360,
        rule: str = "settled",
        settle_minutes: float | str = 10,
        marker: str | None = None,
        gcp_conn_id: str = "google_cloud_default",
        clock: Callable[[], float] = time.time,
        **kwargs: Any,
    ) -> None:
        kwargs.setdefault("mode", "reschedule")
        kwargs.setdefault("poke_interval", 300)
        super().__init__(**kwargs)
        self.pattern = pattern
        self.wait_minutes = wait_minutes
        self.rule = rule
        self.settle_minutes = settle_minutes
        self.marker = marker
        self.gcp_conn_id = gcp_conn_id
        self.clock = clock
        self.last_reason = "not looked yet"

    def poke(self, context: Any) -> PokeReturnValue:
        marker = self.marker if self.marker not in (None, "", "None") else None
        seen = snapshot(self.pattern, marker if self.rule == "marker" else None, self.gcp_conn_id)
        ready, self.last_reason = input_verdict(self.rule, seen, float(self.settle_minutes), self.clock(), marker)
        self.log.info("input %s (rule %s): %s", self.pattern, self.rule, self.last_reason)
        record = input_ready_record(self.rule, seen, marker, self.last_reason) if ready else None
        return PokeReturnValue(is_done=ready, xcom_value=record)

    def execute(self, context: Any):
        self.timeout = max(float(self.wait_minutes), 0.0) * 60
        if self.rule == "settled":
            # Twice per settle window, so a quiet input is seen within half a window of settling.
            self.poke_interval = max(1.0, min(float(self.poke_interval), float(self.settle_minutes) * 30))
        try:
            return super().execute(context)
        except AirflowSensorTimeout as exc:
            raise AirflowSensorTimeout(
                f"no input: {self.pattern!r} was not ready by rule {self.rule!r} after waiting "
                f"{float(self.wait_minutes):g} minute(s): {self.last_reason}. Have the night's images landed? ({exc})"
            ) from exc
