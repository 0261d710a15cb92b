"""How much two models' embeddings of the same images agree: pure numpy, no I/O.

Three views, each from 0 (unrelated) to 1 (the same geometry up to rotation and scale):

* kNN overlap@k: for each image, the share of its k nearest neighbours (cosine, the image
  itself left out) that both models agree on. What a search index's users see change.
* Spearman correlation of pairwise cosine distances over a seeded sample of pairs: whether
  the models rank "near" and "far" alike, beyond the top k.
* Linear CKA (Kornblith et al. 2019): similarity of the two (centred) feature spaces, invariant
  to rotations and isotropic scaling, defined across different dimensions.

All three take rows aligned by image (row i of ``a`` and ``b`` is the same image).
"""

from __future__ import annotations

import numpy as np


def l2_normalise(x: np.ndarray) -> np.ndarray:
    # float64: in float32 a rotation moves near-equal similarities by rounding, enough to swap the
    # 10th and 11th neighbour of some images and read as disagreement.
    x = np.asarray(x, dtype=np.float64)
    norms = np.linalg.norm(x, axis=1, keepdims=True)
    return x / np.maximum(norms, 1e-12)


def knn_indices(x: np.ndarray, k: int, block_rows: int = 2048) -> np.ndarray:
    """(n, k) indices of each row's k nearest other rows by cosine similarity (exact, blocked)."""
    unit = l2_normalise(x)
    n = len(unit)
    k = min(k, n - 1)
    out = np.empty((n, k), dtype=np.int64)
    for start in range(0, n, block_rows):
        sims = unit[start : start + block_rows] @ unit.T
        rows = np.arange(sims.shape[0])
        sims[rows, start + rows] = -np.inf  # never one's own neighbour
        part = np.argpartition(-sims, k - 1, axis=1)[:, :k]
        order = np.argsort(-np.take_along_axis(sims, part, axis=1), axis=1, kind="stable")
        out[start : start + len(sims)] = np.take_along_axis(part, order, axis=1)
    return out


def knn_overlap(a: np.ndarray, b: np.ndarray, k: int = 10) -> np.ndarray:
    """Per image: |kNN_a ∩ kNN_b| / k, in [0, 1]."""
    na, nb = knn_indices(a, k), knn_indices(b, k)
    k = na.shape[1]
    return np.array([len(np.intersect1d(x, y, assume_unique=True)) / k for x, y in zip(na, nb, strict=True)])


def _ranks(x: np.ndarray) -> np.ndarray:
    """Average ranks (ties share theirs), as Spearman's rho needs."""
    order = np.argsort(x, kind="mergesort")
    ranks = np.empty(len(x), dtype=np.float64)
    ranks[order] = np.arange(len(x), dtype=np.float64)
    sorted_x = x[order]
    starts = np.flatnonzero(np.r_[True, sorted_x[1:] != sorted_x[:-1]])
    ends = np.r_[starts[1:], len(x)]
    for s, e in zip(starts, ends, strict=True):
        if e - s > 1:
            ranks[order[s:e]] = (s + e - 1) / 2.0
    return ranks


def spearman(x: np.ndarray, y: np.ndarray) -> float:
    rx, ry = _ranks(np.asarray(x, np.float64)), _ranks(np.asarray(y, np.float64))
    rx -= rx.mean()
    ry -= ry.mean()
    denom = float(np.sqrt((rx * rx).sum() * (ry * ry).sum()))
    return float((rx * ry).sum() / denom) if denom > 0 else 0.0


def sample_pairs(n: int, pairs: int, seed: int) -> tuple[np.ndarray, np.ndarray]:
    """``pairs`` seeded pairs (i, j), i != j, of n rows (all of them when there are fewer)."""
    total = n * (n - 1) // 2
    if total <= pairs:
        i, j = np.triu_indices(n, k=1)
        return i, j
    rng = np.random.default_rng(seed)
    i = rng.integers(0, n, size=pairs)
    j = (i + rng.integers(1, n, size=pairs)) % n
    return i, j


def distance_spearman(a: np.ndarray, b: np.ndarray, pairs: int = 200_000, seed: int = 0) -> float:
    """Spearman correlation of the two models' cosine distances over the same seeded pairs."""
    i, j = sample_pairs(len(a), pairs, seed)
    ua, ub = l2_normalise(a), l2_normalise(b)
    da = 1.0 - np.einsum("ij,ij->i", ua[i], ua[j])
    db = 1.0 - np.einsum("ij,ij->i", ub[i], ub[j])
    return spearman(da, db)


def linear_cka(a: np.ndarray, b: np.ndarray) -> float:
    """Linear CKA of two feature matrices over the same rows: ||BᵀA||² / (||AᵀA|| ||BᵀB||), centred, float64."""
    x = np.asarray(a, np.float64)
    y = np.asarray(b, np.float64)
    x = x - x.mean(axis=0)
    y = y - y.mean(axis=0)
    cross = np.linalg.norm(y.T @ x) ** 2
    denom = np.linalg.norm(x.T @ x) * np.linalg.norm(y.T @ y)
    return float(cross / denom) if denom > 0 else 0.0


def overlap_summary(overlap: np.ndarray, k: int) -> dict:
    """Mean, quantiles and the histogram (images with 0..k shared neighbours) of per-image overlaps."""
    shared = np.rint(overlap * k).astype(int)
    return {
        "mean": round(float(overlap.mean()), 4),
        "p10": round(float(np.quantile(overlap, 0.1)), 4),
        "p50": round(float(np.quantile(overlap, 0.5)), 4),
        "p90": round(float(np.quantile(overlap, 0.9)), 4),
        "histogram": np.bincount(shared, minlength=k + 1).tolist(),
    }


def compare_pair(a: np.ndarray, b: np.ndarray, k: int = 10, pairs: int = 200_000, seed: int = 0) -> dict:
    """All three figures for two aligned embedding matrices (rows = the same images)."""
    if len(a) != len(b):
        raise ValueError(f"the two models' rows must be the same images: {len(a)} and {len(b)} rows")
    if len(a) < 3:
        raise ValueError(f"comparing needs at least 3 common images, got {len(a)}")
    k_used = min(k, len(a) - 1)
    overlap = knn_overlap(a, b, k_used)
    return {
        "images": len(a),
        "k": k_used,
        "knn_overlap": overlap_summary(overlap, k_used),
        "distance_spearman": round(distance_spearman(a, b, pairs, seed), 4),
        "linear_cka": round(linear_cka(a, b), 4),
    }
