"""What both Beam jobs share around their graphs: one run skeleton and one commit step.

A job module parses its config, does its I/O checks, then hands ``run_job`` a
function that wires the graph. The graph ends in ``Commit``: once every output
file is final it checks the job's accounting, writes ``manifest.json`` into the
staging directory and swaps that directory in for ``--output`` whole
(``publish.replace_directory``). A job that fails anywhere before that leaves
the previous output untouched.
"""

from __future__ import annotations

import json
import logging
import os
import time
from collections.abc import Callable
from typing import Any

import apache_beam as beam
from apache_beam.metrics.metric import MetricsFilter
from apache_beam.options.pipeline_options import DirectOptions, PipelineOptions, StandardOptions

from beam_jobs import publish, storage
from beam_jobs.config import ConfigError, JobConfig, UsageError
from beam_jobs.contract import MANIFEST

LOG = logging.getLogger(__name__)

LOCAL_RUNNERS = {"FnApiRunner", "DirectRunner", "BundleBasedDirectRunner", "SwitchingDirectRunner"}

# Beam's local runner (2.77) sends data between its threads through buffers that a timer thread also
# flushes every second (worker_handlers.DATA_BUFFER_TIME_LIMIT_MS). That flush reads and clears the
# buffer without the lock the writing thread would need: bytes written in between are lost, and a flush
# in the middle of an element corrupts the stream ("Invalid PaneInfoEncoding", a hang or a crash).
# That is the loss seen inside Distinct (README, Reliability). Batch jobs need no time-based flush
# (Dataflow's SDK harness has none by default), so locally the buffers flush on size and at the end of
# a bundle only. 0 cannot be set (Beam reads it as "use the default"), hence a period no run reaches.
LOCAL_TIME_FLUSH_MS = 10**9  # 11.6 days


def flush_on_size_only() -> None:
    """Turn off the local runner's racy time-based flush for every run in this process."""
    from apache_beam.runners.portability.fn_api_runner import worker_handlers

    if not hasattr(worker_handlers, "DATA_BUFFER_TIME_LIMIT_MS"):
        # A Beam upgrade renamed it: fail loudly rather than run with the race back.
        raise RuntimeError("apache_beam has no worker_handlers.DATA_BUFFER_TIME_LIMIT_MS; see beam_jobs/runtime.py")
    worker_handlers.DATA_BUFFER_TIME_LIMIT_MS = LOCAL_TIME_FLUSH_MS


def pipeline_options(beam_args: list[str], running_mode: str = "multi_threading") -> PipelineOptions:
    """Beam options with local defaults that suit our jobs; explicit flags always win."""
    options = PipelineOptions(beam_args)
    std = options.view_as(StandardOptions)
    if not std.runner:
        # Beam's default DirectRunner first tries to download the Prism runner binary.
        std.runner = "FnApiRunner"
    if std.runner in LOCAL_RUNNERS:
        flush_on_size_only()
        direct = options.view_as(DirectOptions)
        given = " ".join(beam_args)
        # Two bundles in flight let one thread do I/O or decoding while the other computes;
        # extraction: 27 s -> 21 s for 200 images on 2 cores (README, performance).
        if "--direct_running_mode" not in given:
            direct.direct_running_mode = running_mode
        if "--direct_num_workers" not in given:
            direct.direct_num_workers = max(os.cpu_count() or 1, 1)
    return options


def configure_logging() -> None:
    """The jobs' ``__main__`` logging: INFO on stderr.

    INFO matters beyond readability: Airflow's Beam operator finds the Dataflow
    job id in Beam's INFO line "Created job with id: [...]" on the launcher's output.
    """
    logging.basicConfig(level=logging.INFO, format="%(asctime)s %(levelname)s %(name)s: %(message)s")


def refuse_local_detach(options: PipelineOptions, detach: bool) -> None:
    """--detach leaves the job to finish on its own: only meaningful where it runs elsewhere."""
    runner = options.view_as(StandardOptions).runner
    if detach and runner in LOCAL_RUNNERS:
        raise ConfigError(f"--detach needs a remote runner (e.g. DataflowRunner); {runner} runs in this process")


def detached(result, output: str) -> dict[str, Any]:
    """What a launcher run with --detach logs and returns: the job id; the job itself commits ``output``.

    Airflow's Dataflow sensor waits and reads the job's metrics.
    """
    job_id = result.job_id() if hasattr(result, "job_id") else None
    info = {"submitted": True, "job_id": job_id, "output": output, "state": str(result.state)}
    logging.getLogger(__name__).info("submitted, not waiting (--detach): %s", info)
    return info


def metrics_summary(result, namespace: str) -> dict[str, Any]:
    """Committed Beam metrics of this job as plain numbers (empty if the runner has none)."""
    try:
        queried = result.metrics().query(MetricsFilter().with_namespace(namespace))
    except Exception:  # noqa: BLE001 - some runners do not report metrics
        return {}
    out: dict[str, Any] = {}
    for c in queried.get("counters", []):
        out[c.key.metric.name] = out.get(c.key.metric.name, 0) + (c.committed or 0)
    for d in queried.get("distributions", []):
        v = d.committed
        if v is None or not v.count:
            continue
        out[d.key.metric.name] = {"count": v.count, "sum": v.sum, "min": v.min, "max": v.max, "mean": round(v.mean, 3)}
    return dict(sorted(out.items()))


def attach_metrics(result, output: str, namespace: str) -> tuple[dict[str, Any], dict[str, Any]]:
    """Add the finished pipeline's metrics to the committed manifest in ``output``; returns both.

    Metrics are only final once the pipeline is done, after the commit step wrote the manifest,
    so the launcher adds them afterwards.
    """
    path = storage.join(output, MANIFEST)
    manifest = storage.read_json(path)
    metrics = metrics_summary(result, namespace)
    if metrics:
        manifest["metrics"] = metrics
        storage.write_json(path, manifest)
    return manifest, metrics


# --------------------------------------------------------------------------- errors


class InputError(UsageError):
    """The input names nothing the job can process (no files, mixed models, ...)."""


# --------------------------------------------------------------------------- commit


class AccountingError(RuntimeError):
    """The outputs do not account for every input; the run must not be published."""


def utc_stamp(seconds_since_epoch: float) -> str:
    return time.strftime("%Y-%m-%dT%H:%M:%SZ", time.gmtime(seconds_since_epoch))


class _CommitFn(beam.DoFn):
    def __init__(self, job: str, cfg: JobConfig, staging: str, finish: Callable[..., dict[str, Any]]):
        self._job = job
        self._run_id = cfg.run_id
        self._output = cfg.output
        self._started_at = cfg.started_at
        self._staging = staging
        self._finish = finish

    def process(self, _, **side_values):
        # One clock reading: the manifest's seconds and the rate finish() derives from them agree.
        seconds = max(time.time() - self._started_at, 1e-9)
        try:
            body = self._finish(self._staging, seconds=seconds, **side_values)
        except AccountingError as exc:
            raise AccountingError(f"{exc}; nothing was published, {self._output} is as it was") from None
        manifest = {
            "job": self._job,
            "run_id": self._run_id,
            "output": self._output,
            **body,
            "started_at": utc_stamp(self._started_at),
            "finished_at": utc_stamp(time.time()),
            "seconds": round(seconds, 3),
        }
        storage.write_json(storage.join(self._staging, MANIFEST), manifest)
        publish.replace_directory(self._staging, self._output)
        yield manifest


class Commit(beam.PTransform):
    """Publish the staged run once every side input is final: manifest.json, then the whole swap.

    ``finish(staging, seconds=..., **side_values)`` runs once on one worker with the
    side inputs' values; it may write more files into ``staging`` (maps), raises
    ``AccountingError`` when the outputs do not add up, and returns the job's own
    manifest fields. ``job``, ``run_id``, ``output`` and the timings are added here.
    Applied to the pipeline root: ``p | "Commit" >> Commit(...)``.
    """

    def __init__(
        self,
        job: str,
        cfg: JobConfig,
        staging: str,
        finish: Callable[..., dict[str, Any]],
        **side_inputs: Any,
    ):
        super().__init__()
        self._fn = _CommitFn(job, cfg, staging, finish)
        self._side_inputs = side_inputs

    def expand(self, pbegin):
        return (
            pbegin
            | "Trigger" >> beam.Create([None])
            | "PublishManifestAndSwap" >> beam.ParDo(self._fn, **self._side_inputs)
        )


# --------------------------------------------------------------------------- run skeleton


def run_job(
    job: str,
    cfg: JobConfig,
    options: PipelineOptions,
    build: Callable[[beam.Pipeline, str], Any],
) -> dict[str, Any]:
    """Build the graph into a staging directory beside ``cfg.output``, run it and wait.

    Returns the committed manifest with the pipeline's metrics added, or, with
    ``--detach``, what was submitted. ``options`` come from ``job_options`` (called
    before the job's own I/O checks, so a bad runner flag is refused first).
    """
    token = publish.run_token(cfg.run_id)
    for step in publish.sweep_leftovers(cfg.output, token):
        LOG.warning("leftovers of an earlier run: %s", step)
    staging = publish.staging_dir_for(cfg.output, token)
    pipeline = beam.Pipeline(options=options)
    build(pipeline, staging)
    try:
        result = pipeline.run()
        if cfg.detach:
            # The job commits (or fails) on its own; the next run sweeps what a failure leaves.
            return detached(result, cfg.output)
        result.wait_until_finish()
    except BaseException:
        # A failed local run removes what it staged; the previous output was never touched.
        storage.remove_tree(staging)
        raise
    manifest, metrics = attach_metrics(result, cfg.output, job)
    LOG.info("metrics: %s", json.dumps(metrics, sort_keys=True))
    return manifest


def job_options(beam_args: list[str], detach: bool, running_mode: str = "multi_threading") -> PipelineOptions:
    options = pipeline_options(beam_args, running_mode)
    refuse_local_detach(options, detach)
    return options


def main(run: Callable[[list[str] | None], Any], argv: list[str] | None = None) -> int:
    """A job's command-line entry: exit 0, or 2 with one clear line for a usage problem (no trace)."""
    try:
        run(argv)
    except UsageError as exc:
        LOG.error("%s", exc)
        return 2
    return 0
