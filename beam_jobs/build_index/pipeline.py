"""The build_index job: wiring of its stages, and ``run(argv)``.

    python -m beam_jobs.build_index \\
        --input /data/out/embeddings/ds=2026-11-20 --output /data/out/index/ds=2026-11-20 [--window_days 30]

Before the pipeline (``window.plan_window``, footers and manifests only): the
nights of the window, the model, and whether the newest earlier index beside
``--output`` can be extended, so that only the new nights are read.

Stages:

  StageVectors  stage.py   files -> unit-length float16 blocks in the staging dir (parallel over files)
  Commit        runtime.py build.finish_index on one worker: train (IVF) or reuse the earlier index, add
                           the blocks, measure recall@10 against exact search, exact and near duplicates,
                           index.faiss + rows.parquet + duplicates.parquet, manifest.json, then the staged
                           directory replaces --output whole
"""

from __future__ import annotations

import functools
import logging
from typing import Any

import apache_beam as beam

from beam_jobs import runtime, storage
from beam_jobs.build_index.build import finish_index
from beam_jobs.build_index.stage import PARTS_DIR, StageVectors
from beam_jobs.build_index.window import Window, plan_window
from beam_jobs.config import IndexConfig
from beam_jobs.contract import JOB_INDEX
from beam_jobs.runtime import Commit

LOG = logging.getLogger(__name__)


def build_pipeline(p: beam.Pipeline, cfg: IndexConfig, window: Window, staging: str):
    """Wire the graph; returns the PCollection holding the committed manifest."""
    summary = window.summary
    parts = p | "StageVectors" >> StageVectors(
        window.files, summary.model_id, summary.dim, cfg.block_rows, storage.join(staging, PARTS_DIR)
    )
    finish = functools.partial(finish_index, window=window, cfg=cfg)
    return p | "Commit" >> Commit(JOB_INDEX, cfg, staging, finish, parts=beam.pvalue.AsList(parts))


def run(argv: list[str] | None = None) -> dict[str, Any]:
    """Parse, check, run and wait; returns the manifest. Raises on bad input before any work."""
    cfg, beam_args = IndexConfig.parse(argv)
    # in_memory: staging is I/O and numpy per file; the build step uses every core through faiss.
    options = runtime.job_options(beam_args, cfg.detach, running_mode="in_memory")
    window = plan_window(cfg.inputs, cfg.output, cfg.window_days, cfg.model_id, cfg.extend, cfg.exact_below)
    LOG.info(
        "build_index run_id=%s ds=%s window=%s read=%s extend=%s rows=%d model_id=%s output=%s",
        cfg.run_id,
        window.ds,
        window.partitions,
        window.read,
        window.previous,
        window.summary.rows,
        window.summary.model_id,
        cfg.output,
    )
    manifest = runtime.run_job(JOB_INDEX, cfg, options, lambda p, staging: build_pipeline(p, cfg, window, staging))
    if not cfg.detach:
        LOG.info(
            "build_index done: %s rows (%s), %s, recall@10 %s, build %.1fs; %s exact-duplicate rows, "
            "%s near-duplicate pairs",
            manifest["rows"],
            manifest["parameters"]["kind"],
            manifest["mode"],
            manifest["recall_at_10"],
            manifest["build_seconds"],
            manifest["exact_duplicate_rows"],
            manifest["near_duplicate_pairs"],
        )
    return manifest
