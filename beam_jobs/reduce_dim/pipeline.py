"""The reduce_dim job: wiring of its stages, and ``run(argv)``.

    python -m beam_jobs.reduce_dim --method pca \\
        --input /data/out/embeddings/ds=2026-11-20 --output /data/out/projections/method=pca/ds=2026-11-20

Stages (each a composite PTransform, in its own module):

  ReadEmbeddings  inputs.py   Parquet files -> blocks of rows (uris, float32 matrix, partition date);
                              rows with NaN/inf values are left out (counted by the second read); the
                              launcher lists and checks the files first (beam_jobs.partitions)
  FitPCA          fit.py      exact PCA from count, sum and X^T X summed across workers
  FitUMAP         fit.py      PCA + UMAP fitted on a seeded sample, on one worker
  PublishReference fit.py     --reference DIR --fit_reference with DIR empty: create DIR's reference if still
                              absent (first writer wins); Project then uses the reducer DIR holds
  Project         fit.py      a second read of the files; every block projected with the model as a side input
  WriteOutputs    outputs.py  projection-*.parquet, and the coordinates and sample the maps need
  Commit          runtime.py  row count check (projected + dropped for NaN/inf = input rows), map.png, map.html
                              (the explorer) and map_mosaic.png (outputs.finish_reduction), manifest.json, then
                              the staged directory replaces
                              --output whole

The data are read twice rather than held between the fit and the projection:
that keeps memory flat in the number of rows on every runner. Only this module
sees the whole ``ReduceConfig``; each stage takes the values it uses.
"""

from __future__ import annotations

import functools
import logging
from dataclasses import dataclass, field
from typing import Any

import apache_beam as beam

from beam_jobs import runtime, storage
from beam_jobs.config import ReduceConfig
from beam_jobs.contract import JOB_REDUCE, MAP_PNG
from beam_jobs.partitions import InputSummary, inspect_inputs, window_partitions
from beam_jobs.reduce_dim.drift import DRIFT_SAMPLE
from beam_jobs.reduce_dim.fit import FitPCA, FitUMAP, MomentsFn, Project, PublishReference, SampleFn, describe_model
from beam_jobs.reduce_dim.inputs import ReadEmbeddings, require_rows
from beam_jobs.reduce_dim.outputs import MapParams, WriteOutputs, finish_reduction
from beam_jobs.reduce_dim.reference import (
    REFERENCE_SAMPLE,
    check_reference,
    has_reference,
    load_reference,
    provenance,
    read_info,
    sweep_leftovers,
)
from beam_jobs.runtime import Commit

LOG = logging.getLogger(__name__)


@dataclass
class Frame:
    """The launcher's decision about the 2D frame.

    mode: "" (fit on the input, no reference), "loaded" (transform with the reducer saved in ``folder``)
    or "fitted" (fit on ``fit_summary``'s rows and save the reducer to ``folder``).
    create: "fitted" for a folder that held no reference (--reference --fit_reference): created if still
    absent, first writer wins; False: --save_reference, which replaces.
    """

    mode: str = ""
    folder: str = ""
    info: dict[str, Any] = field(default_factory=dict)
    fit_summary: InputSummary | None = None
    create: bool = False


def fit_inputs(cfg: ReduceConfig) -> list[str]:
    """The partitions a reference is fitted on: the input's, and with --fit_window_days > 1 the earlier
    ds= partitions beside it within that many days that exist."""
    if cfg.fit_window_days <= 1:
        return list(cfg.inputs)
    _night, folders = window_partitions(cfg.inputs, cfg.fit_window_days)
    return list(folders.values())


def plan_frame(cfg: ReduceConfig, summary: InputSummary) -> Frame:
    """Load, check or plan the reference before any work; a reference that does not fit is refused here."""
    if cfg.reference or cfg.save_reference:
        for removed in sweep_leftovers(cfg.reference or cfg.save_reference):
            LOG.warning("reference leftovers of a writer that is gone: %s", removed)
    if cfg.reference and (not cfg.fit_reference or has_reference(cfg.reference)):
        info = read_info(cfg.reference)
        check_reference(info, cfg.reference, cfg.method, summary.model_id, summary.dim)
        return Frame("loaded", cfg.reference, info)
    folder = cfg.reference or cfg.save_reference
    if not folder:
        return Frame()
    fit_summary = inspect_inputs(fit_inputs(cfg), summary.model_id)
    return Frame("fitted", folder, {}, fit_summary, create=bool(cfg.reference))


def run_settings(cfg: ReduceConfig, summary: InputSummary) -> dict[str, Any]:
    """The manifest fields fixed before the run starts: what was asked and what the inputs hold."""
    parameters: dict[str, Any] = {"seed": cfg.seed, "block_rows": cfg.block_rows, "model_id_filter": cfg.model_id}
    if cfg.method == "umap":
        parameters.update(
            pca_dims=cfg.pca_dims,
            fit_sample_size=cfg.fit_sample_size,
            n_neighbors=cfg.n_neighbors,
            min_dist=cfg.min_dist,
        )
    parameters.update(
        html_points=cfg.html_points,
        thumbnails=cfg.thumbnails,
        thumbnail_budget_mb=cfg.thumbnail_budget_mb,
        thumbnail_time_budget_s=cfg.thumbnail_time_budget_s,
        mosaic_grid=cfg.mosaic_grid,
        trust_sample_size=cfg.trust_sample_size,
    )
    return {
        "method": cfg.method,
        "inputs": list(cfg.inputs),
        "input_files": len(summary.files),
        "partitions": summary.partitions,
        "rows_in_input": summary.rows_total,
        "model_id": summary.model_id,
        "embedding_dim": summary.dim,
        "parameters": parameters,
    }


def reference_provenance(cfg: ReduceConfig, summary: InputSummary, frame: Frame) -> dict[str, Any]:
    """What a created reference records of the run that fitted it (as ``reference.reference_and_drift``
    records it for a replacing save)."""
    fitted_on = frame.fit_summary.partitions if frame.fit_summary else summary.partitions
    return provenance(run_settings(cfg, summary), fitted_on, cfg.seed, cfg.run_id)


def finish_in_published_frame(staging: str, *, frame: Frame, published: tuple[dict[str, Any], str], **values):
    """The commit step of a run that created (or found, racing) its reference: the drift, maps and
    manifest in the frame the folder holds, read back from it as a loaded one is; the manifest's mode
    says whether this run published it ("fitted") or another run was first ("loaded")."""
    info, mode = published
    body = finish_reduction(staging, frame=Frame("loaded", frame.folder, info), **values)
    body["reference"]["mode"] = mode
    return body


def build_pipeline(
    p: beam.Pipeline, cfg: ReduceConfig, summary: InputSummary, staging: str, frame: Frame | None = None
):
    """Wire the graph; returns the PCollection holding the committed manifest.

    ``frame``: what the launcher decided about a reference reducer (None: fit on the input, as always).
    """
    frame = frame or Frame()
    read = functools.partial(ReadEmbeddings, summary.files, summary.model_id, summary.dim, cfg.block_rows)
    sides: dict[str, Any] = {}
    if frame.mode == "loaded":
        model = (
            p
            | "ReferenceDir" >> beam.Create([frame.folder])
            | "LoadReference" >> beam.Map(lambda folder, info: load_reference(folder, info).model, frame.info)
        )
    else:
        fit_summary = frame.fit_summary or summary
        fit_read = functools.partial(ReadEmbeddings, fit_summary.files, summary.model_id, summary.dim, cfg.block_rows)
        fit_blocks = p | "ReadEmbeddings" >> fit_read()
        if cfg.method == "pca":
            model = fit_blocks | "FitPCA" >> FitPCA(2, input_rows=fit_summary.rows)
        else:
            # 0 = no pre-PCA: --pca_dims 0, or embeddings no longer than --pca_dims.
            pca_dims = cfg.pca_dims if cfg.pca_dims < summary.dim else 0
            model = fit_blocks | "FitUMAP" >> FitUMAP(
                cfg.fit_sample_size, cfg.seed, pca_dims, cfg.n_neighbors, cfg.min_dist, input_rows=fit_summary.rows
            )
        if frame.mode == "fitted":
            reference = {
                "sample": beam.pvalue.AsSingleton(
                    fit_blocks | "ReferenceSample" >> beam.CombineGlobally(SampleFn(REFERENCE_SAMPLE, cfg.seed, ("x",)))
                ),
                "moments": beam.pvalue.AsSingleton(
                    fit_blocks | "ReferenceMoments" >> beam.CombineGlobally(MomentsFn())
                ),
            }
            if frame.create:
                check = (cfg.method, summary.model_id, summary.dim)
                provenance = reference_provenance(cfg, summary, frame)
                published = model | "PublishReference" >> PublishReference(frame.folder, provenance, check, **reference)
                model = published | "PublishedModel" >> beam.Map(lambda done: done.model)
                sides["published"] = beam.pvalue.AsSingleton(
                    published | "PublishedRecord" >> beam.Map(lambda done: (done.info, done.mode))
                )
            else:
                sides.update(reference_sample=reference["sample"], reference_moments=reference["moments"])
                sides["model"] = beam.pvalue.AsSingleton(model)
    info = model | "DescribeModel" >> beam.Map(describe_model)
    # The second read reports the rows it left out for NaN/inf values: the first leaves out the same rows.
    blocks, dropped = p | "ReadEmbeddingsAgain" >> read(report_dropped=True)
    projected = blocks | "Project" >> Project(model)
    maps = MapParams(
        cfg.html_points,
        cfg.thumbnail_size,
        cfg.thumbnails,
        cfg.trust_sample_size,
        cfg.seed,
        thumbnail_budget_bytes=int(cfg.thumbnail_budget_mb * 1_000_000),
        thumbnail_timeout_s=cfg.thumbnail_timeout_s,
        thumbnail_time_budget_s=cfg.thumbnail_time_budget_s,
        mosaic_grid=cfg.mosaic_grid,
        mosaic_cell=cfg.mosaic_cell,
    )
    written = projected | "WriteOutputs" >> WriteOutputs(staging, cfg.method, cfg.run_id, cfg.num_shards, maps)
    if frame.mode:
        sides["tonight_sample"] = beam.pvalue.AsSingleton(
            projected | "DriftSample" >> beam.CombineGlobally(SampleFn(DRIFT_SAMPLE, cfg.seed, ("x",)))
        )
        sides["tonight_moments"] = beam.pvalue.AsSingleton(
            projected | "DriftMoments" >> beam.CombineGlobally(MomentsFn())
        )
    finish = functools.partial(
        finish_in_published_frame if frame.create else finish_reduction,
        settings=run_settings(cfg, summary),
        summary=summary,
        method=cfg.method,
        run_id=cfg.run_id,
        maps=maps,
        frame=frame,
    )
    sides.update(info=beam.pvalue.AsSingleton(info), dropped=beam.pvalue.AsSingleton(dropped), **written)
    return p | "Commit" >> Commit(JOB_REDUCE, cfg, staging, finish, **sides)


def run(argv: list[str] | None = None) -> dict[str, Any]:
    """Parse, check, run and wait; returns the manifest. Raises on bad input before any work."""
    cfg, beam_args = ReduceConfig.parse(argv)
    # in_memory: the block math already uses every core through BLAS. multi_threading was slower
    # at 100k rows (19.7 s and 21.8 s against 16.4 s; README, performance).
    options = runtime.job_options(beam_args, cfg.detach, running_mode="in_memory")
    summary = inspect_inputs(cfg.inputs, cfg.model_id)
    frame = plan_frame(cfg, summary)
    require_rows(frame.fit_summary or summary, cfg.method, cfg.fit_sample_size)
    LOG.info(
        "reduce_dim run_id=%s method=%s rows=%d files=%d model_id=%s partitions=%s output=%s",
        cfg.run_id,
        cfg.method,
        summary.rows,
        len(summary.files),
        summary.model_id,
        summary.partitions,
        cfg.output,
    )
    manifest = runtime.run_job(
        JOB_REDUCE, cfg, options, lambda p, staging: build_pipeline(p, cfg, summary, staging, frame)
    )
    if not cfg.detach:
        LOG.info(
            "reduce_dim done: method=%s rows=%d in %.1fs (%.0f rows/s) trustworthiness=%s map=%s",
            manifest["method"],
            manifest["rows"],
            manifest["seconds"],
            manifest["rows_per_second"],
            manifest["trustworthiness"],
            storage.join(cfg.output, MAP_PNG),
        )
    return manifest
