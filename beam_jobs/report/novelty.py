"""New tonight: each row's distance to its nearest neighbour among the earlier nights, the novelty rate and its band.

The search runs on reduced vectors against a sample, so a window of millions of 2048-d rows is never held:

* the window is a seeded uniform sample (``vectors.sample_nights``, default 50,000 rows) of the earlier
  nights' rows, plus a few held-out rows per night;
* every vector is L2-normalised and projected on the top PCA axes (default 64) of a pooled sample of the
  window and tonight (tonight's own new directions are among the axes, so a new kind of image does not
  vanish in the projection);
* each of tonight's rows is scored against the sample with a faiss search in that space: score =
  |a - b|^2 / 2, which for unit vectors is 1 - cosine similarity (the projection only shortens distances,
  so the reduced score is a lower bound of the full one). A sample of 20,000 rows or more is searched with
  an inverted-file index (``IndexIVFFlat``, ~48 rows per list, 1 list in 64 probed, at least 8; 5-9x less
  CPU than the exact scan at 50,000 rows; on the benchmark's clustered vectors it found the nearest row, or
  one as near, for ~99% of tonight's rows, and more probes did not raise that):
  a missed nearest row only makes a score larger, so the most novel rows are never lost, only joined by
  a few false candidates that the exact re-scoring below drops; the threshold is found with the same index;
* the rows with the highest reduced scores (20 x top_k, at least 1,000) are re-scored exactly, at full
  length, against the sample: the page shows those exact scores, best first.

The novelty rate is the share of tonight's rows whose reduced score exceeds the threshold, the 99th
percentile of the held-out window rows' scores against the sample: about 1% when tonight is like the
window (held-out rows and tonight's rows are then exchangeable draws), the share of the new kind when one
appears. Its usual level: the same rate for each earlier night against the sample of the other nights
(leave one night out), their median; the band is the median +- 3 sigma, sigma the larger of the nights'
spread (1.4826 x MAD) and the binomial noise of a held-out night's rate.
"""

from __future__ import annotations

import math
from dataclasses import dataclass, field
from typing import Any

import numpy as np

QUANTILE = 0.99
BAND_SIGMAS = 3.0
SEARCH_BLOCK = 16_384
IVF_FROM = 20_000  # sample rows from which tonight is searched with an IVF index (exactly below)
ROWS_PER_LIST = 48
PROBE_SHARE = 64  # lists probed: 1 in this many (at least 8)


def flat_index(x: np.ndarray):
    import faiss

    index = faiss.IndexFlatL2(x.shape[1])
    if len(x):
        index.add(np.ascontiguousarray(x, dtype=np.float32))
    return index


def nearest(index, queries: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
    """(score = squared distance / 2, position) of each query's nearest row of ``index`` (exact)."""
    scores = np.empty(len(queries), np.float32)
    ids = np.empty(len(queries), np.int64)
    for start in range(0, len(queries), SEARCH_BLOCK):
        chunk = np.ascontiguousarray(queries[start : start + SEARCH_BLOCK], dtype=np.float32)
        dist, found = index.search(chunk, 1)
        scores[start : start + len(chunk)] = np.maximum(dist[:, 0], 0.0) / 2.0
        ids[start : start + len(chunk)] = found[:, 0]
    return scores, ids


class SampleIndex:
    """What tonight's rows are scored against: the reduced sample, exactly below ``IVF_FROM`` rows, else IVF
    (a query whose probed lists are all empty falls back to the exact scan)."""

    def __init__(self, x: np.ndarray, seed: int = 0):
        import faiss

        self.flat = flat_index(x)
        self.kind, self.nlist, self.nprobe = "flat", 0, 0
        self.ivf = None
        if len(x) >= IVF_FROM:
            self.nlist = int(min(4096, max(64, 2 ** round(math.log2(len(x) / ROWS_PER_LIST)))))
            self.nprobe = max(8, self.nlist // PROBE_SHARE)
            self.ivf = faiss.IndexIVFFlat(faiss.IndexFlatL2(x.shape[1]), x.shape[1], self.nlist)
            self.ivf.cp.seed = int(seed) + 17
            self.ivf.train(np.ascontiguousarray(x, dtype=np.float32))
            self.ivf.add(np.ascontiguousarray(x, dtype=np.float32))
            self.ivf.nprobe = self.nprobe
            self.kind = "ivf"

    def nearest(self, queries: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
        if self.ivf is None:
            return nearest(self.flat, queries)
        scores, ids = nearest(self.ivf, queries)
        missed = ids < 0
        if missed.any():
            scores[missed], ids[missed] = nearest(self.flat, queries[missed])
        return scores, ids

    def describe(self) -> dict[str, Any]:
        return {"index": self.kind, "nlist": self.nlist, "nprobe": self.nprobe}


def exact_nearest(queries: np.ndarray, rows: np.ndarray, block: int = 8192) -> tuple[np.ndarray, np.ndarray]:
    """(1 - cosine similarity, position) of each unit query's nearest unit row, at full length."""
    best = np.full(len(queries), -np.inf, np.float32)
    where = np.zeros(len(queries), np.int64)
    for start in range(0, len(rows), block):
        sims = queries @ rows[start : start + block].T
        top = sims.argmax(axis=1)
        value = sims[np.arange(len(queries)), top]
        better = value > best
        best[better] = value[better]
        where[better] = start + top[better]
    return np.clip(1.0 - best, 0.0, 2.0).astype(np.float32), where


@dataclass
class Calibration:
    """The threshold, and the usual level of the rate from the earlier nights (leave one night out)."""

    threshold: float
    held_scores: np.ndarray
    per_night: dict[str, float] = field(default_factory=dict)
    usual: float | None = None
    band: tuple[float, float] | None = None
    sigma: float | None = None

    def status(self, rate: float) -> str:
        """'above', 'below' or 'within' its usual band ('unknown' without one)."""
        if self.band is None:
            return "unknown"
        if rate > self.band[1]:
            return "above"
        return "below" if rate < self.band[0] else "within"


def calibrate(
    sample_p: np.ndarray, sample_ds: np.ndarray, held_p: np.ndarray, held_ds: np.ndarray, index: SampleIndex
) -> Calibration:
    """Threshold from the held-out rows against the whole sample (searched as tonight is, with ``index``); each
    night's rate against the other nights (exactly: the held-out rows are few)."""
    held_scores, _ = index.nearest(held_p)
    threshold = float(np.quantile(held_scores, QUANTILE)) if len(held_scores) else float("inf")
    out = Calibration(threshold, held_scores)
    nights = sorted(set(held_ds.tolist()))
    if len(nights) < 2:
        return out
    sizes = []
    for night in nights:
        others = sample_ds != night
        mine = held_ds == night
        if not others.any() or mine.sum() == 0 or (~mine).sum() < 20:
            continue
        scores, _ = nearest(flat_index(sample_p[others]), held_p)
        cut = float(np.quantile(scores[~mine], QUANTILE))
        out.per_night[night] = round(float((scores[mine] > cut).mean()), 6)
        sizes.append(int(mine.sum()))
    if len(out.per_night) < 2:
        return out
    rates = np.array(list(out.per_night.values()))
    usual = float(np.median(rates))
    q = max(usual, 1.0 - QUANTILE)
    spread = 1.4826 * float(np.median(np.abs(rates - usual)))
    binomial = float(np.sqrt(q * (1 - q) / max(float(np.median(sizes)), 1.0)))
    sigma = max(spread, binomial)
    out.usual = round(usual, 6)
    out.sigma = round(sigma, 6)
    out.band = (round(max(0.0, usual - BAND_SIGMAS * sigma), 6), round(usual + BAND_SIGMAS * sigma, 6))
    return out


@dataclass
class Candidates:
    """The ``capacity`` rows of tonight with the highest reduced scores seen so far, with their full vectors."""

    capacity: int
    scores: np.ndarray = field(default_factory=lambda: np.empty(0, np.float32))
    uris: np.ndarray = field(default_factory=lambda: np.empty(0, object))
    x: np.ndarray | None = None

    def add(self, scores: np.ndarray, uris: np.ndarray, x: np.ndarray) -> None:
        if len(scores) > self.capacity:
            top = np.argpartition(-scores, self.capacity - 1)[: self.capacity]
            scores, uris, x = scores[top], uris[top], x[top]
        if self.x is None:
            self.scores, self.uris, self.x = scores.copy(), uris.copy(), x.copy()
        else:
            self.scores = np.concatenate([self.scores, scores])
            self.uris = np.concatenate([self.uris, uris])
            self.x = np.concatenate([self.x, x])
        if len(self.scores) > self.capacity:
            top = np.argpartition(-self.scores, self.capacity - 1)[: self.capacity]
            self.scores, self.uris, self.x = self.scores[top], self.uris[top], self.x[top]


def rank_exactly(candidates: Candidates, sample_x: np.ndarray, top_k: int) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    """Positions (into the candidates) of the ``top_k`` most novel at full length, their exact scores and
    their nearest sample rows, most novel first (ties by URI)."""
    if candidates.x is None or not len(candidates.scores):
        empty = np.empty(0, np.int64)
        return empty, np.empty(0, np.float32), empty
    exact, nearest_row = exact_nearest(candidates.x, sample_x)
    order = sorted(range(len(exact)), key=lambda i: (-round(float(exact[i]), 6), str(candidates.uris[i])))[:top_k]
    order = np.asarray(order, np.int64)
    return order, exact[order], nearest_row[order]


def search_error(reduced: np.ndarray, exact: np.ndarray, top_reduced: set[str], top_exact: set[str]) -> dict[str, Any]:
    """How far the reduced search is from exact search against the same sample: rank correlation and error of
    the scores on a seeded check sample of tonight, and the overlap of the top-k chosen each way."""
    from scipy.stats import spearmanr

    out: dict[str, Any] = {"rows": len(exact)}
    if len(exact) >= 3:
        rho = spearmanr(reduced, exact).statistic
        out["spearman"] = round(float(rho), 4) if np.isfinite(rho) else None
        out["mean_abs_error"] = round(float(np.mean(np.abs(exact - reduced))), 6)
        positive = exact > 1e-6
        ratio = reduced[positive] / exact[positive]
        out["median_ratio"] = round(float(np.median(ratio)), 4) if positive.any() else None
    if top_exact:
        out["top_k_overlap"] = round(len(top_reduced & top_exact) / len(top_exact), 4)
    return out
