"""beam_jobs.runtime: the local runner options both jobs use.

The commit step and the run skeleton are tested with storage (tests/test_storage.py); here, that a run
first removes what a killed run (another run id, a process that is gone) left beside its output.
"""

from __future__ import annotations

import os
import subprocess
import sys

import apache_beam as beam
from apache_beam.options.pipeline_options import DirectOptions


def test_local_runs_flush_their_data_streams_on_size_only(monkeypatch):
    """The jobs' local options turn off Beam's time-based flush, whose timer thread loses elements.

    scripts/beam_flush_race.py shows the race itself (a short period hangs or corrupts most runs);
    here: every data stream of a real multi-threaded run gets the jobs' period, and the run is exact.
    """
    from apache_beam.runners.portability.fn_api_runner import worker_handlers
    from apache_beam.runners.worker import data_plane
    from apache_beam.testing.util import assert_that, equal_to

    from beam_jobs.runtime import LOCAL_TIME_FLUSH_MS, pipeline_options

    monkeypatch.setattr(worker_handlers, "DATA_BUFFER_TIME_LIMIT_MS", 1000)  # Beam's default, restored after
    periods = []
    beams_init = data_plane.TimeBasedBufferingClosableOutputStream.__init__

    def observed_init(self, *args, **kwargs):
        periods.append(kwargs.get("time_flush_threshold_ms"))
        beams_init(self, *args, **kwargs)

    monkeypatch.setattr(data_plane.TimeBasedBufferingClosableOutputStream, "__init__", observed_init)
    options = pipeline_options(["--runner=FnApiRunner"])
    assert options.view_as(DirectOptions).direct_running_mode == "multi_threading"
    assert worker_handlers.DATA_BUFFER_TIME_LIMIT_MS == LOCAL_TIME_FLUSH_MS
    with beam.Pipeline(options=options) as p:
        n = 5000
        counted = p | beam.Create(["x"]) | beam.FlatMap(lambda _: (f"/i/{j}.jpg" for j in range(n))) | beam.Distinct()
        assert_that(counted | beam.combiners.Count.Globally(), equal_to([n]))
    assert periods, "no gRPC data stream: the run did not use the multi-threaded runner"
    assert set(periods) == {LOCAL_TIME_FLUSH_MS}


def test_a_run_first_removes_the_folder_a_killed_run_of_another_run_id_left(tmp_path):
    """The owner (host and pid) in a staging folder's name: gone, its folder goes before this run starts."""
    from apache_beam.options.pipeline_options import PipelineOptions

    from beam_jobs import publish
    from beam_jobs.config import JobConfig
    from beam_jobs.runtime import Commit, run_job

    gone = subprocess.Popen([sys.executable, "-c", "pass"])
    gone.wait()
    out = tmp_path / "ds=2026-11-20"
    mine = publish.staging_dir_for(str(out), publish.run_token("killed-run"))
    killed = mine.removesuffix(f"-{os.getpid()}") + f"-{gone.pid}"
    os.makedirs(killed)
    open(os.path.join(killed, "part-0.parquet"), "w").close()
    cfg = JobConfig(output=str(out), run_id="next-run")

    def build(p, staging):
        _ = p | "Commit" >> Commit("test_job", cfg, staging, lambda staging, seconds: {})

    manifest = run_job("test_job", cfg, PipelineOptions(["--runner=FnApiRunner"]), build)
    assert manifest["run_id"] == "next-run"
    assert os.listdir(tmp_path) == [out.name]
