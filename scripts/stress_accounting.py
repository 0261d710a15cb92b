"""Stress the extraction job's accounting: many runs over many tiny non-image files, count mismatches.

    python scripts/stress_accounting.py [--runs 50] [--files 20000] [--fresh] [--busy 0]

Every file is a failure (not an image), so each run exercises listing, the shuffle
(Distinct until issue 16's batched listing, a Reshuffle of URI batches since), the decode
step's failure output, the counts and the commit check. A run whose commit finds
``inputs != embedded + failed`` exits non-zero with "accounting mismatch"; this prints
each run's outcome and the total. ``--fresh`` writes a new folder for every run (the one
mismatch seen so far was on a freshly written folder); ``--busy N`` keeps N busy-looping
processes running beside the job (CPU contention).

``--stages`` runs, instead of the whole job in a subprocess, only the stages where the
loss was seen, in this process and without the model: the local listing, its
shuffle and the decode step (our DoFn, or with ``--stages plain`` a Map that tags every
URI as failed, to tell our code from Beam's), on FnApiRunner multi_threading with two
workers (``--running_mode in_memory`` to compare), counting what comes out of each. The runs take
the jobs' own options (``beam_jobs.runtime``: no time-based flush); ``--time_flush_ms 1000`` puts
Beam's default flush back, the race that lost the URIs (a shorter period shows it sooner). A run of
20,000 files takes ~10 s without the model; the losses seen so far came in runs slowed by contention.
"""

from __future__ import annotations

import argparse
import multiprocessing
import os
import re
import shutil
import subprocess
import sys
import tempfile
import time

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
sys.path.insert(0, ROOT)

from scripts.benchutil import cpu_flags, extraction_command  # noqa: E402


def _spin() -> None:
    while True:
        pass


def write_files(folder: str, count: int) -> None:
    os.makedirs(folder, exist_ok=True)
    for i in range(count):
        with open(os.path.join(folder, f"f{i:06d}.jpg"), "wb") as handle:
            handle.write(b"not an image %d" % i)


def _record(count: int, path: str) -> None:
    with open(path, "w") as handle:
        handle.write(str(count))


def run_stages(folder: str, decode: str, mode: str = "multi_threading", time_flush_ms: int = 0) -> dict[str, int]:
    """listing -> shuffle -> decode (ours or a plain Map), counted at each step, in this process.

    The options come from the jobs' own ``runtime.pipeline_options`` (size-only flushing);
    ``time_flush_ms`` > 0 puts Beam's time-based flush back with that period (Beam's default: 1000).
    """
    import apache_beam as beam
    from apache_beam.runners.portability.fn_api_runner import worker_handlers

    from beam_jobs.contract import ResizeMode
    from beam_jobs.extract_embeddings.decode import FAILURES_TAG, DecodeImages, DecodeParams
    from beam_jobs.extract_embeddings.inputs import ReadImageURIs
    from beam_jobs.runtime import pipeline_options

    counts_dir = tempfile.mkdtemp(prefix="counts-")
    options = pipeline_options(["--runner=FnApiRunner", f"--direct_running_mode={mode}", "--direct_num_workers=2"])
    if time_flush_ms:
        worker_handlers.DATA_BUFFER_TIME_LIMIT_MS = time_flush_ms
    with beam.Pipeline(options=options) as p:
        read = p | ReadImageURIs(os.path.join(folder, "*"))
        if decode == "ours":
            out = read["uris"] | DecodeImages(DecodeParams((224, 224), ResizeMode.CENTER_CROP, 10_000_000), "stress")
            images, failed = out.images, out[FAILURES_TAG]
        else:
            out = read["uris"] | "Tag" >> beam.Map(lambda uri: beam.pvalue.TaggedOutput("failed", uri)).with_outputs(
                "failed", main="images"
            )
            images, failed = out.images, out.failed
        listed = read["listed"] | "Count_listed" >> beam.CombineGlobally(sum)
        _ = listed | "Keep_listed" >> beam.Map(_record, os.path.join(counts_dir, "listed"))
        for name, pcoll in (
            ("inputs", read["uris"]),
            ("decoded", images),
            ("failed", failed),
        ):
            _ = (
                pcoll
                | f"Count_{name}" >> beam.combiners.Count.Globally()
                | f"Keep_{name}" >> beam.Map(_record, os.path.join(counts_dir, name))
            )
    counts = {}
    for name in os.listdir(counts_dir):
        with open(os.path.join(counts_dir, name)) as handle:
            counts[name] = int(handle.read())
    shutil.rmtree(counts_dir)
    return counts


def main_stages(args) -> int:
    work = tempfile.mkdtemp(prefix="stress-stages-")
    spinners = [multiprocessing.Process(target=_spin, daemon=True) for _ in range(args.busy)]
    for proc in spinners:
        proc.start()
    mismatches, seconds = 0, []
    try:
        folder = os.path.join(work, "images")
        write_files(folder, args.files)
        for run in range(args.runs):
            if args.fresh and run:
                shutil.rmtree(folder)
                folder = os.path.join(work, f"images-{run}")
                write_files(folder, args.files)
            start = time.perf_counter()
            counts = run_stages(folder, args.stages, args.running_mode, args.time_flush_ms)
            seconds.append(time.perf_counter() - start)
            want = {"listed": args.files, "inputs": args.files, "decoded": 0, "failed": args.files}
            exact = counts == want
            mismatches += not exact
            print(f"run {run + 1:3d}/{args.runs}: {seconds[-1]:5.1f}s {'exact' if exact else counts}", flush=True)
    finally:
        for proc in spinners:
            proc.terminate()
        shutil.rmtree(work, ignore_errors=True)
    print(
        f"{args.runs} stage runs ({args.stages} decode, {args.running_mode}, "
        f"time flush: {args.time_flush_ms or 'off'} ms) of {args.files} files "
        f"(fresh folders: {args.fresh}, "
        f"busy processes: {args.busy}): {mismatches} mismatches; median {sorted(seconds)[len(seconds) // 2]:.1f}s"
    )
    return 1 if mismatches else 0


def main() -> int:
    parser = argparse.ArgumentParser()
    parser.add_argument("--runs", type=int, default=50)
    parser.add_argument("--files", type=int, default=20_000)
    parser.add_argument("--fresh", action="store_true")
    parser.add_argument("--busy", type=int, default=0)
    parser.add_argument("--job_args", default="", help="extra flags for the job, space separated")
    parser.add_argument("--stages", choices=["ours", "plain"], help="only listing, its shuffle and decode, in process")
    parser.add_argument(
        "--running_mode", default="multi_threading", choices=["multi_threading", "in_memory"], help="with --stages"
    )
    parser.add_argument(
        "--time_flush_ms",
        type=int,
        default=0,
        help="with --stages: put Beam's racy time-based flush back with this period (Beam's default 1000)",
    )
    args = parser.parse_args()
    print(f"CPU: {cpu_flags()}", flush=True)
    if args.stages:
        return main_stages(args)
    work = tempfile.mkdtemp(prefix="stress-accounting-")
    spinners = [multiprocessing.Process(target=_spin, daemon=True) for _ in range(args.busy)]
    for proc in spinners:
        proc.start()
    mismatches, failures, seconds = 0, 0, []
    try:
        folder = os.path.join(work, "images")
        write_files(folder, args.files)
        for run in range(args.runs):
            if args.fresh and run:
                shutil.rmtree(folder)
                folder = os.path.join(work, f"images-{run}")
                write_files(folder, args.files)
            out = os.path.join(work, "out", "ds=2026-11-20")
            cmd = extraction_command(os.path.join(folder, "*"), out, f"stress-{run}", *args.job_args.split())
            start = time.perf_counter()
            proc = subprocess.run(
                cmd, capture_output=True, text=True, cwd=ROOT, env={**os.environ, "TF_CPP_MIN_LOG_LEVEL": "2"}
            )
            seconds.append(time.perf_counter() - start)
            found = re.search(r"(accounting|listing) mismatch: [^\n;]*", proc.stderr)
            if found:
                mismatches += 1
                outcome = found.group(0)
            elif proc.returncode:
                failures += 1
                outcome = f"failed (exit {proc.returncode}): {proc.stderr.strip().splitlines()[-1][:200]}"
            else:
                outcome = "exact"
            print(f"run {run + 1:3d}/{args.runs}: {seconds[-1]:5.1f}s {outcome}", flush=True)
    finally:
        for proc in spinners:
            proc.terminate()
        shutil.rmtree(work, ignore_errors=True)
    print(
        f"{args.runs} runs of {args.files} files (fresh folders: {args.fresh}, busy processes: {args.busy}): "
        f"{mismatches} accounting mismatches, {failures} other failures; "
        f"median {sorted(seconds)[len(seconds) // 2]:.1f}s per run"
    )
    return 1 if mismatches or failures else 0


if __name__ == "__main__":
    raise SystemExit(main())
