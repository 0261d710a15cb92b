"""The extraction job: wiring of its stages, and ``run(argv)``.

    python -m beam_jobs.extract_embeddings \\
        --input '/data/images/ds=2026-11-20/*.jpg' --output /data/out/embeddings/ds=2026-11-20 \\
        --weights random --runner FnApiRunner

Stages (each a composite PTransform, in its own module):

  ReadImageURIs   inputs.py   glob or manifest -> distinct URIs (the shuffle also spreads work over workers)
  DecodeImages    decode.py   read bytes + decode + resize in one step; bad files -> failure records
                              (--skip_known: read and hash, join with the known hashes, decode only the
                              unknown content; known.py)
  EmbedImages     embed.py    batched RunInference with our Keras handler on the engine chosen for the
                              worker's CPU (engines.py); a failed batch -> failure records
  WriteOutputs    outputs.py  Parquet shards, failures JSONL, optional .npy
  Commit          runtime.py  manifest.json, then the staged directory replaces --output whole

Every input URI ends up in exactly one of the embeddings or the failures;
the commit step checks ``inputs == embedded + failed`` and fails the job
otherwise.
"""

from __future__ import annotations

import functools
import logging
from collections.abc import Sequence
from typing import Any

import apache_beam as beam

from beam_jobs import runtime
from beam_jobs.config import ExtractConfig
from beam_jobs.contract import JOB_EXTRACT
from beam_jobs.extract_embeddings.decode import (
    FAILURES_TAG,
    DecodeImages,
    DecodeParams,
    ReadAndHashFn,
)
from beam_jobs.extract_embeddings.embed import ENGINES_TAG, EmbedImages
from beam_jobs.extract_embeddings.engines import EngineChoice
from beam_jobs.extract_embeddings.inputs import Preflight, ReadImageURIs, preflight
from beam_jobs.extract_embeddings.known import (
    COMPUTE_TAG,
    PENDING_TAG,
    REUSED_TAG,
    CopyVectors,
    KnownVectors,
    SplitByKnown,
    known_files,
)
from beam_jobs.extract_embeddings.models import ResolvedWeights, get_spec, model_id, resolve_weights
from beam_jobs.extract_embeddings.outputs import WriteOutputs, finish_extraction, run_settings
from beam_jobs.runtime import Commit

LOG = logging.getLogger(__name__)


def build_pipeline(
    p: beam.Pipeline,
    cfg: ExtractConfig,
    weights: ResolvedWeights,
    staging: str,
    checked: Preflight | None = None,
    known: Sequence[str] = (),
):
    """Wire the graph; returns the PCollection holding the committed manifest.

    ``known``: with ``--skip_known``, the earlier partitions' embeddings files whose vectors are reused.
    """
    checked = checked or Preflight()
    spec = get_spec(cfg.model, cfg.input_range)
    embedding_model_id = model_id(spec, weights)
    read = p | "ReadImageURIs" >> ReadImageURIs(cfg.input, cfg.input_manifest, checked.manifest_column)
    decode = DecodeParams(spec.input_size, cfg.resize_mode, cfg.max_pixels, cfg.max_bytes, cfg.read_timeout_s)
    engine = EngineChoice(cfg.engine, cfg.precision, cfg.engine_threads)
    embed = EmbedImages(spec, weights, embedding_model_id, cfg.batch_size, cfg.run_id, engine)
    if cfg.skip_known:
        outputs, embedded = _embed_unknown(p, read["uris"], decode, embed, embedding_model_id, cfg.run_id, known)
    else:
        decoded = read["uris"] | "DecodeImages" >> DecodeImages(decode, cfg.run_id)
        embedded = decoded.images | "EmbedImages" >> embed
        failures = (decoded[FAILURES_TAG], embedded[FAILURES_TAG]) | "AllFailures" >> beam.Flatten()
        outputs = {"rows": embedded["rows"], FAILURES_TAG: failures}
    outputs.update(uris=read["uris"], listed=read["listed"])
    written = outputs | "WriteOutputs" >> WriteOutputs(staging, cfg.num_shards, cfg.output_format == "npy")
    written["engines"] = beam.pvalue.AsList(embedded[ENGINES_TAG])
    finish = functools.partial(
        finish_extraction,
        settings=run_settings(cfg, embedding_model_id, spec.embedding_dim, known),
        local_matches=checked.local_matches,
    )
    return p | "Commit" >> Commit(JOB_EXTRACT, cfg, staging, finish, **written)


def _embed_unknown(p, uris, decode: DecodeParams, embed: EmbedImages, embedding_model_id: str, run_id: str, known):
    """``--skip_known``: read and hash each URI, join on the hash with the known vectors, read again, decode and
    embed only content without one (once per distinct content), copy vectors to the rest.
    Returns (outputs, embedded)."""
    hashed = uris | "ReadAndHash" >> beam.ParDo(ReadAndHashFn(decode, run_id)).with_outputs(FAILURES_TAG, main="hashed")
    if known:
        vectors = p | "KnownVectors" >> KnownVectors(known, embedding_model_id)
    else:
        vectors = p | "NoKnownVectors" >> beam.Create([])
    split = {"tonight": hashed.hashed, "known": vectors} | "SplitByKnown" >> SplitByKnown(embedding_model_id, run_id)
    decoded = split[COMPUTE_TAG] | "DecodeUnknown" >> DecodeImages(decode, run_id)
    embedded = decoded.images | "EmbedImages" >> embed
    copies = {"rows": embedded["rows"], PENDING_TAG: split[PENDING_TAG]} | "CopyVectors" >> CopyVectors(run_id)
    reused = (split[REUSED_TAG], copies["rows"]) | "AllReused" >> beam.Flatten()
    rows = (embedded["rows"], reused) | "AllRows" >> beam.Flatten()
    failures = (
        hashed[FAILURES_TAG],
        decoded[FAILURES_TAG],
        embedded[FAILURES_TAG],
        copies[FAILURES_TAG],
    ) | "AllFailures" >> beam.Flatten()
    return {"rows": rows, FAILURES_TAG: failures, "reused": reused}, embedded


def run(argv: list[str] | None = None) -> dict[str, Any]:
    """Parse, check, run and wait; returns the manifest. Raises on bad input before any work."""
    cfg, beam_args = ExtractConfig.parse(argv)
    spec = get_spec(cfg.model, cfg.input_range)
    weights = resolve_weights(spec, cfg.weights, cfg.seed)
    options = runtime.job_options(beam_args, cfg.detach)
    checked = preflight(cfg)
    known = known_files(cfg.output) if cfg.skip_known else []
    LOG.info(
        "extract_embeddings run_id=%s model_id=%s input=%s output=%s",
        cfg.run_id,
        model_id(spec, weights),
        cfg.input or cfg.input_manifest,
        cfg.output,
    )
    manifest = runtime.launch(
        JOB_EXTRACT, cfg, options, lambda p, staging: build_pipeline(p, cfg, weights, staging, checked, known)
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
    return manifest
