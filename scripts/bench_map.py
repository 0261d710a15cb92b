"""map.html explorer benchmark: prints tables. Not a test; figures vary with the machine's load.

    python scripts/bench_map.py [--pages 10000 100000] [--job_rows 100000] [--big_rows 1000000] [--skip_big]

1. The page: the explorer (beam_jobs.reduce_dim.explorer) for N synthetic points in two
   partitions, with thumbnails of the bundled sample photos (devtools.samples) up to the job's
   default budget (--thumbnail_budget_mb), built in this process: build seconds and file size;
   then opened in headless Chromium (tests/support/browser.py, network off): seconds until the
   page is ready (BokehJS has drawn the document and unpacked the points).
2. The job: `python -m beam_jobs.reduce_dim --method pca` at --job_rows and --big_rows rows,
   this tree against --baseline (the commit before the explorer; extracted with git archive):
   wall time and peak RSS of each (at --job_rows the fastest of --repeat alternating runs).
   Synthetic URIs name no files, so thumbnail reads fail fast (the number tried is capped by
   the budget); what the page costs is the sample, the render and the write.
"""

from __future__ import annotations

import argparse
import glob
import json
import os
import shutil
import subprocess
import sys
import tempfile
import time
from pathlib import Path

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
sys.path.insert(0, ROOT)

from scripts.benchutil import cpu_flags, run_measured  # noqa: E402

BASELINE = "9155951"  # main before issue 20: map.html was a 1,000-point sample in hand-written JS


def sample_thumbnails(workdir: str) -> list[str]:
    from beam_jobs.thumbnails import ThumbnailParams, gather_thumbnails
    from devtools.samples import SampleSpec, build_sample_images

    out = os.path.join(workdir, "photos")
    if not glob.glob(os.path.join(out, "*")):
        build_sample_images(out, SampleSpec(n=24, seed=3, min_mp=0.2, max_mp=3.0))
    photos = sorted(glob.glob(os.path.join(out, "*")))
    got = gather_thumbnails(photos, ThumbnailParams(size=96, budget_bytes=10**8))
    return [got.data_uri(i) for i in sorted(got.html)]


def page(n: int, thumbs: list[str], budget_bytes: int, workdir: str) -> dict:
    import numpy as np

    from beam_jobs.reduce_dim.explorer import ExplorerPoints, render_explorer
    from beam_jobs.reduce_dim.maps import MapLabels

    rng = np.random.default_rng(0)
    centres = rng.normal(0, 5, size=(12, 2))
    xy = centres[rng.integers(0, 12, n)] + rng.normal(0, 0.8, size=(n, 2))
    inline, spent = [], 0
    for i in range(n):  # as the job does: thumbnails in sample order until the budget is spent
        t = thumbs[i % len(thumbs)]
        if spent + len(t) > budget_bytes:
            inline.extend([None] * (n - i))
            break
        inline.append(t)
        spent += len(t)
    points = ExplorerPoints(
        x=xy[:, 0],
        y=xy[:, 1],
        groups=["2026-11-19" if i % 2 else "2026-11-20" for i in range(n)],
        uris=[f"gs://images-bucket/landed/2026-11-20/img_{i:07d}.jpg" for i in range(n)],
        thumbnails=inline,
    )
    labels = MapLabels(f"PCA map of {n:,} image embeddings", "bench", "PC1", "PC2")
    start = time.perf_counter()
    text = render_explorer(points, labels, facts=[("rows", f"{n:,}")], note="bench")
    build = time.perf_counter() - start
    path = os.path.join(workdir, f"map_{n}.html")
    Path(path).write_text(text, encoding="utf-8")
    return {"build": build, "bytes": os.path.getsize(path), "path": path, "thumbnails": sum(1 for t in inline if t)}


def ready_seconds(path: str) -> float:
    from tests.support.browser import Browser

    with Browser() as browser:
        start = time.monotonic()
        browser.open(f"file://{path}", timeout=300)
        browser.wait_for("document.body.dataset.explorerReady === '1'", timeout=300, interval=0.02)
        return time.monotonic() - start


def embeddings(rows: int, workdir: str) -> str:
    """Synthetic extraction output, written 100k rows at a time (1M rows of float64 would not fit)."""
    from devtools.synthetic import SYNTHETIC_MODEL_ID, clustered_embeddings, write_embeddings

    out = os.path.join(workdir, f"emb_{rows}", "ds=2026-11-20")
    stamp = os.path.join(out, "_SUCCESS")
    if os.path.exists(stamp):
        return out
    os.makedirs(out, exist_ok=True)
    chunk = 100_000
    parts = (rows + chunk - 1) // chunk
    for k in range(parts):
        n = min(chunk, rows - k * chunk)
        x, _ = clustered_embeddings(n, 2048, clusters=12, seed=k)
        with tempfile.TemporaryDirectory(dir=workdir) as tmp:
            (written,) = write_embeddings(tmp, x, SYNTHETIC_MODEL_ID.format(dim=2048, seed=0), files=1, prefix=f"c{k}")
            shutil.move(written, os.path.join(out, f"embeddings-{k:05d}-of-{parts:05d}.parquet"))
        del x
    Path(stamp).touch()
    return out


def baseline_tree(commit: str, workdir: str) -> str:
    tree = os.path.join(workdir, f"baseline_{commit}")
    if not os.path.isdir(os.path.join(tree, "beam_jobs")):
        os.makedirs(tree, exist_ok=True)
        archive = subprocess.run(["git", "archive", commit, "beam_jobs"], cwd=ROOT, capture_output=True, check=True)
        subprocess.run(["tar", "-x", "-C", tree], input=archive.stdout, check=True)
    return tree


def job(tree: str, inp: str, out: str) -> dict:
    cmd = [sys.executable, "-m", "beam_jobs.reduce_dim", "--input", inp, "--output", out, "--method", "pca"]
    wall, rss, _ = run_measured([*cmd, "--runner", "FnApiRunner"], tree)  # cwd first on sys.path: that tree's code
    manifest = json.loads(Path(out, "manifest.json").read_text())
    html = os.path.getsize(os.path.join(out, "map.html"))
    return {"wall": wall, "rss": rss, "seconds": manifest["seconds"], "html": html, "points": manifest["html_points"]}


def main() -> int:
    ap = argparse.ArgumentParser()
    ap.add_argument("--pages", type=int, nargs="+", default=[10_000, 100_000])
    ap.add_argument("--job_rows", type=int, default=100_000)
    ap.add_argument("--big_rows", type=int, default=1_000_000)
    ap.add_argument("--skip_big", action="store_true")
    ap.add_argument("--skip_jobs", action="store_true", help="only the page table")
    ap.add_argument("--repeat", type=int, default=2, help="runs of each job at --job_rows (fastest kept)")
    ap.add_argument("--thumbnail_budget_mb", type=float, default=8.0)
    ap.add_argument("--baseline", default=BASELINE)
    ap.add_argument("--workdir", default=os.path.join(ROOT, "bench_out", "map"))
    args = ap.parse_args()
    os.makedirs(args.workdir, exist_ok=True)
    print(f"CPU: {cpu_flags()}", flush=True)

    start = time.perf_counter()
    import bokeh.plotting  # noqa: F401 - once per job process; timed apart from the page build

    print(f"import bokeh: {time.perf_counter() - start:.2f}s (once per process)", flush=True)
    thumbs = sample_thumbnails(args.workdir)
    budget = int(args.thumbnail_budget_mb * 1_000_000)
    pages = {}
    for n in args.pages:
        pages[n] = page(n, thumbs, budget, args.workdir)
        pages[n]["ready"] = ready_seconds(pages[n]["path"])
        p = pages[n]
        print(f"page {n:,}: built {p['build']:.2f}s, {p['bytes'] / 1e6:.1f} MB, ready {p['ready']:.1f}s", flush=True)
    print()
    mb = args.thumbnail_budget_mb
    print(f"| points | thumbnails ({mb:g} MB budget) | build | file size | page ready (Chromium) |")
    print("|---:|---:|---:|---:|---:|")
    for n, p in pages.items():
        print(f"| {n:,} | {p['thumbnails']:,} | {p['build']:.2f}s | {p['bytes'] / 1e6:.1f} MB | {p['ready']:.1f}s |")

    if args.skip_jobs:
        return 0
    old_tree = baseline_tree(args.baseline, args.workdir)
    sizes = [args.job_rows] + ([] if args.skip_big else [args.big_rows])
    jobs = {}
    for rows in sizes:
        inp = embeddings(rows, args.workdir)
        for attempt in range(args.repeat if rows == args.job_rows else 1):  # alternating; the fastest of each kept
            for name, tree in (("baseline", old_tree), ("explorer", ROOT)):
                out = os.path.join(args.workdir, f"out_{name}_{rows}")
                j = job(tree, inp, out)
                print(f"{rows:,} rows, {name} #{attempt + 1}: {j['wall']:.1f}s wall, {j['rss']:.0f} MB", flush=True)
                if (rows, name) not in jobs or j["wall"] < jobs[rows, name]["wall"]:
                    jobs[rows, name] = j
    print()
    print(f"| rows | job at {args.baseline} (wall / peak RSS) | this tree | added time | added memory | map.html |")
    print("|---:|---:|---:|---:|---:|---:|")
    for rows in sizes:
        a, b = jobs[rows, "baseline"], jobs[rows, "explorer"]
        print(
            f"| {rows:,} | {a['wall']:.1f}s / {a['rss']:,.0f} MB | {b['wall']:.1f}s / {b['rss']:,.0f} MB | "
            f"{b['wall'] - a['wall']:+.1f}s ({b['wall'] / a['wall'] - 1:+.0%}) | "
            f"{b['rss'] - a['rss']:+,.0f} MB ({b['rss'] / a['rss'] - 1:+.0%}) | "
            f"{b['points']:,} points, {b['html'] / 1e6:.1f} MB |"
        )
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
