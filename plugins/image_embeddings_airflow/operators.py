"""Operators of the nightly DAG: a runner-aware Beam launcher and a sensor for the night's images."""

from __future__ import annotations

import sys
from collections.abc import Sequence
from typing import Any

from airflow.providers.apache.beam.operators.beam import BeamRunPythonPipelineOperator
from airflow.providers.google.cloud.operators.dataflow import DataflowConfiguration
from airflow.providers.google.cloud.triggers.dataflow import DataflowJobStateCompleteTrigger
from airflow.sdk import BaseSensorOperator
from airflow.sdk.exceptions import AirflowSensorTimeout

from image_embeddings_airflow.dataflow import CancellingJobStateCompleteTrigger, is_dataflow
from image_embeddings_airflow.paths import count_matching


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
        return super().execute(context)


class InputFilesSensor(BaseSensorOperator):
    """Waits until the night's input glob (local or gs://) matches at least ``min_files`` files.

    Runs in reschedule mode (no worker slot held between pokes). ``wait_minutes``
    is templated so a run can choose: 0 fails at once when nothing is there
    (backfilling old dates), the default waits for late uploads. A timeout ends in
    a failure that says which glob was empty, and is not retried.
    """

    template_fields: Sequence[str] = ("pattern", "wait_minutes")

    def __init__(
        self,
        *,
        pattern: str,
        wait_minutes: int | str = 360,
        min_files: int = 1,
        gcp_conn_id: str = "google_cloud_default",
        **kwargs: Any,
    ) -> None:
        kwargs.setdefault("mode", "reschedule")
        kwargs.setdefault("poke_interval", 300)
        super().__init__(**kwargs)
        self.pattern = pattern
        self.wait_minutes = wait_minutes
        self.min_files = min_files
        self.gcp_conn_id = gcp_conn_id

    def poke(self, context: Any) -> bool:
        found = count_matching(self.pattern, self.gcp_conn_id, limit=max(self.min_files, 1))
        self.log.info("%d file(s) match %s (need %d)", found, self.pattern, self.min_files)
        return found >= self.min_files

    def execute(self, context: Any):
        self.timeout = max(float(self.wait_minutes), 0.0) * 60
        try:
            return super().execute(context)
        except AirflowSensorTimeout as exc:
            raise AirflowSensorTimeout(
                f"no input: {self.pattern!r} matched fewer than {self.min_files} file(s) after waiting "
                f"{float(self.wait_minutes):g} minute(s). Have the night's images landed? ({exc})"
            ) from exc
