"""Stress the extraction job's accounting: many runs over many tiny non-image files, count mismatches.

    python scripts/stress_accounting.py [--runs 50] [--files 20000] [--fresh] [--busy 0]

Every file is a failure (not an image), so each run exercises listing, the shuffle
(Distinct), the decode step's failure output, the counts and the commit check. A run
whose commit finds ``inputs != embedded + failed`` exits non-zero with "accounting
mismatch"; this prints each run's outcome and the total. ``--fresh`` writes a new folder
for every run (the one mismatch seen so far was on a freshly written folder);
``--busy N`` keeps N busy-looping processes running beside the job (CPU contention).
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


def main() -> int:
    parser = argparse.ArgumentParser()
    parser.add_argument("--runs", type=int, default=50)
    parser.add_argument("--files", type=int, default=20_000)
    parser.add_argument("--fresh", action="store_true")
    parser.add_argument("--busy", type=int, default=0)
    parser.add_argument("--job_args", default="", help="extra flags for the job, space separated")
    args = parser.parse_args()
    print(f"CPU: {cpu_flags()}", flush=True)
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
            found = re.search(r"accounting mismatch: [^\n;]*", proc.stderr)
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
