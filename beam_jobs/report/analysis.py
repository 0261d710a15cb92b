"""The report's heavy part: tonight against the window, for novelty and for the clusters, in three reads.

1. each earlier night once: a seeded uniform sample and held-out rows (``vectors.sample_nights``);
2. tonight once for a sample (the PCA and k-means see tonight's new directions too);
3. tonight again, block by block: every row projected, scored against the sample (faiss, exact in the
   reduced space), assigned to a cluster; kept: the scores (4 bytes a row), the cluster counts, each
   cluster's most typical rows, the top candidates' full vectors and a seeded check sample.

Memory: the window's sample at full length (50,000 x 2048 float32 = 400 MB by default), one block,
and the candidates; never a night or the window whole.
"""

from __future__ import annotations

import logging
import time
from dataclasses import dataclass, field
from typing import Any

import numpy as np

from beam_jobs.contract import ReportCluster, ReportNovelImage
from beam_jobs.report import clusters as clus
from beam_jobs.report import novelty as nov
from beam_jobs.report import vectors as vec
from beam_jobs.report.config import ReportConfig

LOG = logging.getLogger(__name__)
PCA_FIT_ROWS = 20_000  # pooled rows the PCA is fitted on (half the window's sample, half tonight's)
CHECK_ROWS = 300  # tonight's rows scored both ways to measure the reduced search's error
MIN_WINDOW_ROWS = 20
MAP_BACKGROUND = 4000
MAP_MEMBERS = 1500


@dataclass
class Analysis:
    """What the heavy part found; ``why`` says why there is none."""

    why: str | None = None
    new_tonight: list[ReportNovelImage] = field(default_factory=list)
    novelty: dict[str, Any] = field(default_factory=dict)
    clusters: list[ReportCluster] = field(default_factory=list)
    clustering: dict[str, Any] = field(default_factory=dict)
    tonight_scores: np.ndarray = field(default_factory=lambda: np.empty(0, np.float32))
    held_scores: np.ndarray = field(default_factory=lambda: np.empty(0, np.float32))
    pool_xy: np.ndarray = field(default_factory=lambda: np.empty((0, 2), np.float32))
    pool_labels: np.ndarray = field(default_factory=lambda: np.empty(0, np.int64))
    state: dict[str, Any] = field(default_factory=dict)  # with keep=True: the PCA and the window sample


class Scan:
    """Pass 3 over tonight: what is kept of each block."""

    def __init__(
        self,
        pca: vec.Pca,
        sample_index: nov.SampleIndex,
        clustering: clus.Clustering,
        capacity: int,
        check_p: float,
        seed: int,
    ):
        self.pca, self.sample_index, self.clustering = pca, sample_index, clustering
        self.scores: list[np.ndarray] = []
        self.counts = np.zeros(clustering.k, np.int64)
        self.typical = clus.Typical(clustering.k)
        self.candidates = nov.Candidates(capacity)
        self.check_p = check_p
        self.rng = np.random.default_rng([int(seed) & 0xFFFFFFFF, 2])
        self.check_x: list[np.ndarray] = []
        self.check_scores: list[np.ndarray] = []
        self.check_exact_reduced: list[np.ndarray] = []  # the same rows searched exactly in the reduced space

    def add(self, block: vec.Block) -> None:
        reduced = self.pca.project(block.x)
        scores, _ = self.sample_index.nearest(reduced)
        labels, dist = self.clustering.assign(reduced)
        self.scores.append(scores)
        self.counts += np.bincount(labels, minlength=self.clustering.k)
        self.typical.add(labels, dist, block.uris)
        self.candidates.add(scores, block.uris, block.x)
        check = self.rng.random(len(scores)) < self.check_p
        if check.any():
            self.check_x.append(block.x[check])
            self.check_scores.append(scores[check])
            self.check_exact_reduced.append(nov.nearest(self.sample_index.flat, reduced[check])[0])


def _subsample(n: int, size: int, seed: int, salt: int) -> np.ndarray:
    if n <= size:
        return np.arange(n)
    return np.sort(np.random.default_rng([int(seed) & 0xFFFFFFFF, salt]).choice(n, size, replace=False))


def analyse(
    cfg: ReportConfig,
    model_id: str,
    tonight_files: list[str],
    tonight_rows: int,
    nights: dict[str, list[str]],
    window_counts: dict[str, int] | None = None,
    keep: bool = False,
) -> Analysis:
    """Novelty and clusters of tonight's ``tonight_rows`` rows against the earlier ``nights`` (ds -> files, and
    ``window_counts``: the model's rows in each; counted here when None).
    ``keep``: also return the PCA and the window's sample (``Analysis.state``; the benchmark measures with them)."""
    phases: dict[str, float] = {}
    if cfg.threads:
        import faiss

        faiss.omp_set_num_threads(cfg.threads)
    clock = time.perf_counter()
    dim = vec.vector_length(tonight_files, model_id)
    if window_counts is None:
        window_counts = {night: vec.model_rows(files).get(model_id, 0) for night, files in nights.items()}
    window = vec.sample_nights(nights, model_id, dim, window_counts, cfg.window_sample, cfg.block_rows, cfg.seed)
    phases["read_window_s"] = time.perf_counter() - clock
    if len(window.sample) < MIN_WINDOW_ROWS:
        return Analysis(why=f"the window holds {len(window.sample)} usable row(s) of {model_id}: too few to compare")
    clock = time.perf_counter()
    per_night = max(2000, cfg.window_sample // max(len(nights), 1))
    tonight, _ = vec.sample_rows(tonight_files, model_id, dim, tonight_rows, per_night, cfg.block_rows, cfg.seed)
    phases["sample_tonight_s"] = time.perf_counter() - clock
    if not len(tonight):
        return Analysis(why="tonight's rows hold no finite vector")

    clock = time.perf_counter()
    half = PCA_FIT_ROWS // 2
    pool = np.concatenate(
        [
            window.sample.x[_subsample(len(window.sample), half, cfg.seed, 3)],
            tonight.x[_subsample(len(tonight), half, cfg.seed, 4)],
        ]
    )
    pca = vec.fit_pca(pool, cfg.dims)
    del pool
    sample_p = pca.project(window.sample.x)
    held_p = pca.project(window.held.x)
    tonight_p = pca.project(tonight.x)
    phases["pca_s"] = time.perf_counter() - clock
    clock = time.perf_counter()
    sample_index = nov.SampleIndex(sample_p, cfg.seed)
    calibration = nov.calibrate(sample_p, window.sample.ds, held_p, window.held.ds, sample_index)
    phases["calibrate_s"] = time.perf_counter() - clock
    clock = time.perf_counter()
    clustering = clus.fit_clusters(np.concatenate([sample_p, tonight_p]), cfg.clusters, cfg.seed)
    window_labels, window_dist = clustering.assign(sample_p)
    window_typical = clus.Typical(clustering.k)
    window_typical.add(window_labels, window_dist, window.sample.uris)
    phases["kmeans_s"] = time.perf_counter() - clock

    clock = time.perf_counter()
    capacity = max(20 * cfg.top_k, 1000)
    scan = Scan(pca, sample_index, clustering, capacity, min(1.0, CHECK_ROWS / max(tonight_rows, 1)), cfg.seed)
    for block in vec.iter_blocks(tonight_files, model_id, cfg.block_rows, dim):
        scan.add(block)
    scores = np.concatenate(scan.scores) if scan.scores else np.empty(0, np.float32)
    phases["score_tonight_s"] = time.perf_counter() - clock

    clock = time.perf_counter()
    order, exact, nearest_row = nov.rank_exactly(scan.candidates, window.sample.x, cfg.top_k)
    new_tonight: list[ReportNovelImage] = [
        {
            "image_uri": str(scan.candidates.uris[i]),
            "score": round(float(score), 4),
            "nearest_uri": str(window.sample.uris[j]),
            "nearest_ds": str(window.sample.ds[j]),
        }
        for i, score, j in zip(order, exact, nearest_row, strict=True)
    ]
    check_x = np.concatenate(scan.check_x) if scan.check_x else np.empty((0, dim), np.float32)
    check_reduced = np.concatenate(scan.check_scores) if scan.check_scores else np.empty(0, np.float32)
    check_exact, _ = nov.exact_nearest(check_x, window.sample.x)
    reduced_top = np.argsort(-scan.candidates.scores, kind="stable")[: cfg.top_k]
    check = nov.search_error(
        check_reduced,
        check_exact,
        {str(scan.candidates.uris[i]) for i in reduced_top},
        {item["image_uri"] for item in new_tonight},
    )
    if scan.check_exact_reduced:  # IVF against the exact scan of the same reduced sample
        flat = np.concatenate(scan.check_exact_reduced)
        check["index_nearest_share"] = round(float(np.mean(check_reduced <= flat * 1.001 + 1e-9)), 4)
        ratio = check_reduced[flat > 0] / flat[flat > 0]
        check["index_score_ratio_p99"] = round(float(np.quantile(ratio, 0.99)), 4) if len(ratio) else None
    phases["rank_s"] = time.perf_counter() - clock

    rate = float((scores > calibration.threshold).mean()) if len(scores) else 0.0
    novelty = {
        "method": "PCA-reduced exact search (faiss IndexFlatL2) against a seeded uniform sample of the window; "
        "top candidates re-scored at full length",
        "dims": int(pca.components.shape[0]),
        "explained_variance": round(float(pca.explained_variance_ratio.sum()), 4),
        "window_rows": window.rows,
        "rows_by_night": window.rows_by_night,
        "sample_rows": len(window.sample),
        "held_out_rows": len(window.held),
        "tonight_rows": len(scores),
        "dropped_non_finite": window.stats.dropped_non_finite,
        "candidates": len(scan.candidates.scores),
        **sample_index.describe(),
        "rate": round(rate, 6),
        "novel_rows": int((scores > calibration.threshold).sum()),
        "threshold": round(calibration.threshold, 6),
        "quantile": nov.QUANTILE,
        "usual": calibration.usual,
        "band": list(calibration.band) if calibration.band else None,
        "sigma": calibration.sigma,
        "per_night": calibration.per_night,
        "status": calibration.status(rate),
        "check": check,
        "seed": cfg.seed,
        "phases": {name: round(seconds, 3) for name, seconds in phases.items()},
    }
    moving = clus.movers(scan.counts, window_labels, scan.typical, window_typical)
    pool_labels = np.concatenate([window_labels, clustering.assign(tonight_p)[0]])
    pool_xy = np.concatenate([sample_p[:, :2], tonight_p[:, :2]])
    return Analysis(
        new_tonight=new_tonight,
        novelty=novelty,
        clusters=moving,
        clustering={
            "k": clustering.k,
            "dims": int(pca.components.shape[0]),
            "fit_rows": len(sample_p) + len(tonight_p),
            "tonight_rows": len(tonight_p),
            "window_sample_rows": len(sample_p),
            "shown": cfg.movers,
            "seed": cfg.seed,
        },
        tonight_scores=scores,
        held_scores=calibration.held_scores,
        pool_xy=pool_xy,
        pool_labels=pool_labels,
        state={"pca": pca, "window": window} if keep else {},
    )


def map_layers(analysis: Analysis, cluster: int, seed: int) -> tuple[np.ndarray, np.ndarray, np.ndarray | None]:
    """(background points, the cluster's points, its outline) for one cluster's small map."""
    xy, labels = analysis.pool_xy, analysis.pool_labels
    background = xy[_subsample(len(xy), MAP_BACKGROUND, seed, 5)]
    members = xy[labels == cluster]
    ring = clus.outline(members)
    return background, members[_subsample(len(members), MAP_MEMBERS, seed, 6 + cluster)], ring
