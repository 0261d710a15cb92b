"""Helpers shared by the benchmark scripts: run a command, report wall time and peak RSS."""

from __future__ import annotations

import os
import subprocess
import sys

# Runs the command as a child of a fresh interpreter, so RUSAGE_CHILDREN's peak RSS is the command's own.
RSS_WRAPPER = (
    "import resource, subprocess, sys, time\n"
    "t = time.perf_counter(); rc = subprocess.run(sys.argv[1:]).returncode\n"
    "print('BENCH', rc, time.perf_counter() - t, resource.getrusage(resource.RUSAGE_CHILDREN).ru_maxrss)\n"
)


def run_measured(cmd: list[str], cwd: str) -> tuple[float, float, str]:
    """Run ``cmd``; returns (wall seconds, peak RSS in MB, its stdout). Exits with its stderr if it fails."""
    proc = subprocess.run([sys.executable, "-c", RSS_WRAPPER, *cmd], capture_output=True, text=True, cwd=cwd)
    line = [ln for ln in proc.stdout.splitlines() if ln.startswith("BENCH")]
    if proc.returncode or not line or line[-1].split()[1] != "0":
        sys.stderr.write(proc.stderr[-4000:])
        raise SystemExit(f"failed: {' '.join(cmd)}")
    _, _, wall, rss_kb = line[-1].split()
    return float(wall), int(rss_kb) / 1024, proc.stdout


def cpu_flags() -> str:
    """The CPU a figure was measured on: model, cores and the vector/matrix extensions that decide speed."""
    from beam_jobs.extract_embeddings.engines import cpu_features, cpu_model

    return f"{cpu_model()}; {os.cpu_count()} cores; flags: " + (" ".join(cpu_features()) or "none of AVX2/AVX-512/AMX")


def extraction_command(input_glob: str, output: str, run_id: str, *extra: str) -> list[str]:
    """The extraction job as a user runs it (random weights: the same compute as ImageNet's)."""
    return [
        sys.executable, "-m", "beam_jobs.extract_embeddings", "--input", input_glob, "--output", output,
        "--weights", "random", "--run_id", run_id, *extra,
    ]  # fmt: skip
