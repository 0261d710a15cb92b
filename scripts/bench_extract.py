"""Extraction benchmark: prints a table. Not a test; figures vary with the machine's load.

    python scripts/bench_extract.py [--n 500] [--seeds_n 500] [--skip_rss]

All in one run on the same images (real photos from PyPI packages, 0.3-3 MP):

  (a) model-only ceiling: the compiled model call on pre-decoded batches
  (b) the seeds' approach: keras.utils.load_img + model.predict, one image at a time
  (c) this job end to end: `python -m beam_jobs.extract_embeddings` with FnApiRunner, as a
      subprocess (Python and TF import, model load, pipeline, writing Parquet all included)

Then peak RSS of (c) at N and 4N images. The same saved weights file is used
everywhere, so all three run the identical network.
"""

from __future__ import annotations

import argparse
import json
import os
import shutil
import sys
import time
from pathlib import Path

import numpy as np
from PIL import Image

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
sys.path.insert(0, ROOT)

from beam_jobs.extract_embeddings.images import decode_and_resize  # noqa: E402
from devtools.samples import SampleSpec, build_sample_images  # noqa: E402
from scripts.benchutil import cpu_flags, run_measured  # noqa: E402


def save_weights(path: str) -> None:
    import keras

    keras.utils.set_random_seed(0)
    model = keras.applications.ResNet50(include_top=False, pooling="avg", weights=None, input_shape=(224, 224, 3))
    model.save_weights(path)


def bench_model_only(weights: str, files: list[str], batch: int) -> float:
    from beam_jobs.extract_embeddings.inference import load_embedding_model
    from beam_jobs.extract_embeddings.models import get_spec, model_id, resolve_weights

    spec = get_spec("resnet50")
    w = resolve_weights(spec, weights)
    model = load_embedding_model("resnet50", w, model_id(spec, w))
    pixels = np.stack([decode_and_resize(Path(f).read_bytes()).pixels for f in files])
    model(pixels[:batch])  # warm-up at the real batch shape
    start = time.perf_counter()
    for i in range(0, len(pixels), batch):
        model(pixels[i : i + batch])
    return len(pixels) / (time.perf_counter() - start)


def bench_seeds(weights: str, files: list[str]) -> float:
    import keras

    model = keras.applications.ResNet50(include_top=False, pooling="avg", weights=None, input_shape=(224, 224, 3))
    model.load_weights(weights)
    pre = keras.applications.resnet50.preprocess_input
    start = time.perf_counter()
    for f in files:
        img = keras.utils.load_img(f, target_size=(224, 224))
        x = pre(keras.utils.img_to_array(img)[None])
        model.predict(x, verbose=0)
    return len(files) / (time.perf_counter() - start)


def run_job(image_dir: str, out: str, weights: str, extra: list[str]) -> dict:
    cmd = [
        sys.executable,
        "-m",
        "beam_jobs.extract_embeddings",
        "--input",
        os.path.join(image_dir, "*"),
        "--output",
        out,
        "--weights",
        weights,
        "--runner",
        "FnApiRunner",
        *extra,
    ]
    wall, rss_mb, _ = run_measured(cmd, ROOT)
    manifest = json.loads(Path(out, "manifest.json").read_text())
    return {"wall": wall, "rss_mb": rss_mb, "manifest": manifest}


def main() -> int:
    ap = argparse.ArgumentParser()
    ap.add_argument("--n", type=int, default=500)
    ap.add_argument("--seeds_n", type=int, default=500, help="images for (b); it is the slowest part")
    ap.add_argument("--batch_size", type=int, default=32)
    ap.add_argument("--workdir", default=os.path.join(ROOT, "bench_out"))
    ap.add_argument("--skip_rss", action="store_true", help="skip the 4N run")
    ap.add_argument("--job_args", default="", help="extra flags for (c), space separated")
    args = ap.parse_args()

    os.makedirs(args.workdir, exist_ok=True)
    weights = os.path.join(args.workdir, "resnet50-seed0.weights.h5")
    if not os.path.exists(weights):
        save_weights(weights)
    print(f"CPU: {cpu_flags()}", flush=True)
    t = time.perf_counter()
    img_n = os.path.join(args.workdir, f"images_n{args.n}")
    files = build_sample_images(img_n, SampleSpec(args.n, seed=1))
    mp = []
    for f in files:
        with Image.open(f) as img:
            mp.append(img.size[0] * img.size[1] / 1e6)
    print(
        f"images: {len(files)} in {img_n} ({min(mp):.2f}-{max(mp):.2f} MP, mean {np.mean(mp):.2f} MP; "
        f"built/reused in {time.perf_counter() - t:.0f}s)",
        flush=True,
    )
    extra = [f"--batch_size={args.batch_size}", *args.job_args.split()]

    # (c) first, before this process has TensorFlow loaded, so the machine is otherwise idle.
    c = run_job(img_n, os.path.join(args.workdir, "out_n"), weights, extra)
    c_ips = args.n / c["wall"]
    print(f"(c) job end to end: {c['wall']:.1f}s, {c_ips:.1f} img/s, peak RSS {c['rss_mb']:.0f} MB", flush=True)
    one = os.path.join(args.workdir, "images_one")
    os.makedirs(one, exist_ok=True)
    shutil.copy(files[0], one)
    c1 = run_job(one, os.path.join(args.workdir, "out_one"), weights, extra)
    print(f"(c) job on 1 image (fixed startup cost): {c1['wall']:.1f}s", flush=True)
    a_ips = bench_model_only(weights, files, args.batch_size)
    print(f"(a) model-only ceiling: {a_ips:.1f} img/s", flush=True)
    b_ips = bench_seeds(weights, files[: args.seeds_n])
    print(f"(b) seeds' per-image predict: {b_ips:.1f} img/s", flush=True)

    rows = [
        ("(a) compiled model call, pre-decoded batches", a_ips, ""),
        ("(b) seeds: load_img + model.predict per image", b_ips, ""),
        ("(c) this job, end to end (FnApiRunner)", c_ips, f"{c['wall']:.1f}s wall incl. startup"),
    ]
    print()
    print(f"| measurement (N={args.n}, batch {args.batch_size}) | images/s | notes |")
    print("|---|---:|---|")
    for name, ips, note in rows:
        print(f"| {name} | {ips:.1f} | {note} |")
    print(f"| (c) / (a) | {c_ips / a_ips:.0%} | target >= 90% |")
    print(f"| (c) / (b) | {c_ips / b_ips:.1f}x | target >= 4x |")
    print(f"| (c) fixed cost: 1 image end to end | | {c1['wall']:.1f}s (imports, TF, model load, teardown) |")
    # What the targets demand, from this run's own figures: a job pays its fixed cost once,
    # then at best runs the model at (a).
    floor_wall = c1["wall"] + args.n / a_ips
    print(
        f"| floor of one job at N: fixed cost + N/(a) | {args.n / floor_wall:.1f} | "
        f"{floor_wall:.1f}s; 90% of (a) allows {args.n / (0.9 * a_ips):.1f}s at N |"
    )
    print(f"| 4x (b) | {4 * b_ips:.1f} | {4 * b_ips / a_ips:.0%} of the ceiling (a) |")

    if not args.skip_rss:
        img_4n = os.path.join(args.workdir, f"images_n{4 * args.n}")
        build_sample_images(img_4n, SampleSpec(4 * args.n, seed=1))
        c4 = run_job(img_4n, os.path.join(args.workdir, "out_4n"), weights, extra)
        steady = 3 * args.n / max(c4["wall"] - c["wall"], 1e-9)
        print(f"| (c) at 4N={4 * args.n}: end to end | {4 * args.n / c4['wall']:.1f} | {c4['wall']:.1f}s wall |")
        print(
            f"| (c) marginal rate, (4N-N)/(T4N-TN) | {steady:.1f} | startup excluded; "
            f"{steady / a_ips:.0%} of (a), {steady / b_ips:.1f}x (b) |"
        )
        print()
        print("| peak RSS | MB |")
        print("|---|---:|")
        print(f"| N={args.n} | {c['rss_mb']:.0f} |")
        print(f"| 4N={4 * args.n} | {c4['rss_mb']:.0f} |")
        print(f"| growth | {c4['rss_mb'] / c['rss_mb'] - 1:+.1%} (target within 10%) |")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
