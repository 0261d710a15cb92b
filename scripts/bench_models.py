"""Several models in one pass vs one run per model: prints a table. Not a test; figures vary with load.

    python scripts/bench_models.py [--n 200] [--models mobilenet_v3_large,resnet50] [--engine auto]

On the same N sample photos (0.2-3 MP), `python -m beam_jobs.extract_embeddings` runs:

  each model alone      one job per model (what two nightly runs, or two DAGs, would cost)
  one pass              `--model a,b`: each image read and decoded once, one RunInference branch per model

Target: the one pass at most 0.9x the separate runs' summed wall time. What a pass saves is one
start-up (interpreter, Beam, TensorFlow imports) and every read and decode after the first; the
model compute is the same. The decode share is the job's own ``decode_ms`` metric (decode +
resize, summed over the workers' threads; the read is not in it) over its wall time: how much of a
run a second decode would add. Prints the CPU's model and flags first.
"""

from __future__ import annotations

import argparse
import json
import os
import sys
import tempfile

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
sys.path.insert(0, ROOT)

from devtools.samples import SampleSpec, build_sample_images  # noqa: E402
from scripts.benchutil import cpu_flags, extraction_command, run_measured  # noqa: E402


def run_job(images: str, out: str, models: str, engine: str) -> tuple[float, float, dict]:
    """(wall seconds, peak RSS MB, manifest) of one extraction job over ``images``."""
    cmd = extraction_command(f"{images}/*", out, "bench", "--model", models, "--engine", engine)
    wall, rss, _ = run_measured(cmd, ROOT)
    with open(os.path.join(out, "manifest.json")) as handle:
        return wall, rss, json.load(handle)


def decode_seconds(manifest: dict) -> float:
    decode = (manifest.get("metrics") or {}).get("decode_ms") or {}
    return decode.get("sum", 0) / 1000.0


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--n", type=int, default=200, help="sample images")
    parser.add_argument("--models", default="mobilenet_v3_large,resnet50", help="the models, comma-separated")
    parser.add_argument("--engine", default="auto", help="--engine of every run")
    args = parser.parse_args()
    models = args.models.split(",")
    print(f"CPU: {cpu_flags()}; load average {os.getloadavg()[0]:.1f}")
    with tempfile.TemporaryDirectory(prefix="bench-models-") as tmp:
        images = os.path.join(tmp, "images")
        build_sample_images(images, SampleSpec(n=args.n, seed=11, min_mp=0.2, max_mp=3.0))
        rows = []
        alone = {}
        for model in models:
            wall, rss, manifest = run_job(images, os.path.join(tmp, f"out-{model}"), model, args.engine)
            alone[model] = wall
            rows.append((f"{model} alone", wall, rss, manifest))
        wall, rss, manifest = run_job(images, os.path.join(tmp, "out-pass"), args.models, args.engine)
        rows.append((f"one pass: {args.models}", wall, rss, manifest))
    summed = sum(alone.values())
    print(f"\n{args.n} images, --engine {args.engine}\n")
    print("| run | wall s | images/s per model | decode s | decode share | peak RSS MB |")
    print("|---|---|---|---|---|---|")
    for name, wall, rss, manifest in rows:
        rate = args.n / wall
        decode = decode_seconds(manifest)
        print(f"| {name} | {wall:.1f} | {rate:.1f} | {decode:.1f} | {decode / wall:.0%} | {rss:.0f} |")
    one_pass = rows[-1][1]
    ratio = one_pass / summed
    verdict = "meets" if ratio <= 0.9 else "misses"
    print(f"\none pass {one_pass:.1f} s vs separate runs {summed:.1f} s: {ratio:.2f}x ({verdict} the 0.9x target)")
    per_model = rows[-1][3].get("models", {})
    for name, figures in per_model.items():
        print(f"  {name}: embedded {figures['embedded']}, failed {figures['failed']}, {figures['dim']}-d")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
