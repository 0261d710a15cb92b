"""What grew and what shrank: k-means clusters of the window, each cluster's share tonight against the window's.

Why k-means in the report's PCA space, not density clusters on the map: the map's 2D coordinates
(UMAP especially) tear and merge neighbourhoods, and its density clusters (HDBSCAN) leave a varying
part of the rows as noise, so shares would not add up and would move with the map rather than with the
images. K-means (k-means++ seeding) in the 64-d space the novelty search already uses partitions every
row, is seeded, costs one pass, and assigns tonight's rows (all of them, exactly) with one faiss search
against k centroids. It is fitted on the window's sample pooled with a sample of tonight the size of one
night's share, so a kind of image that appears tonight can get a centroid of its own (a mover from ~0%).

Shares: tonight's are counts over every row of tonight; the window's are over its uniform sample. Movers
are ranked by the absolute change of share (percentage points), the largest first.
"""

from __future__ import annotations

import heapq
from dataclasses import dataclass, field

import numpy as np

from beam_jobs.contract import ReportCluster
from beam_jobs.report.novelty import flat_index

EXAMPLES = 6
FIT_ROWS = 60_000  # pooled rows k-means is fitted on (a seeded subsample beyond)


@dataclass
class Clustering:
    centroids: np.ndarray  # (k, dims) float32, ordered by their share of the pooled sample (0 = largest)
    index: object  # faiss index over the centroids

    @property
    def k(self) -> int:
        return len(self.centroids)

    def assign(self, x_p: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
        """(cluster, squared distance to its centroid) of each reduced row."""
        if not len(x_p):
            return np.empty(0, np.int64), np.empty(0, np.float32)
        dist, found = self.index.search(np.ascontiguousarray(x_p, dtype=np.float32), 1)
        return found[:, 0], dist[:, 0]


def fit_clusters(pool_p: np.ndarray, k: int, seed: int, fit_rows: int = FIT_ROWS) -> Clustering:
    """k-means++ (scikit-learn, 3 seeded starts, on up to ``fit_rows`` pooled rows) with clusters renumbered
    largest first. k-means++ seeds far-off rows with probability ~ distance^2, so a small, distant new kind of
    image gets a centroid of its own; faiss's random seeding often left it inside a neighbour."""
    from sklearn.cluster import KMeans

    n = len(pool_p)
    k = max(2, min(k, n // 10))
    x = np.ascontiguousarray(pool_p, dtype=np.float32)
    if n > fit_rows:
        x = x[np.sort(np.random.default_rng([int(seed) & 0xFFFFFFFF, 9]).choice(n, fit_rows, replace=False))]
    kmeans = KMeans(n_clusters=k, n_init=3, random_state=int(seed) & 0xFFFFFFFF, max_iter=100).fit(x)
    centroids = kmeans.cluster_centers_.astype(np.float32)
    sizes = np.bincount(kmeans.labels_, minlength=k)
    order = sorted(range(k), key=lambda c: (-sizes[c], tuple(np.round(centroids[c], 4))))
    centroids = np.ascontiguousarray(centroids[order])
    return Clustering(centroids, flat_index(centroids))


@dataclass
class Typical:
    """Per cluster, the ``EXAMPLES`` rows nearest to its centroid seen so far (ties by URI)."""

    k: int
    best: list[list[tuple[float, str]]] = field(default_factory=list)

    def __post_init__(self) -> None:
        self.best = [[] for _ in range(self.k)]

    def add(self, labels: np.ndarray, dist: np.ndarray, uris: np.ndarray) -> None:
        for cluster in np.unique(labels):
            mine = np.flatnonzero(labels == cluster)
            if len(mine) > EXAMPLES:
                mine = mine[np.argpartition(dist[mine], EXAMPLES - 1)[:EXAMPLES]]
            merged = self.best[cluster] + [(float(dist[i]), str(uris[i])) for i in mine]
            self.best[cluster] = heapq.nsmallest(EXAMPLES, merged)

    def uris(self, cluster: int) -> list[str]:
        return [uri for _, uri in self.best[cluster]]


def movers(
    counts_tonight: np.ndarray,
    window_labels: np.ndarray,
    tonight: Typical,
    window: Typical,
) -> list[ReportCluster]:
    """Every cluster with its shares, the biggest movers first; examples: tonight's most typical rows (the
    window's when tonight has fewer than 6)."""
    k = len(counts_tonight)
    total = max(int(counts_tonight.sum()), 1)
    share_window = np.bincount(window_labels, minlength=k) / max(len(window_labels), 1)
    out: list[ReportCluster] = []
    for cluster in range(k):
        share = counts_tonight[cluster] / total
        examples = tonight.uris(cluster)
        examples += [u for u in window.uris(cluster) if u not in examples][: EXAMPLES - len(examples)]
        out.append(
            {
                "cluster": cluster,
                "share_tonight": round(float(share), 6),
                "share_window": round(float(share_window[cluster]), 6),
                "change": round(float(share - share_window[cluster]), 6),
                "rows_tonight": int(counts_tonight[cluster]),
                "examples": examples,
            }
        )
    out.sort(key=lambda c: (-abs(c["change"]), c["cluster"]))
    return out


def outline(xy: np.ndarray, keep: float = 0.9) -> np.ndarray | None:
    """The convex hull (closed polygon) of the ``keep`` share of points nearest their median: the cluster's
    outline on the small map without its stragglers; None for fewer than 3 distinct points."""
    from scipy.spatial import ConvexHull, QhullError

    if len(xy) < 3:
        return None
    centre = np.median(xy, axis=0)
    dist = np.linalg.norm(xy - centre, axis=1)
    core = xy[dist <= np.quantile(dist, keep)] if len(xy) >= 10 else xy
    try:
        hull = ConvexHull(core)
    except (QhullError, ValueError):
        return None
    ring = core[hull.vertices]
    return np.vstack([ring, ring[:1]])
