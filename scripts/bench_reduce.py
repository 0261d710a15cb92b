"""reduce_dim benchmark: prints a table. Not a test; figures vary with the machine's load.

    python scripts/bench_reduce.py [--rows 20000 100000] [--skip_umap]

Synthetic clustered 2048-d embeddings (beam_jobs.synthetic) written as extraction
output, then, for each size, in one run:

  PCA job     `python -m beam_jobs.reduce_dim --method pca` as a subprocess, FnApiRunner:
              wall time including interpreter start, and peak RSS
  sklearn     scikit-learn's in-memory PCA(svd_solver="covariance_eigh") on the same rows:
              the fit + transform time once the rows are in memory, and the process's peak RSS
              (which includes reading the Parquet into memory)
  UMAP job    `--method umap` with the default fit sample (20k rows), end to end
"""

from __future__ import annotations

import argparse
import json
import os
import sys
import time
from pathlib import Path

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
sys.path.insert(0, ROOT)

from beam_jobs.synthetic import SYNTHETIC_MODEL_ID, clustered_embeddings, write_embeddings  # noqa: E402
from scripts.benchutil import run_measured  # noqa: E402

SKLEARN_SNIPPET = """
import glob, json, sys, time
import numpy as np, pyarrow.parquet as pq
from sklearn.decomposition import PCA
files = sorted(glob.glob(sys.argv[1] + "/embeddings-*.parquet"))
col = [pq.read_table(f, columns=["embedding"]).column(0).combine_chunks() for f in files]
x = np.concatenate([c.flatten().to_numpy().reshape(len(c), -1) for c in col])
t = time.perf_counter()
PCA(n_components=2, svd_solver="covariance_eigh").fit_transform(x)
print("SECONDS", time.perf_counter() - t)
"""


def build(rows: int, workdir: str) -> str:
    out = os.path.join(workdir, f"emb_{rows}", "ds=2026-11-20")
    stamp = os.path.join(out, "_SUCCESS")
    if not os.path.exists(stamp):
        x, _ = clustered_embeddings(rows, 2048, clusters=12, seed=0)
        write_embeddings(out, x, SYNTHETIC_MODEL_ID.format(dim=2048, seed=0), files=max(2, rows // 12_500))
        Path(stamp).touch()
    return out


def job(inp: str, out: str, method: str) -> dict:
    cmd = [sys.executable, "-m", "beam_jobs.reduce_dim", "--input", inp, "--output", out, "--method", method]
    wall, rss, _ = run_measured([*cmd, "--runner", "FnApiRunner"], ROOT)
    manifest = json.loads(Path(out, "manifest.json").read_text())
    return {"wall": wall, "rss": rss, "seconds": manifest["seconds"], "manifest": manifest}


def sklearn_pca(inp: str) -> dict:
    wall, rss, out = run_measured([sys.executable, "-c", SKLEARN_SNIPPET, inp], ROOT)
    seconds = float(next(ln.split()[1] for ln in out.splitlines() if ln.startswith("SECONDS")))
    return {"wall": wall, "rss": rss, "seconds": seconds}


def main() -> int:
    ap = argparse.ArgumentParser()
    ap.add_argument("--rows", type=int, nargs="+", default=[20_000, 100_000])
    ap.add_argument("--workdir", default=os.path.join(ROOT, "bench_out", "reduce"))
    ap.add_argument("--skip_umap", action="store_true")
    args = ap.parse_args()
    os.makedirs(args.workdir, exist_ok=True)

    results = {}
    for rows in args.rows:
        t = time.perf_counter()
        inp = build(rows, args.workdir)
        print(f"{rows} rows x 2048 ready in {inp} ({time.perf_counter() - t:.0f}s)", flush=True)
        r = {"pca": job(inp, os.path.join(args.workdir, f"pca_{rows}"), "pca")}
        print(f"  pca job: {r['pca']['wall']:.1f}s wall, {r['pca']['rss']:.0f} MB", flush=True)
        r["sklearn"] = sklearn_pca(inp)
        print(f"  sklearn: {r['sklearn']['seconds']:.1f}s fit, {r['sklearn']['rss']:.0f} MB", flush=True)
        if not args.skip_umap:
            r["umap"] = job(inp, os.path.join(args.workdir, f"umap_{rows}"), "umap")
            print(f"  umap job: {r['umap']['wall']:.1f}s wall, {r['umap']['rss']:.0f} MB", flush=True)
        results[rows] = r

    print()
    print(
        "| rows | PCA job wall | PCA rows/s (wall) | PCA rows/s (in job) | PCA peak RSS | sklearn PCA fit | "
        "sklearn peak RSS | PCA job / sklearn time | UMAP job wall | UMAP peak RSS | UMAP trustworthiness |"
    )
    print("|---:|---:|---:|---:|---:|---:|---:|---:|---:|---:|---:|")
    for rows, r in results.items():
        p, s = r["pca"], r["sklearn"]
        u = r.get("umap")
        umap_cells = f"{u['wall']:.1f}s | {u['rss']:.0f} MB | {u['manifest']['trustworthiness']}" if u else "- | - | -"
        print(
            f"| {rows:,} | {p['wall']:.1f}s | {rows / p['wall']:,.0f} | {rows / p['seconds']:,.0f} | "
            f"{p['rss']:.0f} MB | "
            f"{s['seconds']:.1f}s | {s['rss']:.0f} MB | {p['wall'] / s['seconds']:.1f}x | {umap_cells} |"
        )
    sizes = list(results)
    if len(sizes) >= 2:
        lo, hi = results[sizes[0]]["pca"]["rss"], results[sizes[-1]]["pca"]["rss"]
        print(
            f"\nPCA peak RSS {sizes[0]:,} -> {sizes[-1]:,} rows: {lo:.0f} -> {hi:.0f} MB ({hi / lo - 1:+.0%}); "
            f"the data grew {sizes[-1] / sizes[0]:.0f}x ({sizes[-1] * 2048 * 4 / 2**20:,.0f} MB of float32)"
        )
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
