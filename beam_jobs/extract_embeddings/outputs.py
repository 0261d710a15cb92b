"""Stage WriteOutputs: staged Parquet shards, failures JSONL, optional .npy; and the commit step's manifest."""

from __future__ import annotations

import hashlib
import io
import json
import os
import re
from collections.abc import Callable, Sequence
from typing import Any

import apache_beam as beam
import numpy as np
from apache_beam.io.filesystems import FileSystems

from beam_jobs import storage
from beam_jobs.config import ExtractConfig
from beam_jobs.contract import (
    EMBEDDING_COLUMNS,
    EMBEDDINGS_PREFIX,
    FAILURES_PREFIX,
    NPY_DIR,
    ExtractManifest,
    FailureRecord,
    ModelFigures,
)
from beam_jobs.extract_embeddings.decode import FAILURES_TAG
from beam_jobs.extract_embeddings.models import ModelRun
from beam_jobs.partitions import partition_folders
from beam_jobs.runtime import AccountingError


def embedding_schema():
    return storage.arrow_schema(EMBEDDING_COLUMNS)


def npy_name(uri: str) -> str:
    """Readable and collision-free: same file name in two folders still differs."""
    stem = os.path.splitext(uri.rstrip("/").rsplit("/", 1)[-1])[0]
    stem = re.sub(r"[^A-Za-z0-9._-]+", "_", stem)[:80] or "image"
    return f"{stem}-{hashlib.sha1(uri.encode('utf-8')).hexdigest()[:12]}.npy"


def write_npy(row: dict[str, Any], directory: str) -> str:
    buf = io.BytesIO()
    np.save(buf, row["embedding"], allow_pickle=False)
    path = storage.join(directory, npy_name(row["image_uri"]))
    with FileSystems.create(path, mime_type="application/octet-stream") as handle:
        handle.write(buf.getvalue())
    return path


def failure_key(record: FailureRecord) -> str:
    """``<stage>/<error>``: how the manifest counts failures by reason."""
    return f"{record['stage']}/{record['error']}"


def skips_known(cfg: ExtractConfig, runs: list[ModelRun]) -> bool:
    """``--skip_known`` applies to one-model runs; a several-model pass embeds every image with each model
    (the known-vector join is keyed by one model_id)."""
    return cfg.skip_known and len(runs) == 1


def run_settings(cfg: ExtractConfig, runs: list[ModelRun], known: Sequence[str] = ()) -> dict[str, Any]:
    """The manifest fields fixed before the run starts (what was asked, which models ran, which earlier
    partitions ``--skip_known`` looked vectors up in).

    The top-level model fields name the primary (first) model, as a single-model run's do;
    ``models`` holds each model's, keyed by its ``--model`` name.
    """
    weights = cfg.weights_of()
    primary = runs[0]
    return {
        "skip_known": skips_known(cfg, runs),
        "known_partitions": partition_folders(known),
        "input": cfg.input or cfg.input_manifest,
        "model": primary.name,
        "model_id": primary.model_id,
        "weights": weights[primary.name],
        "embedding_dim": primary.spec.embedding_dim,
        "models": {
            run.name: {
                "model_id": run.model_id,
                "dim": run.spec.embedding_dim,
                "input_size": list(run.spec.input_size),
                "weights": weights[run.name],
            }
            for run in runs
        },
        "batch_size": cfg.batch_size,
        "resize_mode": cfg.resize_mode.value,
        "output_format": cfg.output_format,
        "engine": cfg.engine,
        "precision": cfg.precision,
    }


def drop_empty(files: Sequence[str], amount: Callable[[str], int]) -> list[str]:
    """The staged files that hold something; the empty ones are deleted.

    Each step's sink writes a file even when the step made nothing (a night without duplicates, a model
    that never failed), so a small night had several empty files. One stays when all are empty: a reader
    still finds the kind (and a Parquet file its schema).
    """
    ordered = sorted(files)
    empty = [f for f in ordered if amount(f) == 0]
    gone = set(empty[1:] if len(empty) == len(ordered) else empty)
    if gone:
        FileSystems.delete(sorted(gone))
    return [f for f in ordered if f not in gone]


def finish_extraction(
    staging: str,
    *,
    seconds: float,
    settings: dict[str, Any],
    counts: dict[str, int],
    failures_by_model: list[tuple[tuple[str, str], int]],
    embedding_files: list[str],
    failure_files: list[str],
    npy_count: int,
    engines: list[str] = (),
    local_matches: int | None = None,
    embedded_by_model: dict[str, int] | None = None,
    drop_empty_files: bool = True,
) -> ExtractManifest:
    """The commit step's check and manifest: every distinct input is embedded or failed, once.

    ``local_matches`` is how many entries the local glob matched before the run: fewer
    listed in the pipeline means URIs were lost before they were counted. ``engines``: the
    JSON descriptions of the engines that computed the rows (empty when nothing was embedded).
    With ``settings["models"]``, each model is accounted on its own (``per_model_figures``) and the
    top-level counts are the primary model's. ``failures_by_model``: ((model_id, "<stage>/<error>"), count),
    model_id "" for a read or decode failure; the run's failures by reason add up every model's.
    """
    inputs, embedded = counts["inputs"], counts["embedded"]
    failure_keys: dict[str, int] = {}
    for (_owner, reason), count in failures_by_model:
        failure_keys[reason] = failure_keys.get(reason, 0) + count
    failure_keys = dict(sorted(failure_keys.items()))
    failed = sum(failure_keys.values())
    if local_matches is not None and counts["listed"] < local_matches:
        raise AccountingError(
            f"listing mismatch: the input matched {local_matches} entries before the run "
            f"but only {counts['listed']} reached the pipeline"
        )
    if local_matches is not None and inputs != counts["listed"]:
        # A glob lists each file once, so every listed URI must come out of the de-duplication: fewer
        # means URIs were lost between steps, which would otherwise pass as "duplicate_inputs". (Seen on
        # the multi-threaded FnApiRunner under load: Beam's time-based flush race, turned off since by
        # beam_jobs.runtime; the check stays for any runner. Files that landed after the up-front count
        # are listed and distinct too: they pass.)
        raise AccountingError(
            f"de-duplication mismatch: a glob lists each file once, but {counts['listed']} were listed "
            f"and {inputs} distinct URIs came out of the shuffle"
        )
    decoded_engines = [json.loads(e) for e in sorted(engines)]
    models = settings.get("models")
    if models:
        figures = per_model_figures(
            models, inputs, seconds, embedded_by_model or {}, failures_by_model, decoded_engines
        )
        settings = {**settings, "models": figures}
        if len(models) > 1:
            primary = next(iter(figures.values()))
            embedded, failed = primary["embedded"], primary["failed"]
            failure_keys = primary["failures_by_reason"]
    if inputs != embedded + failed:
        raise AccountingError(f"accounting mismatch: {inputs} inputs but {embedded} embedded + {failed} failed")
    if drop_empty_files:  # not with --num_shards N: each set keeps the N files its names count
        embedding_files = drop_empty(embedding_files, storage.parquet_row_count)
        failure_files = drop_empty(failure_files, storage.file_size)
    reused = counts.get("reused", 0)
    return {
        **settings,
        "inputs": inputs,
        "duplicate_inputs": counts["listed"] - inputs,
        "embedded": embedded,
        "reused": reused,
        "computed": embedded - reused,
        "failed": failed,
        "failures_by_reason": failure_keys,
        "engines": decoded_engines,
        "npy_files": npy_count,
        "files": {
            "embeddings": sorted(os.path.basename(f) for f in embedding_files),
            "failures": sorted(os.path.basename(f) for f in failure_files),
        },
        "images_per_second": round(embedded / seconds, 3),
    }  # type: ignore[typeddict-item]  # job, run_id, output and timings come from runtime.Commit


def per_model_figures(
    models: dict[str, dict[str, Any]],
    inputs: int,
    seconds: float,
    embedded_by_model: dict[str, int],
    failures_by_model: list[tuple[tuple[str, str], int]],
    engines: list[dict[str, Any]],
) -> dict[str, ModelFigures]:
    """Each model's counts; raises AccountingError unless every input is embedded or failed for each.

    ``failures_by_model``: ((model_id, "<stage>/<error>"), count); model_id "" marks a read or decode
    failure, which counts against every model (the image never reached any of them).
    """
    out: dict[str, ModelFigures] = {}
    for name, fixed in models.items():
        mid = fixed["model_id"]
        reasons: dict[str, int] = {}
        for (owner, reason), count in failures_by_model:
            if owner in ("", mid):
                reasons[reason] = reasons.get(reason, 0) + count
        embedded, failed = embedded_by_model.get(mid, 0), sum(reasons.values())
        if inputs != embedded + failed:
            raise AccountingError(
                f"accounting mismatch for model {name}: {inputs} inputs but {embedded} embedded + {failed} failed"
            )
        out[name] = {
            **fixed,  # type: ignore[typeddict-item]
            "embedded": embedded,
            "failed": failed,
            "failures_by_reason": dict(sorted(reasons.items())),
            # The models share the pass, so each one's rate is its rows over the pass's wall time.
            "images_per_second": round(embedded / seconds, 3),
            "engines": [e for e in engines if e.get("model") == name],
        }
    return out


FAILURE_SOURCE = f"{FAILURES_TAG}_"  # WriteOutputs' input keys for failures: failures_<source>
ROW_SOURCE = "rows_"  # and for rows: rows_<source>


def _model_reason(record: FailureRecord) -> tuple[str, str]:
    return record.get("model_id", ""), failure_key(record)


def sources_of(pcolls: dict[str, Any], prefix: str) -> dict[str, Any]:
    return {key[len(prefix) :]: pc for key, pc in pcolls.items() if key.startswith(prefix)}


class WriteOutputs(beam.PTransform):
    """Rows and failures -> staged Parquet shards, failures JSONL and optional .npy files.

    Input keys: ``uris``, ``listed`` (how many URIs each listed element held), one ``rows_<source>`` per
    step that makes rows (one per model of the pass; with ``--skip_known`` computed, reused and copied) and
    one ``failures_<source>`` per step that makes failure records. Each source is written and counted
    where it is made (``embeddings-<source>-*.parquet`` when there are several row sources,
    ``failures-<source>-*.jsonl``): on the local runner a Flatten of several steps' outputs is held whole
    in memory before its consumers run (200,000 failures: +83 MB; rows: ~8 KB each at 2048-d), so only
    counts are brought together. ``reused_sources``: the row sources whose rows were not computed tonight.
    Returns the side inputs the commit step needs (file lists and counts).
    """

    def __init__(self, staging: str, num_shards: int, write_npy_files: bool, reused_sources: tuple[str, ...] = ()):
        super().__init__()
        self._staging = staging
        self._num_shards = num_shards
        self._npy = write_npy_files
        self._reused = reused_sources

    def expand(self, pcolls):
        staging, num_shards = self._staging, self._num_shards
        row_sources, failure_sources = sources_of(pcolls, ROW_SOURCE), sources_of(pcolls, FAILURE_SOURCE)
        # (name, count) pairs summed per name: each source counted by its own combiner.
        counted = [
            pcolls["uris"]
            | "Count_inputs" >> beam.combiners.Count.Globally()
            | "Key_inputs" >> beam.Map(_keyed, "inputs"),
            pcolls["listed"] | "Count_listed" >> beam.CombineGlobally(sum) | "Key_listed" >> beam.Map(_keyed, "listed"),
        ]
        emb_files, model_counts, npy_counts = [], [], []
        for name, rows in row_sources.items():
            prefix = EMBEDDINGS_PREFIX if len(row_sources) == 1 else f"{EMBEDDINGS_PREFIX}-{name}"
            emb_files.append(
                rows
                | f"WriteParquet_{name}"
                >> beam.io.WriteToParquet(
                    storage.join(staging, prefix),
                    embedding_schema(),
                    file_name_suffix=".parquet",
                    num_shards=num_shards,
                    # Bounded buffer: memory must not grow with the number of images.
                    row_group_buffer_size=16 * 1024 * 1024,
                    record_batch_size=256,
                )
            )
            count = rows | f"Count_rows_{name}" >> beam.combiners.Count.Globally()
            counted.append(count | f"Key_embedded_{name}" >> beam.Map(_keyed, "embedded"))
            if name in self._reused:
                counted.append(count | f"Key_reused_{name}" >> beam.Map(_keyed, "reused"))
            model_counts.append(
                rows
                | f"RowModel_{name}" >> beam.Map(lambda r: r["model_id"])
                | f"CountPerModel_{name}" >> beam.combiners.Count.PerElement()
            )
            if self._npy:
                npy_dir = storage.join(staging, NPY_DIR)
                npy_counts.append(
                    rows
                    | f"WriteNpy_{name}" >> beam.Map(write_npy, npy_dir)
                    | f"CountNpy_{name}" >> beam.combiners.Count.Globally()
                )
        fail_files, reason_counts = [], []
        for name, failures in failure_sources.items():
            fail_files.append(
                failures
                | f"FailureToJson_{name}" >> beam.Map(lambda r: json.dumps(r, sort_keys=True))
                | f"WriteFailures_{name}"
                >> beam.io.WriteToText(
                    storage.join(staging, f"{FAILURES_PREFIX}-{name}"), file_name_suffix=".jsonl", num_shards=num_shards
                )
            )
            reason_counts.append(
                failures
                | f"ModelReason_{name}" >> beam.Map(_model_reason)
                | f"CountPerModelReason_{name}" >> beam.combiners.Count.PerElement()
            )
        pipeline = pcolls["uris"].pipeline
        # ((model_id, "<stage>/<error>"), count): model_id "" for read/decode (every model's).
        failures_by_model = (
            reason_counts
            | "AllReasonCounts" >> beam.Flatten(pipeline=pipeline)
            | "SumPerModelReason" >> beam.CombinePerKey(sum)
            | "ModelReasonsToList" >> beam.combiners.ToList()
        )
        counts = (
            counted
            | "AllCounts" >> beam.Flatten()
            | "SumCounts" >> beam.CombinePerKey(sum)
            | "CountsToDict" >> beam.combiners.ToDict()
            | "ZeroCounts" >> beam.Map(lambda c: {"embedded": 0, **c})
        )
        embedded_by_model = (
            model_counts
            | "AllModelCounts" >> beam.Flatten(pipeline=pipeline)
            | "SumPerModel" >> beam.CombinePerKey(sum)
            | "ModelsToDict" >> beam.combiners.ToDict()
        )
        npy_count = (
            (npy_counts or [pipeline | "NoNpy" >> beam.Create([0])])
            | "AllNpy" >> beam.Flatten(pipeline=pipeline)
            | "SumNpy" >> beam.CombineGlobally(sum)
        )
        return {
            "embedded_by_model": beam.pvalue.AsSingleton(embedded_by_model),
            "failures_by_model": beam.pvalue.AsSingleton(failures_by_model),
            "counts": beam.pvalue.AsSingleton(counts),
            "embedding_files": beam.pvalue.AsList(emb_files | "AllEmbeddingFiles" >> beam.Flatten(pipeline=pipeline)),
            "failure_files": beam.pvalue.AsList(fail_files | "AllFailureFiles" >> beam.Flatten(pipeline=pipeline)),
            "npy_count": beam.pvalue.AsSingleton(npy_count),
        }


def _keyed(value: int, name: str) -> tuple[str, int]:
    return name, value
