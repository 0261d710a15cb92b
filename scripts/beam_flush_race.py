"""Show the local runner's time-based flush race, and that the jobs' setting removes it.

    python scripts/beam_flush_race.py [--runs 10] [--elements 20000] [--periods 5,1000,jobs]

Each run is one small pipeline in a fresh interpreter (a run that hits the race can crash the
interpreter or hang): one element fans out to N distinct URIs, ``Distinct``, ``Count``, on
FnApiRunner multi_threading with two workers, as the extraction job runs locally. It is exact
(``ok``) or it is ``wrong`` (another count or a corrupt stream, e.g. "Invalid PaneInfoEncoding"),
``crash`` (a signal) or ``hang`` (no end within --timeout seconds).

``--periods`` lists the time-based flush periods to try, in ms: Beam's own default is 1000;
``jobs`` is what ``beam_jobs.runtime.pipeline_options`` sets (no time-based flush). A short
period makes the race frequent enough to see in a few runs; at 1000 ms it was seen in about 1 of
40 runs of the extraction stages under CPU contention (README, Reliability).
"""

from __future__ import annotations

import argparse
import os
import subprocess
import sys
import time

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
sys.path.insert(0, ROOT)

from scripts.benchutil import cpu_flags  # noqa: E402

CHILD = """
import sys
import apache_beam as beam
from apache_beam.runners.portability.fn_api_runner import worker_handlers
from beam_jobs.runtime import pipeline_options

period, n = sys.argv[1], int(sys.argv[2])
options = pipeline_options(["--runner=FnApiRunner", "--direct_running_mode=multi_threading", "--direct_num_workers=2"])
if period != "jobs":
    worker_handlers.DATA_BUFFER_TIME_LIMIT_MS = int(period)
with beam.Pipeline(options=options) as p:
    counted = (
        p
        | beam.Create(["x"])
        | beam.FlatMap(lambda _: (f"/data/img_{i:06d}.jpg" for i in range(n)))
        | beam.Distinct()
        | beam.combiners.Count.Globally()
    )
    counted | beam.Map(lambda c: print("COUNT", c, flush=True))
"""


def one_run(period: str, elements: int, timeout: float) -> str:
    try:
        proc = subprocess.run(
            [sys.executable, "-c", CHILD, period, str(elements)],
            capture_output=True,
            text=True,
            timeout=timeout,
            cwd=ROOT,
            env={**os.environ, "PYTHONPATH": ROOT},
        )
    except subprocess.TimeoutExpired:
        return "hang"
    if proc.returncode < 0:
        return "crash"
    counts = [line.split()[1] for line in proc.stdout.splitlines() if line.startswith("COUNT")]
    return "ok" if proc.returncode == 0 and counts == [str(elements)] else "wrong"


def main() -> int:
    parser = argparse.ArgumentParser()
    parser.add_argument("--runs", type=int, default=10)
    parser.add_argument("--elements", type=int, default=20_000)
    parser.add_argument("--periods", default="5,1000,jobs", help="comma-separated ms, or 'jobs'")
    parser.add_argument("--timeout", type=float, default=60.0)
    args = parser.parse_args()
    print(f"CPU: {cpu_flags()}", flush=True)
    bad_with_jobs_setting = 0
    for period in args.periods.split(","):
        outcomes: dict[str, int] = {}
        start = time.perf_counter()
        for _ in range(args.runs):
            outcome = one_run(period, args.elements, args.timeout)
            outcomes[outcome] = outcomes.get(outcome, 0) + 1
        label = "the jobs' setting (no time flush)" if period == "jobs" else f"time flush every {period} ms"
        summary = ", ".join(f"{k} {v}" for k, v in sorted(outcomes.items()))
        print(f"{label}: {args.runs} runs of {args.elements} URIs: {summary} ({time.perf_counter() - start:.0f}s)")
        if period == "jobs":
            bad_with_jobs_setting = args.runs - outcomes.get("ok", 0)
    return 1 if bad_with_jobs_setting else 0


if __name__ == "__main__":
    sys.exit(main())
