"""Run a nightly job as one pipeline step: ``python -m beam_jobs.<job>``, and on Dataflow wait for it.

The Kubeflow pipeline's steps run in the worker image, where the Beam provider
that launches the jobs for Airflow is not installed. This module does the same
launch: the job's flags from the plan (the DAG's ``pipeline_options``) rendered
the way the provider renders them, the same module, the same interpreter.

On DataflowRunner the launcher submits with ``--detach`` (as the DAG's Beam
tasks do), the job id is read from Beam's "Created job with id: [...]" line,
and the step polls the job until it ends: ``JOB_STATE_DONE`` passes, any other
end state fails the step. Stopping the step (SIGTERM, what Kubernetes sends when
a run is cancelled or a pod is deleted) cancels the Dataflow job first, so
nothing keeps running, and billing, behind the orchestrator's back.
Standard library only at module level; the Dataflow client is imported when used.
"""

from __future__ import annotations

import json
import logging
import re
import signal
import subprocess
import sys
import time
import uuid
from collections import deque
from collections.abc import Callable
from typing import Any, Protocol

from beam_jobs.contract import DATAFLOW_RUNNER, JOB_EXTRACT, JOB_INDEX, JOB_REDUCE

LOG = logging.getLogger(__name__)
JOB_ID_LINE = re.compile(r"Created job with id: \[([^\]]+)\]")
DONE = "JOB_STATE_DONE"
# States a batch job does not leave; only DONE means the outputs were committed.
END_STATES = frozenset({DONE, "JOB_STATE_FAILED", "JOB_STATE_CANCELLED", "JOB_STATE_DRAINED", "JOB_STATE_UPDATED"})
POLL_SECONDS = 30.0
# Consecutive failed state reads (API hiccups) tolerated before the step gives up on the job.
MAX_POLL_ERRORS = 10


class JobFailed(RuntimeError):
    """The job's launcher exited non-zero, or its Dataflow job ended in a state other than DONE."""


class StepStopped(RuntimeError):
    """The step was asked to stop (SIGTERM) while its job ran."""


class DataflowJobs(Protocol):
    def state(self, job_id: str) -> str: ...

    def cancel(self, job_id: str) -> None: ...


class DataflowApi:
    """Job state and cancellation through the Dataflow API (google-cloud-dataflow-client, a Beam[gcp] need)."""

    def __init__(self, project: str, region: str) -> None:
        from google.cloud import dataflow_v1beta3

        self._api = dataflow_v1beta3
        self._client = dataflow_v1beta3.JobsV1Beta3Client()
        self.project, self.region = project, region

    def _where(self, job_id: str) -> dict[str, str]:
        return {"project_id": self.project, "location": self.region, "job_id": job_id}

    def state(self, job_id: str) -> str:
        job = self._client.get_job(request=self._where(job_id))
        return self._api.JobState(job.current_state).name

    def cancel(self, job_id: str) -> None:
        cancelled = self._api.Job(requested_state=self._api.JobState.JOB_STATE_CANCELLED)
        self._client.update_job(request={**self._where(job_id), "job": cancelled})


def options_to_args(options: dict[str, Any]) -> list[str]:
    """Flags the way Airflow's Beam provider renders ``pipeline_options``: True -> ``--k``, False and None
    dropped, lists repeated, dicts as JSON, anything else ``--k=value``."""
    args: list[str] = []
    for name, value in options.items():
        if isinstance(value, bool):
            if value:
                args.append(f"--{name}")
        elif isinstance(value, list):
            args.extend(f"--{name}={item}" for item in value)
        elif isinstance(value, dict):
            args.append(f"--{name}={json.dumps(value)}")
        elif value is not None:
            args.append(f"--{name}={value}")
    return args


def extract_options(plan: dict[str, Any]) -> dict[str, Any]:
    """The extraction job's flags for a plan: what the DAG's ``extract_embeddings`` task passes."""
    keys = ("model", "weights", "engine", "precision", "batch_size")
    return {
        "input": plan["input"],
        "output": plan["embeddings_dir"],
        **{key: plan[key] for key in keys},
        "skip_known": bool(plan.get("skip_known", True)),
        "run_id": plan["run_id"],
    }


def reduction_options(
    plan: dict[str, Any],
    reduction: dict[str, Any],
    model_ids: dict[str, str],
    html_points: int,
    thumbnail_budget_mb: float,
    mosaic_grid: int,
) -> dict[str, Any]:
    """The reduce job's flags for one of the plan's ``reductions`` (a model and a method), ``model_ids`` being
    each model's from the extraction (the reduction's picks its rows out of a several-model partition): what
    the DAG's mapped reduce task and the Kubeflow reduce step pass."""
    # The saved frame (reference_policy) is the primary model's: another model's vectors have another
    # model_id and length, which a reference refuses; its maps refit every night.
    primary = reduction["model"] == (plan.get("models") or [reduction["model"]])[0]
    method, model_id = reduction["method"], model_ids[reduction["model"]]
    options = {
        "input": plan["embeddings_dir"],
        "output": reduction["dir"],
        "method": method,
        "html_points": html_points,
        "thumbnail_budget_mb": thumbnail_budget_mb,
        "mosaic_grid": mosaic_grid,
        "reference": (plan.get("references") or {}).get(method, "") if primary else "",
        "fit_reference": bool(plan.get("fit_reference", False)) and primary,
        "fit_window_days": plan.get("reference_window_days", 1),
        "run_id": plan["run_id"],
    }
    if model_id:
        options["model_id"] = model_id
    return options


def index_options(plan: dict[str, Any], model_id: str | None = None) -> dict[str, Any]:
    """The index job's flags for a plan: what the DAG's ``build_index`` task passes (``model_id``: the
    primary model's, which a several-model partition needs named)."""
    options = {
        "input": plan["embeddings_dir"],
        "output": plan["index_dir"],
        "window_days": plan["index_window_days"],
        "duplicate_threshold": plan["duplicate_threshold"],
        "run_id": plan["run_id"],
    }
    if model_id:
        options["model_id"] = model_id
    return options


def job_command(job: str, options: dict[str, Any], plan: dict[str, Any], step: str) -> list[str]:
    """``python -m beam_jobs.<job>`` with the job's flags, the runner and, on Dataflow, the plan's Dataflow
    options, a job name and ``--detach``."""
    if job not in (JOB_EXTRACT, JOB_REDUCE, JOB_INDEX):
        raise ValueError(f"unknown job {job!r}")
    flags = {**options, "runner": plan["runner"]}
    if plan["runner"] == DATAFLOW_RUNNER:
        # Dataflow job names: lowercase letters, digits and hyphens; the suffix keeps re-runs distinct.
        name = f"image-embeddings-{step}-{plan['ds'].replace('-', '')}-{uuid.uuid4().hex[:8]}"
        flags = {**(plan["dataflow"] or {}), **flags, "job_name": re.sub(r"[^a-z0-9-]", "-", name.lower())}
        flags["detach"] = True
    return [sys.executable, "-m", f"beam_jobs.{job}", *options_to_args(flags)]


def gcp_resources(project: str, region: str, job_id: str) -> str:
    """The job as Google Cloud Pipeline Components' ``gcp_resources`` (Vertex AI links the job from it)."""
    uri = f"https://dataflow.googleapis.com/v1b3/projects/{project}/locations/{region}/jobs/{job_id}"
    return json.dumps({"resources": [{"resourceType": "DataflowJob", "resourceUri": uri}]})


def wait_for_job(
    jobs: DataflowJobs,
    job_id: str,
    poll_s: float = POLL_SECONDS,
    max_errors: int = MAX_POLL_ERRORS,
    sleep: Callable[[float], None] = time.sleep,
) -> str:
    """Poll ``job_id`` until it ends; returns DONE or raises JobFailed with the end state."""
    errors = 0
    while True:
        try:
            state = jobs.state(job_id)
            errors = 0
        except Exception as exc:  # any API error: retried, then reported with the last one
            errors += 1
            LOG.warning("reading the state of Dataflow job %s failed (%d/%d): %s", job_id, errors, max_errors, exc)
            if errors >= max_errors:
                raise JobFailed(f"could not read the state of Dataflow job {job_id}: {exc}") from exc
            sleep(poll_s)
            continue
        if state == DONE:
            return state
        if state in END_STATES:
            raise JobFailed(f"Dataflow job {job_id} ended in {state}")
        LOG.info("Dataflow job %s: %s", job_id, state)
        sleep(poll_s)


def _stop(signum: int, _frame: Any) -> None:
    raise StepStopped(f"stopped by signal {signum}")


def run_step(
    command: list[str],
    plan: dict[str, Any],
    on_job_id: Callable[[str], None] | None = None,
    jobs: DataflowJobs | None = None,
    poll_s: float = POLL_SECONDS,
) -> dict[str, Any]:
    """Run ``command`` (from ``job_command``) and, on Dataflow, wait for its job; returns the job's id and end
    state (empty for a local runner). The launcher's output is passed through; on failure its last lines are
    in the error. ``on_job_id`` is called as soon as a Dataflow job id is known."""
    dataflow = plan["runner"] == DATAFLOW_RUNNER
    job_id: str | None = None
    tail: deque[str] = deque(maxlen=40)
    previous = signal.signal(signal.SIGTERM, _stop)
    proc = subprocess.Popen(command, stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True, bufsize=1)
    try:
        try:
            for line in proc.stdout or ():
                sys.stdout.write(line)
                tail.append(line)
                found = JOB_ID_LINE.search(line)
                if found and job_id is None:
                    job_id = found.group(1)
                    if on_job_id:
                        on_job_id(job_id)
            code = proc.wait()
        finally:
            if proc.poll() is None:
                proc.terminate()
                proc.wait(timeout=60)
        if code != 0:
            raise JobFailed(f"{' '.join(command[:3])} exited with status {code}:\n{''.join(tail)}")
        if not dataflow:
            return {}
        if not job_id:
            raise JobFailed(f"the launcher printed no Dataflow job id:\n{''.join(tail)}")
        settings = plan["dataflow"] or {}
        jobs = jobs or DataflowApi(settings["project"], settings["region"])
        return {"job_id": job_id, "state": wait_for_job(jobs, job_id, poll_s)}
    except StepStopped:
        if job_id:
            LOG.warning("step stopped: cancelling Dataflow job %s", job_id)
            settings = plan["dataflow"] or {}
            (jobs or DataflowApi(settings["project"], settings["region"])).cancel(job_id)
        raise
    finally:
        signal.signal(signal.SIGTERM, previous)
