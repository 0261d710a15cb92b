"""Stages FitPCA, FitUMAP and Project: a fitted model from the blocks, then every block projected with it.

  FitPCA   a CombineFn sums count, sum and X^T X (float64) across workers; one
           eigendecomposition of the covariance gives the components
  FitUMAP  a seeded bounded sample (smallest hash of the URI) of raw rows -> optional PCA
           to ``pca_dims`` and umap-learn, both fitted on that sample on one worker
  PublishReference  with --reference DIR --fit_reference: the fitted model becomes DIR's reference
           unless another run (a night started at the same time) published one first; then that
           one's reducer is what Project uses, so every night is in the frame DIR holds
  Project  every block is projected in parallel with the fitted model as a side input

The model a fit stage returns (``PCAModel`` or ``UmapModel``) is all Project
needs: anything with ``transform(x) -> (rows, 2)`` and numpy arrays as attributes.
A saved reference reducer (fit once, reused nightly so maps stay comparable)
plugs in here, in place of the fit stage; see ``pipeline.build_pipeline``.
"""

from __future__ import annotations

import time
from collections.abc import Iterator
from typing import Any

import apache_beam as beam
import numpy as np
from apache_beam.metrics import Metrics
from apache_beam.runners.worker.statecache import CacheAware

from beam_jobs.partitions import NO_PARTITION
from beam_jobs.reduce_dim.drift import Moments
from beam_jobs.reduce_dim.records import METRICS_NAMESPACE, Block, Projected
from beam_jobs.reduce_dim.reduction import (
    MIN_FIT_ROWS,
    GramStats,
    PCAModel,
    Sample,
    UmapModel,
    fit_pca,
    fit_umap,
    row_priority,
)
from beam_jobs.reduce_dim.reference import (
    Published,
    check_reference,
    create_reference,
    fitted_parts,
    load_reference,
)
from beam_jobs.runtime import InputError

# Rows per GramStats.add_block when the pre-PCA of UMAP is fitted on the sample (the job's default block size).
SAMPLE_PCA_BLOCK_ROWS = 8192


class GramStatsFn(beam.CombineFn):
    """Sufficient statistics for PCA; accumulator size is d^2, whatever the number of rows."""

    def create_accumulator(self) -> GramStats:
        return GramStats()

    def add_input(self, acc: GramStats, block: Block) -> GramStats:
        return acc.add_block(block.x)

    def merge_accumulators(self, accs) -> GramStats:
        out = GramStats()
        for acc in accs:
            out = out.merge(acc)
        return out

    def extract_output(self, acc: GramStats) -> GramStats:
        return acc


class SampleFn(beam.CombineFn):
    """Seeded bounded sample: the ``size`` rows whose hashed URI is smallest (order- and split-independent).

    Args:
        size: rows kept.
        seed: salts the hash.
        columns: fields of the elements (Block or Projected) kept beside ``image_uri`` and ``ds``.
    """

    def __init__(self, size: int, seed: int, columns: tuple[str, ...]):
        self._size = size
        self._seed = seed
        self._columns = columns

    def create_accumulator(self) -> Sample:
        return Sample(self._size)

    def add_input(self, acc: Sample, item: Block | Projected) -> Sample:
        rows = len(item.uris)
        if self._size == 0 or rows == 0:
            return acc
        cols = {
            "image_uri": np.asarray(item.uris, dtype=object),
            "ds": np.full(rows, item.ds or NO_PARTITION, dtype=object),
        }
        for name in self._columns:
            cols[name] = getattr(item, name)
        return acc.add(row_priority(item.uris, self._seed), **cols)

    def merge_accumulators(self, accs) -> Sample:
        out = Sample(self._size)
        for acc in accs:
            out = out.merge(acc)
        return out

    def extract_output(self, acc: Sample) -> Sample:
        return acc.sorted()


class MomentsFn(beam.CombineFn):
    """Count, sum and squared norms of every row (Blocks or Projected): the mean embedding and spread for drift."""

    def create_accumulator(self) -> Moments:
        return Moments()

    def add_input(self, acc: Moments, item: Block | Projected) -> Moments:
        return acc.add(item.x)

    def merge_accumulators(self, accs) -> Moments:
        out = Moments()
        for acc in accs:
            out = out.merge(acc)
        return out

    def extract_output(self, acc: Moments) -> Moments:
        return acc


def check_fit_rows(method: str, fit_rows: int, input_rows: int | None) -> None:
    """Refuse a fit on fewer rows than ``method`` needs, naming the counts.

    The launcher already refused inputs with too few rows (``inputs.require_rows``);
    what is left are inputs where too many rows were dropped for NaN/inf values, which
    only reading every row tells. ``input_rows``: the model's rows in the inputs (from
    the footers), so the dropped count is ``input_rows - fit_rows``; None: unknown.
    Raised inside the pipeline as ``InputError``: exit status 2 on the local runner.
    """
    need = MIN_FIT_ROWS[method]
    if fit_rows >= need:
        return
    if input_rows is None or input_rows <= fit_rows:
        raise InputError(f"too few rows to fit {method}: {fit_rows}; {method} needs at least {need}")
    dropped = input_rows - fit_rows
    if fit_rows == 0:
        lead = f"no rows left to fit {method}: all {input_rows} input row(s) of the model have NaN or inf values"
    else:
        lead = (
            f"too few rows left to fit {method}: {dropped} of {input_rows} input row(s) of the model "
            f"dropped for NaN or inf values, {fit_rows} left"
        )
    raise InputError(f"{lead}; {method} needs at least {need}")


def fit_pca_checked(stats: GramStats, n_components: int, input_rows: int | None = None) -> PCAModel:
    check_fit_rows("pca", stats.n_rows, input_rows)
    return fit_pca(stats, n_components)


class FitPCA(beam.PTransform):
    """Blocks -> one PCAModel with ``n_components`` components, exact over all rows.

    ``input_rows``: the model's rows in the inputs, named in the error when too few rows are left.
    """

    def __init__(self, n_components: int, input_rows: int | None = None):
        super().__init__()
        self._n_components = n_components
        self._input_rows = input_rows

    def expand(self, blocks):
        return (
            blocks
            | "SufficientStats" >> beam.CombineGlobally(GramStatsFn())
            | "Eigendecomposition" >> beam.Map(fit_pca_checked, self._n_components, self._input_rows)
        )


def fit_umap_on_sample(
    sample: Sample, pca_dims: int, seed: int, n_neighbors: int, min_dist: float, input_rows: int | None = None
) -> UmapModel:
    """PCA to ``pca_dims`` (0 = none) and UMAP, both fitted on the seeded sample, on one worker.

    The pre-PCA is fitted on the sample, not on all rows: a 50-d subspace is well
    estimated from thousands of rows, and a fit that only sees the sample (in its
    fixed order) is bit-for-bit reproducible, which a sum over workers in arrival
    order is not. UMAP amplifies last-digit differences into a different layout.

    ``input_rows``: the model's rows in the inputs. A sample smaller than its capacity holds
    every finite row, so then ``input_rows - len(sample)`` rows were dropped for NaN/inf values.
    """
    check_fit_rows("umap", len(sample), input_rows if len(sample) < sample.capacity else None)
    x = sample.columns["x"]
    start = time.perf_counter()
    pca = None
    if pca_dims:
        stats = GramStats()
        for i in range(0, len(x), SAMPLE_PCA_BLOCK_ROWS):
            stats.add_block(x[i : i + SAMPLE_PCA_BLOCK_ROWS])
        pca = fit_pca(stats, pca_dims)
    model = fit_umap(x, pca, seed, n_neighbors, min_dist)
    Metrics.distribution(METRICS_NAMESPACE, "umap_fit_ms").update(int((time.perf_counter() - start) * 1000))
    return model


class FitUMAP(beam.PTransform):
    """Blocks -> one UmapModel fitted on a seeded sample of ``fit_sample_size`` rows.

    ``pca_dims``: PCA to that many dimensions before UMAP; 0 = feed UMAP the raw embeddings
    (the pipeline passes 0 when the embeddings are not longer than ``--pca_dims``).
    """

    def __init__(
        self,
        fit_sample_size: int,
        seed: int,
        pca_dims: int,
        n_neighbors: int,
        min_dist: float,
        input_rows: int | None = None,
    ):
        super().__init__()
        self._fit_sample_size = fit_sample_size
        self._seed = seed
        self._pca_dims = pca_dims
        self._n_neighbors = n_neighbors
        self._min_dist = min_dist
        self._input_rows = input_rows

    def expand(self, blocks):
        fit_args = (self._pca_dims, self._seed, self._n_neighbors, self._min_dist, self._input_rows)
        return (
            blocks
            | "FitSample" >> beam.CombineGlobally(SampleFn(self._fit_sample_size, self._seed, ("x",)))
            | "Fit" >> beam.Map(fit_umap_on_sample, *fit_args)
        )


def describe_model(model: PCAModel | UmapModel) -> dict[str, Any]:
    """The small, JSON-able facts about a fitted model that go in the manifest."""
    if isinstance(model, PCAModel):
        return {
            "explained_variance_ratio": [round(float(v), 6) for v in model.explained_variance_ratio],
            "explained_variance": [round(float(v), 6) for v in model.explained_variance],
            "fit_rows": model.n_rows,
        }
    out: dict[str, Any] = {"fit_rows": model.fit_rows, "n_neighbors": int(model.umap.n_neighbors)}
    if model.pca is not None:
        out["pca_dims"] = int(model.pca.components.shape[0])
        # Of the fit sample's variance (the pre-PCA is fitted on the sample).
        out["pca_explained_variance_ratio_total"] = round(float(model.pca.explained_variance_ratio.sum()), 6)
    return out


class SideModel(CacheAware):
    """The fitted model as a side input.

    Beam's worker state cache weighs every cached side input by walking its object
    graph; for a fitted UMAP (nearest-neighbour index, numba structures) that walk
    took minutes. The model is one object per worker and small next to the data,
    so it is weighed by its arrays alone.
    """

    def __init__(self, model: PCAModel | UmapModel):
        self.model = model

    def get_referents_for_cache(self) -> list[Any]:
        return [v for v in vars(self.model).values() if isinstance(v, np.ndarray)]


class ProjectFn(beam.DoFn):
    """A Block -> its 2D coordinates with the fitted model (side input ``shared``)."""

    def __init__(self):
        self._projected = Metrics.counter(METRICS_NAMESPACE, "rows_projected")
        self._ms = Metrics.distribution(METRICS_NAMESPACE, "project_ms_per_block")

    def process(self, block: Block, shared: SideModel) -> Iterator[Projected]:
        start = time.perf_counter()
        xy = np.asarray(shared.model.transform(block.x), np.float32)[:, :2]
        self._ms.update(int((time.perf_counter() - start) * 1000))
        self._projected.inc(len(xy))
        yield Projected(block.uris, xy, block.ds, block.model_id, block.x)


class Project(beam.PTransform):
    """Blocks -> Projected, with ``model`` (a PCollection of one fitted model) as a side input."""

    def __init__(self, model):
        super().__init__()
        self._model = model

    def expand(self, blocks):
        shared = beam.pvalue.AsSingleton(self._model | "ShareModel" >> beam.Map(SideModel))
        return blocks | "ProjectBlocks" >> beam.ParDo(ProjectFn(), shared).with_output_types(Projected)


class PublishReferenceFn(beam.DoFn):
    """The fitted model -> ``Published``: the reference ``folder`` holds once this run tried to create it.

    Before any block is projected, so a run that lost the race projects with the winner's reducer
    instead of one that was never saved. The drift space and the grey cloud are built here from the
    reference's sample, as the commit step builds them for a replacing save (``--save_reference``).
    ``check``: the run's (method, model_id, embedding length), which the winner's must match too.
    """

    def __init__(self, folder: str, provenance: dict[str, Any], check: tuple[str, str, int]):
        self._folder = folder
        self._provenance = provenance
        self._check = check
        self._published = Metrics.counter(METRICS_NAMESPACE, "reference_published")
        self._taken = Metrics.counter(METRICS_NAMESPACE, "reference_taken_from_another_run")

    def process(self, model: PCAModel | UmapModel, sample: Sample, moments: Moments) -> Iterator[Published]:
        space, cloud = fitted_parts(model, sample, moments)
        info, created = create_reference(self._folder, model, space, cloud, self._provenance)
        if created:
            self._published.inc()
            yield Published(info, model, "fitted")
            return
        self._taken.inc()
        check_reference(info, self._folder, *self._check)
        yield Published(info, load_reference(self._folder, info).model, "loaded")


class PublishReference(beam.PTransform):
    """A PCollection of one fitted model -> one ``Published`` (see ``PublishReferenceFn``)."""

    def __init__(self, folder: str, provenance: dict[str, Any], check: tuple[str, str, int], sample, moments):
        super().__init__()
        self._fn = PublishReferenceFn(folder, provenance, check)
        self._sample = sample
        self._moments = moments

    def expand(self, model):
        return model | "CreateIfAbsent" >> beam.ParDo(self._fn, self._sample, self._moments)
