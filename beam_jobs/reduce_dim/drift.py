"""Drift of a night's embeddings against a reference: mean shift, MMD with a permutation p-value, novelty.

Pure numpy; the reduce job calls ``drift_stats`` once, in its commit step, on seeded samples.

* ``mean_shift``: L2 distance between tonight's mean embedding and the reference's, and the same
  divided by the reference's RMS spread (``sqrt(trace of its covariance)``), so one threshold reads
  the same for every model.
* ``mmd``: the unbiased squared maximum mean discrepancy with a Gaussian kernel between tonight's
  sample and the reference's, both projected on the reference's own top PCA axes (``DriftSpace``),
  the bandwidth the median pairwise distance of the pooled sample; its p-value from
  ``permutations`` seeded label shuffles, ``(1 + #{shuffled >= observed}) / (1 + permutations)``,
  which has the nominal level under no drift (both samples exchangeable).
* ``novelty_rate``: the share of tonight's rows whose nearest reference row (same space) is farther
  than ``nn_threshold``, the 99th percentile of the reference rows' own nearest-neighbour distance
  (leave one out): about 1% when nothing is new, the new cluster's share when one appears.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any

import numpy as np

from beam_jobs.reduce_dim.reduction import GramStats, fit_pca

DRIFT_DIMS = 20  # reference PCA axes the two-sample test and the novelty rate work in
DRIFT_SAMPLE = 1000  # rows per side: the kernel matrix is (2 x this)^2
PERMUTATIONS = 200
NOVELTY_QUANTILE = 0.99


@dataclass
class DriftSpace:
    """What a reference keeps to compare later nights with it (saved with the reference reducer)."""

    mean: np.ndarray  # (d,) float64: the reference's mean embedding, over every row
    spread: float  # sqrt(trace of its covariance): the RMS distance of a row from the mean
    axes_mean: np.ndarray  # (d,) the drift PCA's centre
    axes: np.ndarray  # (k, d) its components
    sample: np.ndarray  # (m, k) float32: the reference's seeded sample on those axes
    nn_threshold: float  # NOVELTY_QUANTILE of the sample's leave-one-out nearest-neighbour distances
    rows: int  # rows the mean and spread were computed over

    def project(self, x: np.ndarray) -> np.ndarray:
        return ((np.asarray(x, np.float64) - self.axes_mean) @ self.axes.T).astype(np.float32)

    def arrays(self) -> dict[str, np.ndarray]:
        return {
            "mean": self.mean,
            "spread": np.asarray(self.spread),
            "axes_mean": self.axes_mean,
            "axes": self.axes,
            "sample": self.sample,
            "nn_threshold": np.asarray(self.nn_threshold),
            "rows": np.asarray(self.rows),
        }

    @classmethod
    def from_arrays(cls, arrays) -> DriftSpace:
        return cls(
            mean=np.asarray(arrays["mean"], np.float64),
            spread=float(arrays["spread"]),
            axes_mean=np.asarray(arrays["axes_mean"], np.float64),
            axes=np.asarray(arrays["axes"], np.float64),
            sample=np.asarray(arrays["sample"], np.float32),
            nn_threshold=float(arrays["nn_threshold"]),
            rows=int(arrays["rows"]),
        )


@dataclass
class Moments:
    """Count, sum and sum of squared norms of rows: the mean and the total variance, over every row."""

    n: int = 0
    total: np.ndarray | None = None
    squares: float = 0.0

    def add(self, x: np.ndarray) -> Moments:
        if len(x) == 0:
            return self
        x64 = np.asarray(x, np.float64)
        self.total = x64.sum(axis=0) if self.total is None else self.total + x64.sum(axis=0)
        self.squares += float(np.einsum("ij,ij->", x64, x64))
        self.n += len(x)
        return self

    def merge(self, other: Moments) -> Moments:
        if other.n == 0:
            return self
        if self.n == 0:
            return other
        self.total = self.total + other.total
        self.squares += other.squares
        self.n += other.n
        return self

    def mean(self) -> np.ndarray:
        return self.total / self.n

    def spread(self) -> float:
        """sqrt(E||x||^2 - ||E x||^2): the RMS distance of a row from the mean."""
        mu = self.mean()
        return float(np.sqrt(max(self.squares / self.n - float(mu @ mu), 0.0)))


def _pairwise_sq(a: np.ndarray, b: np.ndarray) -> np.ndarray:
    a64, b64 = np.asarray(a, np.float64), np.asarray(b, np.float64)
    sq = np.einsum("ij,ij->i", a64, a64)[:, None] + np.einsum("ij,ij->i", b64, b64)[None, :] - 2.0 * (a64 @ b64.T)
    return np.maximum(sq, 0.0)


def nearest_distances(queries: np.ndarray, points: np.ndarray, leave_one_out: bool = False) -> np.ndarray:
    """Distance from each query row to its nearest row of ``points`` (self excluded when they are the same)."""
    out = np.empty(len(queries))
    for i in range(0, len(queries), 1024):
        sq = _pairwise_sq(queries[i : i + 1024], points)
        if leave_one_out:
            rows = np.arange(sq.shape[0])
            sq[rows, rows + i] = np.inf
        out[i : i + 1024] = np.sqrt(sq.min(axis=1))
    return out


def build_drift_space(sample_x: np.ndarray, moments: Moments, dims: int = DRIFT_DIMS) -> DriftSpace:
    """The reference's drift space from its seeded sample of raw embeddings and its moments over every row."""
    x = np.asarray(sample_x, np.float32)
    stats = GramStats().add_block(x)
    k = max(1, min(dims, x.shape[1], len(x) - 1))
    pca = fit_pca(stats, k)
    space = DriftSpace(
        mean=moments.mean(),
        spread=moments.spread(),
        axes_mean=pca.mean,
        axes=pca.components,
        sample=np.empty((0, k), np.float32),
        nn_threshold=0.0,
        rows=moments.n,
    )
    space.sample = space.project(x)
    loo = nearest_distances(space.sample, space.sample, leave_one_out=True) if len(x) > 1 else np.zeros(1)
    space.nn_threshold = float(np.quantile(loo, NOVELTY_QUANTILE))
    return space


def mmd_test(a: np.ndarray, b: np.ndarray, permutations: int = PERMUTATIONS, seed: int = 0) -> tuple[float, float]:
    """(unbiased MMD^2 with a Gaussian kernel, permutation p-value) between the rows of ``a`` and ``b``."""
    n, m = len(a), len(b)
    if n < 2 or m < 2:
        return 0.0, 1.0
    pooled = np.concatenate([a, b]).astype(np.float64)
    sq = _pairwise_sq(pooled, pooled)
    off = sq[np.triu_indices(len(pooled), 1)]
    bandwidth = float(np.median(off[off > 0])) if np.any(off > 0) else 1.0
    kernel = np.exp(-sq / bandwidth)
    np.fill_diagonal(kernel, 0.0)  # unbiased: no self-pairs

    def statistic(labels: np.ndarray) -> np.ndarray:
        # labels: (N, P) 1.0 for rows of the first sample. Sums over the kernel's blocks by matrix products.
        k_labels = kernel @ labels
        xx = np.einsum("np,np->p", labels, k_labels)
        other = 1.0 - labels
        yy = np.einsum("np,np->p", other, kernel @ other)
        xy = np.einsum("np,np->p", other, k_labels)
        return xx / (n * (n - 1)) + yy / (m * (m - 1)) - 2.0 * xy / (n * m)

    observed = float(statistic(np.r_[np.ones(n), np.zeros(m)][:, None])[0])
    rng = np.random.default_rng(seed)
    base = np.r_[np.ones(n), np.zeros(m)]
    shuffled = np.stack([rng.permutation(base) for _ in range(permutations)], axis=1)
    null = statistic(shuffled)
    p_value = (1 + int(np.sum(null >= observed - 1e-12))) / (1 + permutations)
    return observed, p_value


def drift_stats(
    space: DriftSpace, sample_x: np.ndarray, moments: Moments, seed: int = 0, permutations: int = PERMUTATIONS
) -> dict[str, Any]:
    """Tonight (a seeded sample of raw embeddings, and moments over every row) against the reference."""
    tonight = space.project(sample_x)
    shift = float(np.linalg.norm(moments.mean() - space.mean))
    mmd2, p_value = mmd_test(tonight[:DRIFT_SAMPLE], space.sample[:DRIFT_SAMPLE], permutations, seed)
    novel = nearest_distances(tonight, space.sample) > space.nn_threshold if len(tonight) else np.zeros(0, bool)
    return {
        "rows": moments.n,
        "sample_rows": len(tonight),
        "reference_rows": space.rows,
        "reference_sample_rows": len(space.sample),
        "mean_shift": round(shift, 6),
        "mean_shift_relative": round(shift / space.spread, 6) if space.spread > 0 else None,
        "mmd2": round(mmd2, 8),
        "mmd_p_value": round(p_value, 6),
        "permutations": permutations,
        "dims": int(space.axes.shape[0]),
        "novelty_rate": round(float(novel.mean()), 6) if len(novel) else 0.0,
        "novelty_threshold": round(space.nn_threshold, 6),
    }
