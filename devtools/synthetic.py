"""Synthetic embeddings in the extraction job's output format, for reduce_dim tests and benchmarks.

    python -m devtools.synthetic --out /tmp/emb/ds=2026-11-20 --rows 100000 [--dim 2048] [--clusters 12]

Shaped like pooled CNN features rather than white noise: each cluster is a
small curved patch (a 2-parameter manifold) around its own centre in a
shared low-rank subspace, plus isotropic noise, passed through ReLU (pooled
ResNet features are non-negative). Deterministic for a given seed.
"""

from __future__ import annotations

import argparse
import os

import numpy as np

SYNTHETIC_MODEL_ID = "synthetic/dim={dim}/seed={seed}"


def clustered_embeddings(
    rows: int, dim: int = 2048, clusters: int = 12, seed: int = 0, rank: int = 64, spread: float = 1.0
) -> tuple[np.ndarray, np.ndarray]:
    """(rows, dim) float32 embeddings and the cluster label of each row."""
    rng = np.random.default_rng(seed)
    basis = np.linalg.qr(rng.normal(size=(dim, rank)))[0].T  # (rank, dim), orthonormal rows
    centres = rng.normal(scale=6.0, size=(clusters, rank))
    bend = rng.normal(size=(clusters, 3, rank))
    labels = np.sort(rng.integers(0, clusters, size=rows))
    t = rng.uniform(-1, 1, size=(rows, 2))
    local = (
        centres[labels]
        + spread * (t[:, :1] * bend[labels, 0] + t[:, 1:] * bend[labels, 1] + (t[:, :1] ** 2) * bend[labels, 2])
        + rng.normal(scale=0.05, size=(rows, rank))
    )
    x = local @ basis * np.sqrt(dim / rank) + 0.5 + rng.normal(scale=0.02, size=(rows, dim))
    return np.maximum(x, 0.0).astype(np.float32), labels


def write_embeddings(
    out_dir: str, x: np.ndarray, model_id: str, files: int = 2, prefix: str = "synthetic", run_id: str = "synthetic"
) -> list[str]:
    """Write rows as extraction output: ``embeddings-*.parquet`` (same schema) in ``out_dir``."""
    import pyarrow as pa
    import pyarrow.parquet as pq

    from beam_jobs.contract import EMBEDDING_COLUMNS
    from beam_jobs.storage import arrow_schema

    os.makedirs(out_dir, exist_ok=True)
    n, dim = x.shape
    paths = []
    for i, part in enumerate(np.array_split(np.arange(n), files)):
        flat = pa.array(x[part].reshape(-1), pa.float32())
        offsets = pa.array(np.arange(0, (len(part) + 1) * dim, dim, dtype=np.int32))
        table = pa.Table.from_arrays(
            [
                pa.array([f"/synthetic/{prefix}/img_{j:07d}.jpg" for j in part], pa.string()),
                pa.ListArray.from_arrays(offsets, flat),
                pa.array([model_id] * len(part), pa.string()),
                pa.array([f"{j:064x}" for j in part], pa.string()),
                pa.array([224] * len(part), pa.int32()),
                pa.array([224] * len(part), pa.int32()),
                pa.array([run_id] * len(part), pa.string()),
            ],
            schema=arrow_schema(EMBEDDING_COLUMNS),
        )
        path = os.path.join(out_dir, f"embeddings-{i:05d}-of-{files:05d}.parquet")
        # As the extraction job writes them (Beam's WriteToParquet default codec is none):
        # the benchmark reads files shaped like real output.
        pq.write_table(table, path, row_group_size=8192, compression="none")
        paths.append(path)
    return paths


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(prog="python -m devtools.synthetic", description=__doc__.splitlines()[0])
    parser.add_argument("--out", required=True)
    parser.add_argument("--rows", type=int, default=20_000)
    parser.add_argument("--dim", type=int, default=2048)
    parser.add_argument("--clusters", type=int, default=12)
    parser.add_argument("--files", type=int, default=4)
    parser.add_argument("--seed", type=int, default=0)
    args = parser.parse_args(argv)
    x, _ = clustered_embeddings(args.rows, args.dim, args.clusters, args.seed)
    paths = write_embeddings(args.out, x, SYNTHETIC_MODEL_ID.format(dim=args.dim, seed=args.seed), args.files)
    print(f"wrote {args.rows} rows x {args.dim} in {len(paths)} files under {args.out}")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
