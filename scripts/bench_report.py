"""Benchmark of the morning report (beam_jobs.report) on synthetic nights written as real Parquet partitions.

    python scripts/bench_report.py                          # 100k-row night vs a 7-night window of 100k each
    python scripts/bench_report.py --rows 1000000 --distinct_window_nights 1 --no-exact   # 1M vs a 7M window

For each size: writes a window of ``--window_nights`` earlier nights and tonight (``--rows`` rows each, 2048-d,
shaped like devtools/synthetic.py's clustered vectors) under a temporary output root, with a planted novelty:
tonight adds a cluster no earlier night has, ``--planted`` of its rows. Then runs
``python -m beam_jobs.report`` as a user would, in a child process (wall time and peak RSS are its own), and
prints: the time of each phase, peak RSS, the planted rows' share of the top 24 "new tonight", the novelty
rate against its band, and (``--exact``, default on) the error of the report's novelty scores against exact
search over the WHOLE window at full length, on ``--check`` seeded rows of tonight:

* reduced: what the novelty rate uses (64-d PCA space, against the window's sample);
* sample: full length against the sample (what the top-k shown are re-scored with);
* each against exact: Spearman rank correlation, mean |error| (in 1 - cosine), and how the 24 rows shown rank
  among the check rows by their exact score.

``--distinct_window_nights N`` writes N distinct window nights and hard-links the others to them (a 7M-row
window is 57 GB of Parquet; linked nights keep the disk to (N + 1) x the night's size). The reads are the
same; repeated files may be served from the page cache, which a real window's would not.

The generator (``World``, ``write_night``) is also what tests/test_report.py builds its nights with.
"""

from __future__ import annotations

import argparse
import datetime as dt
import json
import os
import shutil
import sys
import tempfile
import time
from dataclasses import dataclass

import numpy as np

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
sys.path.insert(0, ROOT)

MODEL_ID = "synthetic/resnet50-like/dim={dim}"
CHUNK = 50_000


@dataclass
class World:
    """Clusters as devtools/synthetic.py draws them (a curved 2-parameter patch around each centre in a shared
    low-rank subspace, isotropic noise, ReLU), kept so that any night can draw any mix of them."""

    dim: int
    basis: np.ndarray  # (rank, dim)
    centres: np.ndarray  # (clusters, rank)
    bend: np.ndarray  # (clusters, 3, rank)

    @classmethod
    def make(cls, dim: int = 2048, clusters: int = 13, seed: int = 0, rank: int = 64) -> World:
        rng = np.random.default_rng(seed)
        basis = np.linalg.qr(rng.normal(size=(dim, rank)))[0].T
        return cls(dim, basis, rng.normal(scale=6.0, size=(clusters, rank)), rng.normal(size=(clusters, 3, rank)))

    def draw(self, labels: np.ndarray, rng: np.random.Generator) -> np.ndarray:
        rows, rank = len(labels), self.basis.shape[0]
        t = rng.uniform(-1, 1, size=(rows, 2))
        local = (
            self.centres[labels]
            + t[:, :1] * self.bend[labels, 0]
            + t[:, 1:] * self.bend[labels, 1]
            + (t[:, :1] ** 2) * self.bend[labels, 2]
            + rng.normal(scale=0.05, size=(rows, rank))
        )
        x = (local @ self.basis).astype(np.float32) * np.float32(np.sqrt(self.dim / rank)) + np.float32(0.5)
        x += np.float32(0.02) * rng.standard_normal(size=(rows, self.dim), dtype=np.float32)
        return np.maximum(x, 0.0, out=x)


def night_labels(rows: int, weights: np.ndarray, seed: int) -> np.ndarray:
    """Each row's cluster, drawn with ``weights`` and shuffled (files are not sorted by cluster)."""
    rng = np.random.default_rng([seed, 11])
    return rng.choice(len(weights), size=rows, p=np.asarray(weights, float) / np.sum(weights))


def default_uri(ds: str, label: int, i: int) -> str:
    return f"/synthetic/ds={ds}/c{label:02d}/img_{i:07d}.jpg"


def write_night(
    out_dir: str,
    world: World,
    labels: np.ndarray,
    ds: str,
    seed: int,
    model_id: str | None = None,
    uri=default_uri,
    files: int = 2,
    row_group: int = 2048,
) -> list[str]:
    """Rows of ``labels`` as extraction output (``embeddings-*.parquet`` and a manifest) in ``out_dir``,
    generated and written in chunks (1M x 2048 never sits in memory). URIs come from ``uri(ds, label, i)``."""
    import pyarrow as pa
    import pyarrow.parquet as pq

    from beam_jobs.contract import EMBEDDING_COLUMNS
    from beam_jobs.storage import arrow_schema

    model_id = model_id or MODEL_ID.format(dim=world.dim)
    os.makedirs(out_dir, exist_ok=True)
    schema = arrow_schema(EMBEDDING_COLUMNS)
    rng = np.random.default_rng([seed, 7])
    paths = []
    for f, part in enumerate(np.array_split(np.arange(len(labels)), files)):
        path = os.path.join(out_dir, f"embeddings-{f:05d}-of-{files:05d}.parquet")
        with pq.ParquetWriter(path, schema, compression="none") as writer:
            for start in range(0, len(part), CHUNK):
                rows = part[start : start + CHUNK]
                x = world.draw(labels[rows], rng)
                offsets = pa.array(np.arange(0, (len(rows) + 1) * world.dim, world.dim, dtype=np.int32))
                table = pa.Table.from_arrays(
                    [
                        pa.array([uri(ds, int(labels[i]), int(i)) for i in rows], pa.string()),
                        pa.ListArray.from_arrays(offsets, pa.array(x.reshape(-1), pa.float32())),
                        pa.array([model_id] * len(rows), pa.string()),
                        pa.array([f"{ds}-{i:058d}" for i in rows], pa.string()),
                        pa.array(np.full(len(rows), 224, np.int32)),
                        pa.array(np.full(len(rows), 224, np.int32)),
                        pa.array([f"synthetic__{ds}"] * len(rows), pa.string()),
                    ],
                    schema=schema,
                )
                writer.write_table(table, row_group_size=row_group)
        paths.append(path)
    manifest = {
        "job": "extract_embeddings",
        "run_id": f"synthetic__{ds}",
        "inputs": len(labels),
        "embedded": len(labels),
        "failed": 0,
        "failures_by_reason": {},
        "model": "synthetic",
        "model_id": model_id,
        "embedding_dim": world.dim,
        "seconds": 1.0,
    }
    with open(os.path.join(out_dir, "manifest.json"), "w") as handle:
        json.dump(manifest, handle)
    return paths


def planted_label(uri: str) -> int:
    return int(uri.rsplit("/c", 1)[1].split("/", 1)[0])


# --------------------------------------------------------------------------- the benchmark


def exact_whole_window(queries: np.ndarray, nights: dict[str, list[str]], model_id: str, dim: int) -> np.ndarray:
    """1 - cosine to the nearest row of every window night, at full length (streamed)."""
    from beam_jobs.report import vectors as vec

    best = np.full(len(queries), -np.inf, np.float32)
    for files in nights.values():
        for block in vec.iter_blocks(files, model_id, 16_384, dim):
            np.maximum(best, (queries @ block.x.T).max(axis=1), out=best)
    return 1.0 - best


def measure_error(root: str, ds: str, report: dict, check: int, nights: dict[str, list[str]]) -> dict:
    """The report's reduced and sample scores against exact search over the whole window, on seeded rows."""
    from scipy.stats import spearmanr

    from beam_jobs.contract import embeddings_dir
    from beam_jobs.report import novelty as nov
    from beam_jobs.report import vectors as vec
    from beam_jobs.report.analysis import analyse
    from beam_jobs.report.config import ReportConfig

    cfg, _ = ReportConfig.parse(["--output_root", root, "--ds", ds])
    files = vec.embedding_files(embeddings_dir(root, ds))
    model_id = report["model_id"]
    rows = vec.model_rows(files)[model_id]
    t0 = time.perf_counter()
    state = analyse(cfg, model_id, files, rows, nights, keep=True).state
    pca, window = state["pca"], state["window"]
    queries, _ = vec.sample_rows(files, model_id, pca.mean.shape[0], rows, check, cfg.block_rows, seed=99)
    shown = {item["image_uri"] for item in report["new_tonight"]}
    shown_x = np.concatenate(
        [b.x[np.isin(b.uris, list(shown))] for b in vec.iter_blocks(files, model_id, cfg.block_rows)]
    )
    sample_p, queries_p = pca.project(window.sample.x), pca.project(queries.x)
    reduced, _ = nov.SampleIndex(sample_p, cfg.seed).nearest(queries_p)  # what the report scores with
    flat = nov.flat_index(sample_p)  # in batches of 16: faiss scans them directly (its BLAS path loses ~0.5%)
    reduced_flat = np.concatenate([nov.nearest(flat, queries_p[i : i + 16])[0] for i in range(0, len(queries_p), 16)])
    sample, _ = nov.exact_nearest(queries.x, window.sample.x)
    exact = exact_whole_window(np.concatenate([queries.x, shown_x]), nights, model_id, pca.mean.shape[0])
    exact_q, exact_shown = exact[: len(queries)], exact[len(queries) :]

    def tail_agreement(approx: np.ndarray, share: float) -> float:
        """Of the check rows in the exact top ``share``, the part also in the approximate top ``share``."""
        n = max(1, round(share * len(exact_q)))
        return round(len(set(np.argsort(-approx)[:n]) & set(np.argsort(-exact_q)[:n])) / n, 4)

    return {
        "check_rows": len(queries),
        "reduced_spearman": round(float(spearmanr(reduced, exact_q).statistic), 4),
        "reduced_flat_spearman": round(float(spearmanr(reduced_flat, exact_q).statistic), 4),
        "ivf_found_nearest": round(float(np.mean(reduced <= reduced_flat * 1.001 + 1e-9)), 4),
        "reduced_mean_abs_error": round(float(np.mean(np.abs(reduced - exact_q))), 5),
        "sample_spearman": round(float(spearmanr(sample, exact_q).statistic), 4),
        "sample_mean_abs_error": round(float(np.mean(np.abs(sample - exact_q))), 5),
        "reduced_top10pct_agreement": tail_agreement(reduced, 0.10),
        "sample_top10pct_agreement": tail_agreement(sample, 0.10),
        "reduced_top1pct_agreement": tail_agreement(reduced, 0.01),
        "sample_top1pct_agreement": tail_agreement(sample, 0.01),
        "shown_min_exact_percentile": round(float((exact_q < exact_shown.min()).mean() * 100), 2),
        "seconds": round(time.perf_counter() - t0, 1),
    }


def build(root: str, rows: int, window_nights: int, distinct: int, dim: int, planted: float, ds: str) -> dict:
    world = World.make(dim=dim, clusters=13, seed=0)
    weights = np.r_[np.ones(12), 0.0]
    day = dt.date.fromisoformat(ds)
    nights: dict[str, list[str]] = {}
    first: list[str] = []
    for back in range(window_nights, 0, -1):
        night = (day - dt.timedelta(days=back)).isoformat()
        folder = os.path.join(root, "embeddings", f"ds={night}")
        index = window_nights - back
        if index < distinct:
            paths = write_night(folder, world, night_labels(rows, weights, index), night, seed=index)
            first.append(folder)
        else:  # a hard-linked copy of a distinct night (same rows, other night)
            source = first[index % len(first)]
            os.makedirs(folder)
            for name in os.listdir(source):
                os.link(os.path.join(source, name), os.path.join(folder, name))
            paths = sorted(os.path.join(folder, n) for n in os.listdir(folder) if n.endswith(".parquet"))
        nights[night] = paths
    tonight = np.r_[np.ones(12) * (1 - planted) / 12, planted]
    write_night(os.path.join(root, "embeddings", f"ds={ds}"), world, night_labels(rows, tonight, 100), ds, seed=100)
    return nights


# Like scripts/benchutil.py's wrapper, plus the child's CPU seconds (user + system): on a shared 2-core machine the
# wall time depends on what else runs, the CPU time much less.
MEASURE = (
    "import resource, subprocess, sys, time\n"
    "t = time.perf_counter(); rc = subprocess.run(sys.argv[1:]).returncode\n"
    "u = resource.getrusage(resource.RUSAGE_CHILDREN)\n"
    "print('BENCH', rc, time.perf_counter() - t, u.ru_utime + u.ru_stime, u.ru_maxrss)\n"
)


def run_measured(cmd: list[str]) -> tuple[float, float, float]:
    """(wall seconds, CPU seconds, peak RSS in MB) of ``cmd`` run in a child of a fresh interpreter."""
    import subprocess

    proc = subprocess.run([sys.executable, "-c", MEASURE, *cmd], capture_output=True, text=True, cwd=ROOT)
    line = [ln for ln in proc.stdout.splitlines() if ln.startswith("BENCH")]
    if proc.returncode or not line or line[-1].split()[1] != "0":
        sys.stderr.write(proc.stderr[-4000:])
        raise SystemExit(f"failed: {' '.join(cmd)}")
    _, _, wall, cpu, rss_kb = line[-1].split()
    return float(wall), float(cpu), int(rss_kb) / 1024


def existing_nights(root: str, ds: str, window_nights: int) -> dict[str, list[str]]:
    day = dt.date.fromisoformat(ds)
    out = {}
    for back in range(window_nights, 0, -1):
        night = (day - dt.timedelta(days=back)).isoformat()
        folder = os.path.join(root, "embeddings", f"ds={night}")
        out[night] = sorted(os.path.join(folder, n) for n in os.listdir(folder) if n.endswith(".parquet"))
    return out


def main(argv: list[str] | None = None) -> int:
    from scripts.benchutil import cpu_flags

    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--rows", type=int, default=100_000, help="rows per night (tonight and each earlier night)")
    parser.add_argument("--window_nights", type=int, default=7)
    parser.add_argument("--distinct_window_nights", type=int, default=0, help="0: all distinct")
    parser.add_argument("--dim", type=int, default=2048)
    parser.add_argument("--planted", type=float, default=0.07, help="share of tonight's rows in a new cluster")
    parser.add_argument("--check", type=int, default=1000, help="rows of tonight searched exactly")
    parser.add_argument("--exact", action=argparse.BooleanOptionalAction, default=True)
    parser.add_argument("--report_args", default="", help="more flags for the report, e.g. '--threads 1'")
    parser.add_argument("--reuse", action="store_true", help="with --keep: the data is already there, do not write it")
    parser.add_argument("--keep", help="write the data here and keep it (default: a temporary folder, removed)")
    args = parser.parse_args(argv)
    ds = "2026-11-20"
    root = args.keep or tempfile.mkdtemp(prefix="bench-report-")
    try:
        t0 = time.perf_counter()
        distinct = args.distinct_window_nights or args.window_nights
        print(f"# {cpu_flags()}")
        if args.reuse and args.keep:
            nights = existing_nights(root, ds, args.window_nights)
        else:
            nights = build(root, args.rows, args.window_nights, distinct, args.dim, args.planted, ds)
            print(f"wrote {args.window_nights} window nights ({distinct} distinct) + tonight of {args.rows:,} rows x "
                  f"{args.dim} in {time.perf_counter() - t0:.0f} s")  # fmt: skip
        cmd = [sys.executable, "-m", "beam_jobs.report", "--output_root", root, "--ds", ds, "--run_id", "bench"]
        cmd += args.report_args.split()
        load = os.getloadavg()[0]
        wall, cpu, rss = run_measured(cmd)
        with open(os.path.join(root, "reports", f"ds={ds}", "report.json")) as handle:
            report = json.load(handle)
        novelty = report["novelty"]
        planted = sum(planted_label(item["image_uri"]) == 12 for item in report["new_tonight"])
        figures = {
            "rows_tonight": args.rows,
            "window_rows": novelty["window_rows"],
            "wall_s": round(wall, 1),
            "cpu_s": round(cpu, 1),
            "load_average_before_after": [round(load, 1), round(os.getloadavg()[0], 1)],
            "peak_rss_mb": round(rss),
            "phases_s": novelty["phases"],
            "sample_rows": novelty["sample_rows"],
            "planted_in_top": f"{planted}/{len(report['new_tonight'])}",
            "novelty_rate": novelty["rate"],
            "band": novelty["band"],
            "status": novelty["status"],
            "check_in_report": novelty["check"],
            "top_mover": report["clusters"][0] if report["clusters"] else None,
            "html_bytes": report["html_bytes"],
        }
        figures["top_mover"] = {k: figures["top_mover"][k] for k in ("cluster", "share_window", "share_tonight")}
        if args.exact:
            figures["against_whole_window"] = measure_error(root, ds, report, args.check, nights)
        print(json.dumps(figures, indent=2))
    finally:
        if not args.keep:
            shutil.rmtree(root, ignore_errors=True)
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
