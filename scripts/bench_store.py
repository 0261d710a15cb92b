"""Benchmark of the Lance store (beam_jobs.publish_store + beam_jobs.store_search) beside the faiss night index.

    python scripts/bench_store.py                  # 100k and 1M 2048-d rows (1M: ~8 GB Parquet + 8 GB Lance on disk)
    python scripts/bench_store.py --sizes 100000   # one size

Prints the CPU flags first. For each size, two child processes (each its own peak RSS), on the same vectors:

* Lance: the rows are written as an extraction partition (Parquet, the job's format) and published with the
  job's own code path (``publish_store.job.publish``: one merge commit, then the upkeep that builds the IVF-PQ
  index); then a second night of 10,000 rows is published into the full table (tonight's cost once the store
  is that big). Queries through ``store_search.search_table``: 300 single queries (p50/p99) and recall@10 of
  200 against exact search (numpy over every row), at the search command's setting and a few others, after 20
  warm-up queries; then the same for the other index kinds of ``OTHER_INDEXES``, built on the same table.
* faiss: ``scripts/bench_index.one_size``, the night index's own benchmark (IVF, fp16 codes).

Vectors and queries are ``bench_index.chunk``'s (2,000 Gaussian clusters, L2-normalised); queries are fresh rows
not in the store.
"""

from __future__ import annotations

import argparse
import json
import os
import resource
import shutil
import subprocess
import sys
import tempfile
import time

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
sys.path.insert(0, ROOT)
sys.path.insert(0, os.path.join(ROOT, "scripts"))

SECOND_NIGHT = 10_000
SWEEP = ((20, 10), (40, 10), (80, 10), (40, 20), (40, 50), (40, 100))  # (nprobes, refine_factor)
# Other index kinds measured on the same table after the job's own (each replaces the one before).
OTHER_INDEXES = ("ivf_sq",)
OTHER_SWEEP = ((20, 5), (40, 5), (40, 10), (80, 10))


def write_partition(folder: str, n: int, start: int, dim: int, total: int) -> None:
    """``chunk(total, s)`` for s in start..start+n, as extraction output (one Parquet file per chunk): the rows
    bench_index builds its index of (``total`` = n, start 0), or another block (``total`` beyond the queries)."""
    import numpy as np
    import pyarrow as pa
    import pyarrow.parquet as pq
    from bench_index import CHUNK, chunk

    from beam_jobs.contract import EMBEDDING_COLUMNS
    from beam_jobs.storage import arrow_schema

    os.makedirs(folder, exist_ok=True)
    files = (n + CHUNK - 1) // CHUNK
    for i, s in enumerate(range(start, start + n, CHUNK)):
        x = chunk(total, s, dim)[: start + n - s]
        rows = len(x)
        ids = np.arange(s, s + rows)
        table = pa.Table.from_arrays(
            [
                pa.array([f"/bench/img_{j:08d}.jpg" for j in ids]),
                pa.ListArray.from_arrays(
                    pa.array(np.arange(0, (rows + 1) * dim, dim, dtype=np.int32)), pa.array(x.reshape(-1))
                ),
                pa.array([f"bench/dim={dim}"] * rows),
                pa.array([f"{j:064x}" for j in ids]),
                pa.array([224] * rows, pa.int32()),
                pa.array([224] * rows, pa.int32()),
                pa.array(["bench"] * rows),
            ],
            schema=arrow_schema(EMBEDDING_COLUMNS),
        )
        pq.write_table(table, os.path.join(folder, f"embeddings-{i:05d}-of-{files:05d}.parquet"), compression="none")


def lance_size(n: int, dim: int, queries: int, latency_queries: int, work: str) -> dict:
    import numpy as np
    from bench_index import CHUNK, chunk

    from beam_jobs.build_index import ann
    from beam_jobs.publish_store.config import StoreConfig
    from beam_jobs.publish_store.job import publish
    from beam_jobs.publish_store.lance_store import index_config, vector_indices
    from beam_jobs.store_search import NPROBES, REFINE_FACTOR, open_store, search_table

    store = os.path.join(work, "store")
    night1, night2 = (
        os.path.join(work, "embeddings", "ds=2026-11-20"),
        os.path.join(work, "embeddings", "ds=2026-11-21"),
    )
    t = time.perf_counter()
    write_partition(night1, n, 0, dim, n)
    # Night 2: rows after the query block, so no query is in the store.
    write_partition(night2, SECOND_NIGHT, n + CHUNK, dim, n + CHUNK + SECOND_NIGHT)
    generate_s = time.perf_counter() - t

    def run(folder: str) -> tuple[dict, float]:
        t0 = time.perf_counter()
        result = publish(StoreConfig(input=folder, store="lance", store_uri=store).validate())
        return next(iter(result["tables"].values())), time.perf_counter() - t0

    first, first_s = run(night1)
    second, second_s = run(night2)
    table = open_store("lance", store).table
    total = n + SECOND_NIGHT
    fresh = chunk(CHUNK + n, n, dim)
    q, warm = fresh[: max(queries, latency_queries)], fresh[max(queries, latency_queries) :][:20]

    def ids_of(hits) -> list[int]:
        return [int(uri[len("/bench/img_") : -4]) for uri, _, _ in hits]

    for row in warm:  # warm-up: the first queries open the index and fill the page cache
        search_table(table, row, 10)
    lat = []
    for row in q[:latency_queries]:
        t0 = time.perf_counter()
        search_table(table, row, 10)
        lat.append(time.perf_counter() - t0)
    t0 = time.perf_counter()

    def blocks():
        for s in range(0, n, CHUNK):
            yield np.arange(s, s + min(CHUNK, n - s)), chunk(n, s, dim)
        yield np.arange(n + CHUNK, n + CHUNK + SECOND_NIGHT), chunk(n + CHUNK + SECOND_NIGHT, n + CHUNK, dim)

    _, truth = ann.exact_top_k(q[:queries], blocks(), 10)
    exact_s = time.perf_counter() - t0

    def recall(nprobes: int, refine: int) -> float:
        found = np.full((queries, 10), -1, dtype=np.int64)
        for i, row in enumerate(q[:queries]):
            got = ids_of(search_table(table, row, 10, nprobes, refine))
            found[i, : len(got)] = got
        return ann.recall_at_k(found, truth, 10)

    def measure(settings) -> dict:
        out = {}
        for nprobes, refine in settings:
            times = []
            for row in q[:100]:
                t0 = time.perf_counter()
                search_table(table, row, 10, nprobes, refine)
                times.append(time.perf_counter() - t0)
            out[f"{nprobes}/{refine}"] = {
                "recall_at_10": round(recall(nprobes, refine), 4),
                "p50_ms": round(float(np.percentile(times, 50)) * 1e3, 1),
                "p99_ms": round(float(np.percentile(times, 99)) * 1e3, 1),
            }
        return out

    sweep = measure(SWEEP)
    default_recall = sweep.get(f"{NPROBES}/{REFINE_FACTOR}", {}).get("recall_at_10")
    if default_recall is None:
        default_recall = round(recall(NPROBES, REFINE_FACTOR), 4)
    others = {}
    for kind in OTHER_INDEXES:
        for old in vector_indices(table):
            table.drop_index(old.name)
        t0 = time.perf_counter()
        table.create_index("embedding", config=index_config(kind, total, dim), name=f"embedding_{kind}_n{total}")
        others[kind] = {"build_s": round(time.perf_counter() - t0, 1), **measure(OTHER_SWEEP)}
    upkeep = first["upkeep"]
    return {
        "rows": total,
        "dim": dim,
        "generate_s": round(generate_s, 1),
        "publish_s": round(first_s, 1),
        "merge_s": first["merge_seconds"],
        "index_s": upkeep.get("index", {}).get("seconds"),
        "index": upkeep.get("index_name"),
        "second_night_publish_s": round(second_s, 1),
        "second_night_merge_s": second["merge_seconds"],
        "second_night_upkeep_s": second["upkeep_seconds"],
        "fragments": second["upkeep"]["fragments"],
        "query_p50_ms": round(float(np.percentile(lat, 50)) * 1e3, 1),
        "query_p99_ms": round(float(np.percentile(lat, 99)) * 1e3, 1),
        "recall_at_10": default_recall,
        "setting": f"nprobes {NPROBES}, refine x{REFINE_FACTOR}",
        "sweep": sweep,
        "other_indexes": others,
        "exact_numpy_batch_s": round(exact_s, 1),
        "store_gb": round(
            sum(os.path.getsize(os.path.join(d, f)) for d, _, fs in os.walk(store) for f in fs) / 2**30, 2
        ),
        "peak_rss_mb": round(resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024),
    }


def child(kind: str, n: int, args) -> dict:
    cmd = [sys.executable, __file__, f"--child-{kind}", str(n), "--dim", str(args.dim), "--queries", str(args.queries)]
    cmd += ["--latency_queries", str(args.latency_queries)]
    t = time.perf_counter()
    proc = subprocess.run(cmd, capture_output=True, text=True, cwd=ROOT)
    line = [ln for ln in proc.stdout.splitlines() if ln.startswith("RESULT ")]
    if proc.returncode or not line:
        sys.stderr.write(proc.stderr[-4000:])
        raise SystemExit(f"{kind} at {n:,} rows failed")
    result = json.loads(line[-1][7:])
    result["child_wall_s"] = round(time.perf_counter() - t)
    return result


def cpu_flags_line() -> str:
    found = subprocess.run(
        "grep -o -w -E 'avx2|avx512f|avx512_bf16|amx_bf16' /proc/cpuinfo | sort -u",
        shell=True, capture_output=True, text=True,
    ).stdout.split()  # fmt: skip
    return " ".join(found) or "none of avx2/avx512f/avx512_bf16/amx_bf16"


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--sizes", default="100000,1000000")
    parser.add_argument("--dim", type=int, default=2048)
    parser.add_argument("--queries", type=int, default=200, help="recall@10 queries")
    parser.add_argument("--latency_queries", type=int, default=300)
    parser.add_argument("--child-lance", dest="child_lance", type=int, help=argparse.SUPPRESS)
    parser.add_argument("--child-faiss", dest="child_faiss", type=int, help=argparse.SUPPRESS)
    args = parser.parse_args(argv)
    if args.child_lance:
        work = tempfile.mkdtemp(prefix="bench-store-")
        try:
            result = lance_size(args.child_lance, args.dim, args.queries, args.latency_queries, work)
        finally:
            shutil.rmtree(work, ignore_errors=True)
        print("RESULT " + json.dumps(result))
        return 0
    if args.child_faiss:
        from bench_index import one_size

        print("RESULT " + json.dumps(one_size(args.child_faiss, args.dim, args.queries, args.latency_queries)))
        return 0

    import lancedb

    from scripts.benchutil import cpu_flags

    print(f"# CPU flags (grep /proc/cpuinfo): {cpu_flags_line()}")
    print(f"# {cpu_flags()}; lancedb {lancedb.__version__}; load average at start {os.getloadavg()}")
    print(
        "| rows x dim | engine | publish / build | index | query p50 / p99 | recall@10 | "
        "+10k-row night into the full table | peak RSS |"
    )
    print("|---:|---|---:|---|---:|---:|---:|---:|")
    for n in (int(s) for s in args.sizes.split(",")):
        lance = child("lance", n, args)
        print(
            f"| {lance['rows']:,} x {lance['dim']} | Lance store ({lance['setting']}) | {lance['publish_s']} s "
            f"(merge {lance['merge_s']} + index {lance['index_s']}) | {lance['index']} | {lance['query_p50_ms']} / "
            f"{lance['query_p99_ms']} ms | {lance['recall_at_10']:.4f} | {lance['second_night_publish_s']} s "
            f"(merge {lance['second_night_merge_s']}) | {lance['peak_rss_mb']:,} MB |",
            flush=True,
        )
        print(f"#   lance {json.dumps(lance)}; load average {os.getloadavg()}", flush=True)
        faiss = child("faiss", n, args)
        p = faiss["params"]
        print(
            f"| {n:,} x {faiss['dim']} | faiss night index (IVF{p['nlist']} fp16, nprobe {p['nprobe']}) | "
            f"{faiss['build_s']} s | in memory | {faiss['query_p50_ms']} / {faiss['query_p99_ms']} ms | "
            f"{faiss['recall_at_10']:.4f} | rebuilt or extended per night | {faiss['peak_rss_mb']:,} MB |",
            flush=True,
        )
        print(f"#   faiss {json.dumps(faiss)}; load average {os.getloadavg()}", flush=True)
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
