"""--skip_known benchmark: a night where most images were embedded before, with and without the skip.

    python scripts/bench_skip_known.py [--n 200] [--seen 0.8] [--model resnet50] [--rounds 2]

Night 1 embeds N images (with --skip_known, so it is what a nightly run leaves behind).
Night 2 has N images of which a share ``--seen`` are night 1's files again under new names
and the rest new; it runs end to end (`python -m beam_jobs.extract_embeddings` as a
subprocess) without and with --skip_known, alternating, ``--rounds`` times each. Prints the
CPU, wall times, the speed-up, and checks that the reused vectors equal night 1's bit for bit.
Not a test: figures vary with the machine's load; the fixed start-up (imports, model load)
is paid by both, so the speed-up grows with N.
"""

from __future__ import annotations

import argparse
import glob
import json
import os
import shutil
import statistics
import sys
import tempfile

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
sys.path.insert(0, ROOT)

from devtools.samples import SampleSpec, build_sample_images  # noqa: E402
from scripts.benchutil import cpu_flags, extraction_command, run_measured  # noqa: E402


def make_nights(work: str, n: int, seen: float) -> tuple[str, str]:
    pool = os.path.join(work, "pool")
    new = n - round(n * seen)
    build_sample_images(pool, SampleSpec(n=n + new, seed=11, min_mp=0.3, max_mp=3.0))
    files = sorted(glob.glob(os.path.join(pool, "*")))
    night1, night2 = os.path.join(work, "images", "ds=2026-11-20"), os.path.join(work, "images", "ds=2026-11-21")
    os.makedirs(night1)
    os.makedirs(night2)
    for f in files[:n]:
        shutil.copy(f, night1)
    for i, f in enumerate(files[: n - new]):
        shutil.copy(f, os.path.join(night2, f"seen_{i:05d}{os.path.splitext(f)[1]}"))
    for f in files[n : n + new]:
        shutil.copy(f, night2)
    return night1, night2


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--n", type=int, default=200, help="images per night")
    parser.add_argument("--seen", type=float, default=0.8, help="share of night 2's images seen on night 1")
    parser.add_argument("--model", default="resnet50")
    parser.add_argument("--rounds", type=int, default=2)
    args = parser.parse_args()
    print(f"CPU: {cpu_flags()}; load average {os.getloadavg()[0]:.1f}")
    work = tempfile.mkdtemp(prefix="bench-skip-known-")
    try:
        night1, night2 = make_nights(work, args.n, args.seen)
        out = os.path.join(work, "out", "embeddings")
        extra = ("--model", args.model, "--skip_known")
        first = extraction_command(f"{night1}/*", f"{out}/ds=2026-11-20", "night1", *extra)
        wall1, _, _ = run_measured(first, ROOT)
        print(f"night 1: {args.n} images embedded in {wall1:.1f} s")
        times: dict[str, list[float]] = {"without --skip_known": [], "with --skip_known": []}
        manifest = {}
        for _ in range(args.rounds):
            for label, flags in (("without --skip_known", ()), ("with --skip_known", ("--skip_known",))):
                cmd = extraction_command(f"{night2}/*", f"{out}/ds=2026-11-21", "night2", "--model", args.model, *flags)
                wall, _rss, _ = run_measured(cmd, ROOT)
                times[label].append(wall)
                with open(f"{out}/ds=2026-11-21/manifest.json") as handle:
                    manifest[label] = json.load(handle)
        print(f"night 2: {args.n} images, {args.seen:.0%} seen on night 1, model {args.model}, {args.rounds} round(s)")
        print(f"{'run':24} {'median s':>9} {'runs s':>20} {'reused':>7} {'computed':>9}")
        for label, walls in times.items():
            m = manifest[label]
            shown = " ".join(f"{w:.1f}" for w in walls)
            print(
                f"{label:24} {statistics.median(walls):9.1f} {shown:>20} {m.get('reused', 0):7d} "
                f"{m.get('computed', m['embedded']):9d}"
            )
        speedup = statistics.median(times["without --skip_known"]) / statistics.median(times["with --skip_known"])
        print(f"speed-up end to end: {speedup:.2f}x")
    finally:
        shutil.rmtree(work, ignore_errors=True)


if __name__ == "__main__":
    main()
