"""Benchmark of the similarity index (beam_jobs.build_index.ann) against exact search, side by side.

    python scripts/bench_index.py                 # 100k and 1M 2048-d vectors (1M: ~5 GB RSS, minutes)
    python scripts/bench_index.py --sizes 100000  # one size

For each size, in a child process of its own (so its peak RSS is its own): build the index the job
builds for that many rows (IVF, fp16 codes, nlist/nprobe chosen by ``ann.choose_params``), time
training and adding, then 300 single-vector queries (p50/p99) and recall@10 of 200 queries against
brute force over every row, with brute-force single-query latency measured in the same process.

Vectors: 2,000 Gaussian clusters (unit centres' directions plus noise of half their scale), L2
normalised: every row's 10 nearest lie among its cluster's ~N/2000 rows and are separated by the
noise, so the ranking is well defined (tight synthetic clusters make top-10 a set of near-ties).
They are generated in chunks of 50,000 from per-chunk seeds and regenerated for the exact pass,
so 1M x 2048 float32 (8 GB) never sits in memory: the index holds fp16 codes (4 GB at 1M).
Exact single-query latency at 1M is the 100k-row scan's time x 10 (a linear scan; holding 1M rows
as float32 to time it directly would take 8 GB).
"""

from __future__ import annotations

import argparse
import json
import os
import resource
import subprocess
import sys
import time

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
sys.path.insert(0, ROOT)

DIM = 2048
CHUNK = 50_000
CLUSTERS = 2000


def chunk(n_rows: int, start: int, dim: int, seed: int = 0):
    """Rows ``start``..``start+CHUNK`` of the synthetic set (normalised float32), the same on every call."""
    import numpy as np

    from beam_jobs.build_index import ann

    centres = np.random.default_rng(seed).normal(size=(CLUSTERS, dim)).astype(np.float32)
    rng = np.random.default_rng([seed, start])
    rows = min(CHUNK, n_rows - start)
    x = centres[rng.integers(0, CLUSTERS, size=rows)]
    x += 0.5 * rng.standard_normal(size=(rows, dim), dtype=np.float32)
    return ann.normalise(x)[0]


def one_size(n: int, dim: int, queries: int, latency_queries: int) -> dict:
    import numpy as np

    from beam_jobs.build_index import ann

    params = ann.choose_params(n, dim, exact_below=20_000)
    index = ann.new_index(params)
    # Training sample: the first rows (chunks are independent draws, so they are a random sample).
    t0 = time.perf_counter()
    sample = np.concatenate([chunk(n, s, dim) for s in range(0, params.train_rows, CHUNK)])[: params.train_rows]
    gen_train = time.perf_counter() - t0
    t = time.perf_counter()
    ann.train(index, params, sample)
    train_s = time.perf_counter() - t
    del sample
    add_s = gen_s = 0.0
    for start in range(0, n, CHUNK):
        t = time.perf_counter()
        x = chunk(n, start, dim)
        gen_s += time.perf_counter() - t
        t = time.perf_counter()
        ann.add(index, np.arange(start, start + len(x), dtype=np.int64), x)
        add_s += time.perf_counter() - t
    # Queries: fresh rows of the same distribution (not in the index).
    q = chunk(CHUNK + n, n, dim)[: max(queries, latency_queries)]
    lat = []
    for row in q[:latency_queries]:
        t = time.perf_counter()
        ann.search(index, row[None], 10)
        lat.append(time.perf_counter() - t)
    _, found = ann.search(index, q[:queries], 10)
    t = time.perf_counter()
    _, truth = ann.exact_top_k(
        q[:queries], ((np.arange(s, s + CHUNK), chunk(n, s, dim)) for s in range(0, n, CHUNK)), 10
    )
    exact_batch_s = time.perf_counter() - t
    # Exact single-query latency on one 100k block, x n/100k (a linear scan).
    block = np.concatenate([chunk(n, s, dim) for s in range(0, min(n, 100_000), CHUNK)])
    exact_lat = []
    for row in q[: min(latency_queries, 100)]:
        t = time.perf_counter()
        scores = block @ row
        np.argpartition(-scores, 10)[:10]
        exact_lat.append(time.perf_counter() - t)
    scale = n / len(block)
    # Other nprobe values on the same index: what recall and latency the default trades.
    sweep = {}
    for probe in sorted({max(1, params.nprobe // 2), params.nprobe * 2, params.nprobe * 4}):
        _, got = ann.search(index, q[:queries], 10, nprobe=probe)
        times = []
        for row in q[:100]:
            t = time.perf_counter()
            ann.search(index, row[None], 10, nprobe=probe)
            times.append(time.perf_counter() - t)
        sweep[probe] = {
            "recall_at_10": round(ann.recall_at_k(got, truth, 10), 4),
            "p99_ms": round(float(np.percentile(times, 99)) * 1e3, 2),
        }
    return {
        "nprobe_sweep": sweep,
        "rows": n,
        "dim": dim,
        "params": params.as_dict(),
        "train_s": round(train_s, 1),
        "add_s": round(add_s, 1),
        "build_s": round(train_s + add_s, 1),
        "generate_s": round(gen_s + gen_train, 1),
        "query_p50_ms": round(float(np.percentile(lat, 50)) * 1e3, 2),
        "query_p99_ms": round(float(np.percentile(lat, 99)) * 1e3, 2),
        "recall_at_10": round(ann.recall_at_k(found, truth, 10), 4),
        "exact_p50_ms": round(float(np.percentile(exact_lat, 50)) * 1e3 * scale, 1),
        "exact_p99_ms": round(float(np.percentile(exact_lat, 99)) * 1e3 * scale, 1),
        "exact_scaled_from_rows": len(block),
        "exact_batch_s": round(exact_batch_s, 1),
        "index_mb": round(index.sa_code_size() * n / 2**20, 0) if hasattr(index, "sa_code_size") else None,
        "peak_rss_mb": round(resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024),
    }


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--sizes", default="100000,1000000")
    parser.add_argument("--dim", type=int, default=DIM)
    parser.add_argument("--queries", type=int, default=200, help="recall@10 queries")
    parser.add_argument("--latency_queries", type=int, default=300)
    parser.add_argument("--child", type=int, help=argparse.SUPPRESS)
    args = parser.parse_args(argv)
    if args.child:
        print("RESULT " + json.dumps(one_size(args.child, args.dim, args.queries, args.latency_queries)))
        return 0
    import faiss

    from scripts.benchutil import cpu_flags

    print(f"# similarity index: faiss-cpu {faiss.__version__} ({faiss.get_compile_options()}), {cpu_flags()}")
    print(f"# load average at start: {os.getloadavg()}")
    print(
        "| rows | index | build (train + add) | peak RSS | query p50 / p99 | recall@10 | exact p50 / p99 | "
        "exact, 200 queries batched |"
    )
    print("|---:|---|---:|---:|---:|---:|---:|---:|")
    for n in (int(s) for s in args.sizes.split(",")):
        cmd = [sys.executable, __file__, "--child", str(n), "--dim", str(args.dim), "--queries", str(args.queries)]
        cmd += ["--latency_queries", str(args.latency_queries)]
        t = time.perf_counter()
        proc = subprocess.run(cmd, capture_output=True, text=True, cwd=ROOT)
        wall = time.perf_counter() - t
        line = [ln for ln in proc.stdout.splitlines() if ln.startswith("RESULT ")]
        if proc.returncode or not line:
            sys.stderr.write(proc.stderr[-3000:])
            return 1
        r = json.loads(line[-1][7:])
        p = r["params"]
        print(
            f"| {n:,} x {r['dim']} | IVF{p['nlist']} fp16, nprobe {p['nprobe']} | "
            f"{r['build_s']} s ({r['train_s']} + {r['add_s']}) | {r['peak_rss_mb']:,} MB | "
            f"{r['query_p50_ms']} / {r['query_p99_ms']} ms | {r['recall_at_10']:.4f} | "
            f"{r['exact_p50_ms']} / {r['exact_p99_ms']} ms | {r['exact_batch_s']} s |",
            flush=True,
        )
        print(f"#   {json.dumps(r)}; child wall {wall:.0f} s; load average {os.getloadavg()}", flush=True)
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
