"""The extraction job: wiring of its stages, and ``run(argv)``.

    python -m beam_jobs.extract_embeddings \\
        --input '/data/images/ds=2026-11-20/*.jpg' --output /data/out/embeddings/ds=2026-11-20 \\
        --weights random --runner FnApiRunner

Stages (each a composite PTransform, in its own module):

  ReadImageURIs   inputs.py   glob or manifest -> distinct URIs, shuffled to spread work over workers (a local
                              glob: ranges of the listing snapshot taken before the run; a remote one:
                              batches of URIs; a manifest: Distinct)
  DecodeImages    decode.py   read bytes + decode + resize in one step; bad files -> failure records
                              (several models: decoded once, resized to each model's input size;
                              --skip_known, one model: read and hash, join with the known hashes,
                              decode only the unknown content; known.py)
  EmbedImages     embed.py    one batched RunInference branch per model (--model a,b) with our Keras
                              handler on the engine chosen for the worker's CPU (engines.py); a failed
                              batch -> failure records of that model
  WriteOutputs    outputs.py  Parquet shards, failures JSONL (one set per step that fails records), optional .npy
  Commit          runtime.py  manifest.json, then the staged directory replaces --output whole

Every input URI ends up in exactly one of the embeddings or the failures, for
each model; the commit step checks ``inputs == embedded + failed`` per model
and fails the job otherwise.
"""

from __future__ import annotations

import functools
import logging
from collections.abc import Sequence
from typing import Any

import apache_beam as beam
from apache_beam.options.pipeline_options import StandardOptions

from beam_jobs import runtime
from beam_jobs.config import ExtractConfig
from beam_jobs.contract import JOB_EXTRACT
from beam_jobs.extract_embeddings.decode import (
    FAILURES_TAG,
    DecodeImages,
    DecodeParams,
    ReadAndHashFn,
)
from beam_jobs.extract_embeddings.embed import ENGINES_TAG, EmbedModels
from beam_jobs.extract_embeddings.engines import EngineChoice
from beam_jobs.extract_embeddings.inputs import Preflight, ReadImageURIs, listing_folder, preflight
from beam_jobs.extract_embeddings.known import (
    COMPUTE_TAG,
    PENDING_TAG,
    REUSED_TAG,
    CopyVectors,
    HashSet,
    KnownVectors,
    SplitByKnown,
)
from beam_jobs.extract_embeddings.models import ModelRun, resolve_models
from beam_jobs.extract_embeddings.outputs import (
    FAILURE_SOURCE,
    ROW_SOURCE,
    WriteOutputs,
    finish_extraction,
    run_settings,
    skips_known,
)
from beam_jobs.partitions import files_beside
from beam_jobs.runtime import Commit

LOG = logging.getLogger(__name__)
# --skip_known's row sources that were not computed tonight: stored vectors, and copies of tonight's.
REUSED_SOURCES = ("reused", "copied")


def build_pipeline(
    p: beam.Pipeline,
    cfg: ExtractConfig,
    runs: list[ModelRun],
    staging: str,
    checked: Preflight | None = None,
    known: Sequence[str] = (),
):
    """Wire the graph: one read and decode, one RunInference branch per model; returns the committed manifest.

    ``known``: with ``--skip_known`` (one model), the earlier partitions' embeddings files whose vectors
    are reused.
    """
    checked = checked or Preflight()
    read = p | "ReadImageURIs" >> ReadImageURIs(cfg.input, cfg.input_manifest, checked.manifest_column, checked.listing)
    sizes = tuple(run.spec.input_size for run in runs)
    decode = DecodeParams(
        sizes[0], cfg.resize_mode, cfg.max_pixels, cfg.max_bytes, cfg.read_timeout_s, more_sizes=sizes[1:]
    )
    engine = EngineChoice(cfg.engine, cfg.precision, cfg.engine_threads)
    embed = EmbedModels(runs, cfg.batch_size, cfg.run_id, engine)
    if skips_known(cfg, runs):
        outputs, embedded = _embed_unknown(p, read["uris"], decode, embed, runs[0].model_id, cfg.run_id, known)
    else:
        decoded = read["uris"] | "DecodeImages" >> DecodeImages(decode, cfg.run_id)
        embedded = decoded.images | "EmbedImages" >> embed
        # EmbedModels' outputs besides the engines are its per-model rows_ and failures_ sources.
        sources = {key: pcoll for key, pcoll in embedded.items() if key != ENGINES_TAG}
        outputs = {**sources, **failure_sources(read=decoded[FAILURES_TAG])}
    outputs.update(uris=read["uris"], listed=read["listed"])
    written = outputs | "WriteOutputs" >> WriteOutputs(
        staging, cfg.num_shards, cfg.output_format == "npy", reused_sources=REUSED_SOURCES
    )
    written["engines"] = beam.pvalue.AsList(embedded[ENGINES_TAG])
    finish = functools.partial(
        finish_extraction,
        settings=run_settings(cfg, runs, known),
        local_matches=checked.local_matches,
        drop_empty_files=cfg.num_shards == 0,
    )
    return p | "Commit" >> Commit(JOB_EXTRACT, cfg, staging, finish, **written)


def failure_sources(**sources):
    """WriteOutputs' inputs for the steps that make failure records, each written where it is made."""
    return {f"{FAILURE_SOURCE}{name}": pcoll for name, pcoll in sources.items()}


def _embed_unknown(p, uris, decode: DecodeParams, embed: EmbedModels, embedding_model_id: str, run_id: str, known):
    """``--skip_known``: read and hash each URI, join on the hash with the known vectors, read again, decode and
    embed only content without one (once per distinct content), copy vectors to the rest.
    Returns (outputs, embedded)."""
    hashed = uris | "ReadAndHash" >> beam.ParDo(ReadAndHashFn(decode, run_id)).with_outputs(FAILURES_TAG, main="hashed")
    if known:
        wanted = beam.pvalue.AsSingleton(hashed.hashed | "TonightHashes" >> HashSet())
        vectors = p | "KnownVectors" >> KnownVectors(known, embedding_model_id, wanted)
    else:
        vectors = p | "NoKnownVectors" >> beam.Create([])
    split = {"tonight": hashed.hashed, "known": vectors} | "SplitByKnown" >> SplitByKnown(embedding_model_id, run_id)
    decoded = split[COMPUTE_TAG] | "DecodeUnknown" >> DecodeImages(decode, run_id)
    embedded = decoded.images | "EmbedImages" >> embed
    computed = embedded[f"{ROW_SOURCE}embed"]
    copies = {"rows": computed, PENDING_TAG: split[PENDING_TAG]} | "CopyVectors" >> CopyVectors(run_id)
    reused, copied = REUSED_SOURCES
    rows = {
        f"{ROW_SOURCE}computed": computed,
        f"{ROW_SOURCE}{reused}": split[REUSED_TAG],
        f"{ROW_SOURCE}{copied}": copies["rows"],
    }
    failures = failure_sources(
        read=hashed[FAILURES_TAG],
        decode=decoded[FAILURES_TAG],
        embed=embedded[f"{FAILURE_SOURCE}embed"],
        copy=copies[FAILURES_TAG],
    )
    return {**rows, **failures}, embedded


def run(argv: list[str] | None = None) -> dict[str, Any]:
    """Parse, check, run and wait; returns the manifest. Raises on bad input before any work."""
    cfg, beam_args = ExtractConfig.parse(argv)
    runs = resolve_models(cfg.models, cfg.weights_of(), cfg.input_range, cfg.seed)
    options = runtime.job_options(beam_args, cfg.detach)
    local = options.view_as(StandardOptions).runner in runtime.LOCAL_RUNNERS
    # A local run reads its URIs from a snapshot of the glob's listing, kept here for the run.
    with listing_folder() as listing_dir:
        checked = preflight(cfg, listing_dir if local else None)
        if cfg.skip_known and not skips_known(cfg, runs):
            LOG.warning(
                "--skip_known applies to one-model runs: every image is embedded with each of %d models", len(runs)
            )
        known = files_beside(cfg.output) if skips_known(cfg, runs) else []
        LOG.info(
            "extract_embeddings run_id=%s model_id=%s input=%s output=%s",
            cfg.run_id,
            ",".join(run.model_id for run in runs),
            cfg.input or cfg.input_manifest,
            cfg.output,
        )
        manifest = runtime.run_job(
            JOB_EXTRACT, cfg, options, lambda p, staging: build_pipeline(p, cfg, runs, staging, checked, known)
        )
    if not cfg.detach:
        LOG.info(
            "extract_embeddings done: inputs=%d embedded=%d (reused %d) failed=%d in %.1fs (%.1f images/s); "
            "failures=%s",
            manifest["inputs"],
            manifest["embedded"],
            manifest["reused"],
            manifest["failed"],
            manifest["seconds"],
            manifest["images_per_second"],
            manifest["failures_by_reason"],
        )
        if len(runs) > 1:
            for name, figures in manifest["models"].items():
                LOG.info(
                    "  %s: embedded=%d failed=%d (%.1f images/s) %s",
                    name,
                    figures["embedded"],
                    figures["failed"],
                    figures["images_per_second"],
                    figures["model_id"],
                )
    return manifest
