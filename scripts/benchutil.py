"""Helpers shared by the benchmark scripts: run a command, report wall time and peak RSS."""

from __future__ import annotations

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
