"""Pure numerical helpers for reduce_dim: PCA from sufficient statistics, seeded sampling, UMAP.

Nothing here knows about Beam; ``fit.py`` wraps these in CombineFns and DoFns.

PCA precision. Each block's Gram matrix is computed in float32 (BLAS syrk,
~1.6x the speed of float64 here) on rows shifted by a reference mean, so the
products are of centred values and do not lose digits to a large common
offset; blocks are then summed in float64. Statistics with different shifts
are merged exactly by re-basing one onto the other's shift.
"""

from __future__ import annotations

import hashlib
import sys
from dataclasses import dataclass, field
from typing import Any

import numpy as np

# Rows a fit needs, the least that works (found by trying: tests/test_reduction.py).
# PCA: the sample covariance divides by n - 1. UMAP: umap-learn's spectral initialisation
# asks scipy for n_components + 1 = 3 eigenvectors, which needs more than 3 rows
# ("Cannot use scipy.linalg.eigh for sparse A with k >= N" on 3), whatever n_neighbors is.
PCA_MIN_ROWS = 2
UMAP_MIN_ROWS = 4
MIN_FIT_ROWS = {"pca": PCA_MIN_ROWS, "umap": UMAP_MIN_ROWS}


@dataclass
class GramStats:
    """Count, sum and X^T X of rows seen so far, about a fixed ``shift`` (float64)."""

    dim: int = 0
    n_rows: int = 0
    shift: np.ndarray | None = None
    total: np.ndarray | None = None  # sum of (x - shift)
    gram: np.ndarray | None = None  # sum of (x - shift)(x - shift)^T

    def add_block(self, x: np.ndarray) -> GramStats:
        if x.ndim != 2 or x.shape[0] == 0:
            return self
        if self.n_rows == 0 and self.shift is None:
            self.dim = x.shape[1]
            self.shift = x.mean(axis=0, dtype=np.float64)
            self.total = np.zeros(self.dim, np.float64)
            self.gram = np.zeros((self.dim, self.dim), np.float64)
        if x.shape[1] != self.dim:
            raise ValueError(f"embedding length {x.shape[1]} differs from {self.dim} seen before")
        y = np.asarray(x, np.float32) - self.shift.astype(np.float32)
        self.total += y.sum(axis=0, dtype=np.float64)
        # y.T @ y on the same buffer: numpy dispatches this to BLAS syrk.
        self.gram += y.T @ y
        self.n_rows += x.shape[0]
        return self

    def merge(self, other: GramStats) -> GramStats:
        if other.n_rows == 0:
            return self
        if self.n_rows == 0:
            return other
        if other.dim != self.dim:
            raise ValueError(f"embedding length {other.dim} differs from {self.dim} seen before")
        # Re-base other's sums from its shift c2 onto ours c1: y1 = y2 + d with d = c2 - c1.
        d = other.shift - self.shift
        t2 = other.total
        self.gram += other.gram + np.outer(d, t2) + np.outer(t2, d) + other.n_rows * np.outer(d, d)
        self.total += t2 + other.n_rows * d
        self.n_rows += other.n_rows
        return self

    def mean(self) -> np.ndarray:
        return self.shift + self.total / self.n_rows

    def covariance(self) -> np.ndarray:
        """Sample covariance (ddof=1, as scikit-learn's PCA)."""
        if self.n_rows < PCA_MIN_ROWS:
            raise ValueError(f"PCA needs at least {PCA_MIN_ROWS} rows, got {self.n_rows}")
        mu = self.total / self.n_rows
        cov = (self.gram - self.n_rows * np.outer(mu, mu)) / (self.n_rows - 1)
        return (cov + cov.T) / 2


@dataclass
class PCAModel:
    mean: np.ndarray  # (d,) float64
    components: np.ndarray  # (n_components, d) float64, rows are unit vectors
    explained_variance: np.ndarray  # (n_components,)
    explained_variance_ratio: np.ndarray  # (n_components,)
    n_rows: int

    def transform(self, x: np.ndarray) -> np.ndarray:
        """(rows, d) -> (rows, n_components) float32 scores."""
        centred = np.asarray(x, np.float32) - self.mean.astype(np.float32)
        return centred @ self.components.T.astype(np.float32)


def fit_pca(stats: GramStats, n_components: int) -> PCAModel:
    """Top components of the covariance by one symmetric eigendecomposition (LAPACK syevr)."""
    from scipy.linalg import eigh

    cov = stats.covariance()
    d = cov.shape[0]
    kept = min(n_components, d)
    values, vectors = eigh(cov, subset_by_index=[d - kept, d - 1])
    order = np.argsort(values)[::-1]
    values = np.clip(values[order], 0.0, None)
    components = vectors[:, order].T.copy()
    # scikit-learn's convention (svd_flip, v-based): the largest-magnitude loading of each
    # component is positive, so runs and libraries agree on orientation.
    signs = np.sign(components[np.arange(kept), np.argmax(np.abs(components), axis=1)])
    signs[signs == 0] = 1.0
    components *= signs[:, None]
    total_variance = float(np.trace(cov))
    ratio = values / total_variance if total_variance > 0 else np.zeros_like(values)
    return PCAModel(stats.mean(), components, values, ratio, stats.n_rows)


# --------------------------------------------------------------------------- sampling


def row_priority(uris: list[str] | np.ndarray, seed: int) -> np.ndarray:
    """A seeded pseudo-random uint64 per URI, independent of order and batching.

    Keeping the rows with the smallest priorities gives the same sample however the rows
    are split across files, bundles and workers.
    """
    salt = int(seed).to_bytes(8, "little", signed=True)
    out = np.empty(len(uris), np.uint64)
    for i, uri in enumerate(uris):
        out[i] = int.from_bytes(hashlib.blake2b(str(uri).encode("utf-8"), digest_size=8, salt=salt).digest(), "little")
    return out


@dataclass
class Sample:
    """The ``capacity`` rows with the smallest priority seen so far; columns are parallel arrays."""

    capacity: int
    priority: np.ndarray = field(default_factory=lambda: np.empty(0, np.uint64))
    columns: dict[str, np.ndarray] = field(default_factory=dict)
    # Trim once more than capacity * slack rows are held: fewer, larger trims (a 200k-row map sample
    # trimmed on every block cost ~4 s at 1M rows in fancy indexing). 1.0: always at most capacity.
    slack: float = 1.0
    cut: int | None = None  # the largest priority kept by the last trim: a row above it can never be kept

    def add(self, priority: np.ndarray, **columns: np.ndarray) -> Sample:
        if self.capacity > 0 and (self.cut is not None or len(self.priority) >= self.capacity):
            # Full: only rows at or below the cut can enter; skip copying the rest.
            limit = self.cut if self.cut is not None else self.priority.max()
            keep = priority <= limit
            if not keep.all():
                priority = priority[keep]
                columns = {name: col[keep] for name, col in columns.items()}
        if len(priority) == 0 or self.capacity == 0:
            return self
        if not self.columns:
            self.priority, self.columns = priority, dict(columns)
        else:
            self.priority = np.concatenate([self.priority, priority])
            self.columns = {name: np.concatenate([self.columns[name], columns[name]]) for name in self.columns}
        return self._trim() if len(self.priority) > self.capacity * self.slack else self

    def merge(self, other: Sample) -> Sample:
        if other.cut is not None:  # the union keeps capacity rows at or below either cut
            self.cut = other.cut if self.cut is None else min(self.cut, other.cut)
        return self.add(other.priority, **other.columns) if other.columns else self

    def _order(self) -> np.ndarray:
        # Stable sort on priority, then URI as a tie-break: deterministic whatever the merge order.
        keys = self.columns.get("image_uri")
        return np.lexsort((keys, self.priority)) if keys is not None else np.argsort(self.priority, kind="stable")

    def _trim(self) -> Sample:
        if len(self.priority) > self.capacity:
            # Partition, not sort: at 200k kept rows a full sort per block made the sample the job's slowest step.
            # Ties at the cut are broken by URI, as in _order, so the kept set does not depend on merge order.
            cut = np.partition(self.priority, self.capacity - 1)[self.capacity - 1]
            below = np.flatnonzero(self.priority < cut)
            at = np.flatnonzero(self.priority == cut)
            if len(below) + len(at) > self.capacity:
                keys = self.columns.get("image_uri")
                if keys is not None:
                    at = at[np.argsort(keys[at], kind="stable")]
                at = at[: self.capacity - len(below)]
            keep = np.concatenate([below, at])
            self.cut = int(cut)
            self.priority = self.priority[keep]
            self.columns = {name: col[keep] for name, col in self.columns.items()}
        return self

    def sorted(self) -> Sample:
        self._trim()
        order = self._order()
        columns = {name: col[order] for name, col in self.columns.items()}
        return Sample(self.capacity, self.priority[order], columns, self.slack, self.cut)

    def __len__(self) -> int:
        return len(self.priority)


# --------------------------------------------------------------------------- UMAP


def import_umap():
    """umap-learn without TensorFlow.

    ``import umap`` tries ``umap.parametric_umap``, which imports TensorFlow
    (~5 s and ~500 MB here) for a class this job never uses. A ``None`` entry in
    sys.modules makes that import raise ImportError, which umap catches.
    """
    sys.modules.setdefault("umap.parametric_umap", None)
    import umap

    return umap


@dataclass
class UmapModel:
    """PCA pre-reduction (optional) + a fitted UMAP, applied to raw embeddings."""

    pca: PCAModel | None
    umap: Any
    fit_rows: int

    def features(self, x: np.ndarray) -> np.ndarray:
        return self.pca.transform(x) if self.pca is not None else np.asarray(x, np.float32)

    def transform(self, x: np.ndarray) -> np.ndarray:
        if len(x) == 0:
            return np.empty((0, 2), np.float32)
        return np.asarray(self.umap.transform(self.features(x)), np.float32)


def fit_umap(x: np.ndarray, pca: PCAModel | None, seed: int, n_neighbors: int = 15, min_dist: float = 0.1) -> UmapModel:
    """Fit UMAP on a sample of raw embeddings (after the optional PCA)."""
    features = pca.transform(x) if pca is not None else np.asarray(x, np.float32)
    if len(features) < UMAP_MIN_ROWS:
        raise ValueError(f"UMAP needs at least {UMAP_MIN_ROWS} rows to fit, got {len(features)}")
    umap = import_umap()
    reducer = umap.UMAP(
        n_components=2,
        n_neighbors=min(n_neighbors, len(features) - 1),
        min_dist=min_dist,
        # A fixed random_state makes fit and transform reproducible; umap then runs single-threaded.
        random_state=seed,
        transform_seed=seed,
        n_jobs=1,
    )
    reducer.fit(features)
    return UmapModel(pca, reducer, len(features))


def trustworthiness(high: np.ndarray, low: np.ndarray, n_neighbors: int = 10) -> float | None:
    """Trustworthiness (1.0 = local neighbourhoods kept), or None if too few rows.

    The definition and the result of ``sklearn.manifold.trustworthiness`` (the tests
    compare the two), written with numpy: importing ``sklearn.manifold`` alone took
    1.8 s, which a PCA run would otherwise pay only for this number.
    """
    # n rows and k neighbours: the symbols of the published formula (Venna and Kaski).
    n = len(high)
    k = min(n_neighbors, n // 2 - 1)
    if k < 1:
        return None
    ranks_high = _neighbour_order(np.asarray(high, np.float64))
    nearest_low = _neighbour_order(np.asarray(low, np.float64))[:, :k]
    rows = np.arange(n)[:, None]
    # rank[i, j]: 1-based rank of j among i's neighbours in the original space.
    rank = np.zeros((n, n), np.int64)
    rank[rows, ranks_high] = np.arange(1, n)
    excess = rank[rows, nearest_low] - k
    penalty = excess[excess > 0].sum()
    return float(1.0 - penalty * (2.0 / (n * k * (2.0 * n - 3.0 * k - 1.0))))


def _neighbour_order(x: np.ndarray) -> np.ndarray:
    """For each row, the other rows from nearest to farthest (self excluded, Euclidean)."""
    sq = np.einsum("ij,ij->i", x, x)
    dist = sq[:, None] + sq[None, :] - 2.0 * (x @ x.T)
    np.fill_diagonal(dist, np.inf)
    return np.argsort(dist, axis=1, kind="stable")[:, :-1]
