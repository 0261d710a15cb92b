"""Beam job: image URIs -> pooled CNN embeddings (Parquet) + failure records.

    python -m beam_jobs.extract_embeddings \\
        --input '/data/images/ds=2026-11-20/*.jpg' --output /data/out/embeddings/ds=2026-11-20 \\
        --weights random --runner FnApiRunner

Stages (each a composite PTransform):

  ReadImageURIs   glob or manifest -> distinct URIs (the shuffle also spreads work over workers)
  DecodeImages    read bytes + decode + resize in one step; bad files -> failure records
  EmbedImages     batched RunInference with our Keras handler; a failed batch -> failure records
  WriteOutputs    Parquet shards, failures JSONL, optional .npy, manifest.json; then the
                  staged directory replaces --output whole

Every input URI ends up in exactly one of the embeddings or the failures;
the commit step checks ``inputs == embedded + failed`` and fails the job
otherwise.
"""

from __future__ import annotations

import csv
import hashlib
import io
import json
import logging
import os
import re
import time
from collections.abc import Iterator
from typing import Any, NamedTuple

import apache_beam as beam
import numpy as np
from apache_beam.io import fileio
from apache_beam.io.filesystems import FileSystems
from apache_beam.metrics import Metrics
from apache_beam.ml.inference.base import KeyedModelHandler, PredictionResult, RunInference

from beam_jobs import storage
from beam_jobs.config import ExtractConfig, parse_extract_args
from beam_jobs.images import ImageError, decode_and_resize
from beam_jobs.inference import METRICS_NAMESPACE, KerasEmbeddingModelHandler
from beam_jobs.models import ResolvedWeights, get_spec, model_id, resolve_weights
from beam_jobs.runtime import attach_metrics, configure_logging, detached, pipeline_options, refuse_local_detach

LOG = logging.getLogger(__name__)
FAILURES_TAG = "failures"


def embedding_schema():
    import pyarrow as pa

    return pa.schema(
        [
            ("image_uri", pa.string()),
            ("embedding", pa.list_(pa.float32())),
            ("model_id", pa.string()),
            ("content_sha256", pa.string()),
            ("width", pa.int32()),
            ("height", pa.int32()),
            ("run_id", pa.string()),
        ]
    )


class ImageMeta(NamedTuple):
    """Travels as the RunInference key next to the pixels."""

    image_uri: str
    content_sha256: str
    width: int
    height: int


def failure_record(uri: str, stage: str, error: str, message: str, run_id: str) -> dict[str, str]:
    return {"image_uri": uri, "stage": stage, "error": error, "message": message, "run_id": run_id}


# --------------------------------------------------------------------------- input


def parse_manifest_header(first_line: str) -> int | None:
    """Column index of the URI in a CSV manifest, or None for a plain list of URIs."""
    cells = [c.strip().lower() for c in next(csv.reader([first_line]), [])]
    for name in ("image_uri", "uri", "path", "url"):
        if name in cells:
            return cells.index(name)
    return None


def parse_manifest_line(line: str, column: int | None) -> str | None:
    text = line.strip()
    if not text or text.startswith("#"):
        return None
    if column is None:
        return text
    cells = next(csv.reader([text]), [])
    return cells[column].strip() if column < len(cells) and cells[column].strip() else None


class ReadImageURIs(beam.PTransform):
    """A glob or a manifest of URIs -> {"listed": every URI read, "uris": distinct URIs}."""

    def __init__(self, cfg: ExtractConfig, manifest_column: int | None = None):
        super().__init__()
        self._cfg = cfg
        self._column = manifest_column

    def expand(self, pbegin):
        cfg = self._cfg
        if cfg.input:
            raw = pbegin | "MatchGlob" >> fileio.MatchFiles(cfg.input) | "MetadataToPath" >> beam.Map(lambda m: m.path)
        else:
            column = self._column
            raw = (
                pbegin
                | "ReadManifest"
                >> beam.io.ReadFromText(cfg.input_manifest, skip_header_lines=1 if column is not None else 0)
                | "ParseManifestLines"
                >> beam.FlatMap(lambda line: [u] if (u := parse_manifest_line(line, column)) else [])
            )
        listed = raw | "CountListed" >> beam.Map(_count("uris_listed"))
        # Distinct is a shuffle, so it also spreads the URIs of one glob across workers.
        return {"listed": listed, "uris": listed | "Distinct" >> beam.Distinct()}


def _count(name: str):
    counter = Metrics.counter(METRICS_NAMESPACE, name)

    def inc(x):
        counter.inc()
        return x

    return inc


# --------------------------------------------------------------------------- decode


class DecodeImageFn(beam.DoFn):
    """URI -> (ImageMeta, pixels); anything wrong -> a failure record on FAILURES_TAG."""

    def __init__(self, cfg: ExtractConfig, input_size: tuple[int, int]):
        self._cfg = cfg
        self._size = input_size

    def setup(self):
        ns = METRICS_NAMESPACE
        self._read = Metrics.counter(ns, "read")
        self._decoded = Metrics.counter(ns, "decoded")
        self._failed = Metrics.counter(ns, "failed")
        self._decode_ms = Metrics.distribution(ns, "decode_ms")
        self._bytes = Metrics.distribution(ns, "input_bytes")

    def _fail(self, uri: str, stage: str, reason: str, message: str):
        self._failed.inc()
        Metrics.counter(METRICS_NAMESPACE, f"failed_{stage}_{reason}").inc()
        return beam.pvalue.TaggedOutput(FAILURES_TAG, failure_record(uri, stage, reason, message, self._cfg.run_id))

    def process(self, uri: str) -> Iterator[Any]:
        try:
            with FileSystems.open(uri, compression_type="uncompressed") as handle:
                data = handle.read()
        except Exception as exc:  # noqa: BLE001 - every read error becomes a record
            missing = isinstance(exc, FileNotFoundError) or not _exists(uri)
            reason = "not_found" if missing else "io_error"
            yield self._fail(uri, "read", reason, f"{type(exc).__name__}: {exc}")
            return
        self._read.inc()
        self._bytes.update(len(data))
        start = time.perf_counter()
        try:
            img = decode_and_resize(data, self._size, self._cfg.resize_mode, self._cfg.max_pixels)
        except ImageError as exc:
            yield self._fail(uri, exc.stage, exc.reason, exc.message)
            return
        except Exception as exc:  # noqa: BLE001 - a decoder bug must not kill the job
            yield self._fail(uri, "decode", "unexpected", f"{type(exc).__name__}: {exc}")
            return
        self._decode_ms.update(int((time.perf_counter() - start) * 1000))
        self._decoded.inc()
        yield ImageMeta(uri, img.content_sha256, img.width, img.height), img.pixels


def _exists(uri: str) -> bool:
    try:
        return FileSystems.exists(uri)
    except Exception:  # noqa: BLE001
        return False


class DecodeImages(beam.PTransform):
    def __init__(self, cfg: ExtractConfig, input_size: tuple[int, int]):
        super().__init__()
        self._cfg = cfg
        self._size = input_size

    def expand(self, uris):
        return uris | "ReadDecodeResize" >> beam.ParDo(DecodeImageFn(self._cfg, self._size)).with_outputs(
            FAILURES_TAG, main="images"
        )


# --------------------------------------------------------------------------- embed


def to_row(item: tuple[ImageMeta, PredictionResult], run_id: str) -> dict[str, Any]:
    meta, result = item
    return {
        "image_uri": meta.image_uri,
        "embedding": np.asarray(result.inference, dtype=np.float32),
        "model_id": result.model_id,
        "content_sha256": meta.content_sha256,
        "width": meta.width,
        "height": meta.height,
        "run_id": run_id,
    }


def failed_batch_records(item: tuple[list, BaseException], run_id: str) -> list[dict[str, str]]:
    batch, exc = item
    Metrics.counter(METRICS_NAMESPACE, "failed").inc(len(batch))
    Metrics.counter(METRICS_NAMESPACE, f"failed_inference_{type(exc).__name__}").inc(len(batch))
    return [
        failure_record(meta.image_uri, "inference", type(exc).__name__, str(exc)[:2000], run_id)
        for meta, _pixels in batch
    ]


class EmbedImages(beam.PTransform):
    """(ImageMeta, pixels) -> embedding rows; main output rows, ``failures`` records."""

    def __init__(self, cfg: ExtractConfig, weights: ResolvedWeights, model_id_: str):
        super().__init__()
        self._cfg = cfg
        self._handler = KeyedModelHandler(
            KerasEmbeddingModelHandler(
                cfg.model,
                weights,
                model_id_,
                # min == max: fixed-size batches; adaptive sizing starts at 1 and wastes the first bundles.
                min_batch_size=cfg.batch_size,
                max_batch_size=cfg.batch_size,
                intra_op_threads=cfg.intra_op_threads,
            )
        )

    def expand(self, images):
        run_id = self._cfg.run_id
        main, other = images | "RunInference" >> RunInference(self._handler).with_exception_handling()
        embedded = _count("embedded")
        rows = main | "ToRow" >> beam.Map(lambda item: embedded(to_row(item, run_id)))
        failures = other.failed_inferences | "FailedBatchToRecords" >> beam.FlatMap(failed_batch_records, run_id)
        return {"rows": rows, FAILURES_TAG: failures}


# --------------------------------------------------------------------------- write


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


def summarise_failures(records: list[dict[str, str]]) -> dict[str, int]:
    out: dict[str, int] = {}
    for rec in records:
        key = f"{rec['stage']}/{rec['error']}"
        out[key] = out.get(key, 0) + 1
    return dict(sorted(out.items()))


class CommitFn(beam.DoFn):
    """Runs once, after every shard is final: writes the manifest and swaps the directory in."""

    def __init__(self, cfg: ExtractConfig, staging: str, model_id_: str, embedding_dim: int):
        self._cfg = cfg
        self._staging = staging
        self._model_id = model_id_
        self._dim = embedding_dim

    def process(self, _, counts, failure_keys, embedding_files, failure_files, npy_count):
        cfg = self._cfg
        inputs, embedded, failed = counts["inputs"], counts["embedded"], counts["failed"]
        if inputs != embedded + failed:
            raise RuntimeError(
                f"accounting mismatch: {inputs} inputs but {embedded} embedded + {failed} failed; "
                f"output left unpublished in {self._staging}"
            )
        seconds = max(time.time() - cfg.started_at, 1e-9)
        manifest = {
            "job": "extract_embeddings",
            "run_id": cfg.run_id,
            "input": cfg.input or cfg.input_manifest,
            "output": cfg.output,
            "inputs": inputs,
            "duplicate_inputs": counts["listed"] - inputs,
            "embedded": embedded,
            "failed": failed,
            "failures_by_reason": failure_keys,
            "model": cfg.model,
            "model_id": self._model_id,
            "weights": cfg.weights,
            "embedding_dim": self._dim,
            "batch_size": cfg.batch_size,
            "resize_mode": cfg.resize_mode.value,
            "output_format": cfg.output_format,
            "npy_files": npy_count,
            "files": {
                "embeddings": sorted(os.path.basename(f) for f in embedding_files),
                "failures": sorted(os.path.basename(f) for f in failure_files),
            },
            "started_at": time.strftime("%Y-%m-%dT%H:%M:%SZ", time.gmtime(cfg.started_at)),
            "finished_at": time.strftime("%Y-%m-%dT%H:%M:%SZ", time.gmtime()),
            "seconds": round(seconds, 3),
            "images_per_second": round(embedded / seconds, 3),
        }
        storage.write_json(storage.join(self._staging, storage.MANIFEST), manifest)
        storage.replace_directory(self._staging, cfg.output)
        yield manifest


class WriteOutputs(beam.PTransform):
    def __init__(self, cfg: ExtractConfig, staging: str, model_id_: str, embedding_dim: int):
        super().__init__()
        self._cfg = cfg
        self._staging = staging
        self._model_id = model_id_
        self._dim = embedding_dim

    def expand(self, pcolls):
        cfg, staging = self._cfg, self._staging
        rows, failures, uris, listed = pcolls["rows"], pcolls[FAILURES_TAG], pcolls["uris"], pcolls["listed"]
        p = rows.pipeline
        emb_files = rows | "WriteParquet" >> beam.io.WriteToParquet(
            storage.join(staging, "embeddings"),
            embedding_schema(),
            file_name_suffix=".parquet",
            num_shards=cfg.num_shards,
            # Bounded buffer: memory must not grow with the number of images.
            row_group_buffer_size=16 * 1024 * 1024,
            record_batch_size=256,
        )
        fail_files = (
            failures
            | "FailureToJson" >> beam.Map(lambda r: json.dumps(r, sort_keys=True))
            | "WriteFailures"
            >> beam.io.WriteToText(
                storage.join(staging, "failures"), file_name_suffix=".jsonl", num_shards=cfg.num_shards
            )
        )
        if cfg.output_format == "npy":
            npy_dir = storage.join(staging, "npy")
            npy_count = (
                rows | "WriteNpy" >> beam.Map(write_npy, npy_dir) | "CountNpy" >> beam.combiners.Count.Globally()
            )
        else:
            npy_count = p | "NoNpy" >> beam.Create([0])
        failure_list = failures | "FailuresToList" >> beam.combiners.ToList()
        n = {
            name: pc | f"Count_{name}" >> beam.combiners.Count.Globally()
            for name, pc in (("inputs", uris), ("listed", listed), ("embedded", rows), ("failed", failures))
        }
        counts = (
            [n[k] | f"Key_{k}" >> beam.Map(lambda v, k=k: (k, v)) for k in n]
            | "FlattenCounts" >> beam.Flatten()
            | "CountsToDict" >> beam.combiners.ToDict()
        )
        failure_keys = failure_list | "SummariseFailures" >> beam.Map(summarise_failures)
        return (
            p
            | "CommitTrigger" >> beam.Create([None])
            | "Commit"
            >> beam.ParDo(
                CommitFn(cfg, staging, self._model_id, self._dim),
                counts=beam.pvalue.AsSingleton(counts),
                failure_keys=beam.pvalue.AsSingleton(failure_keys),
                embedding_files=beam.pvalue.AsList(emb_files),
                failure_files=beam.pvalue.AsList(fail_files),
                npy_count=beam.pvalue.AsSingleton(npy_count),
            )
        )


# --------------------------------------------------------------------------- wiring


def build_pipeline(
    p: beam.Pipeline,
    cfg: ExtractConfig,
    weights: ResolvedWeights,
    staging: str,
    manifest_column: int | None = None,
):
    """Wire the graph; returns the PCollection holding the committed manifest."""
    spec = get_spec(cfg.model)
    mid = model_id(spec, weights)
    read = p | "ReadImageURIs" >> ReadImageURIs(cfg, manifest_column)
    decoded = read["uris"] | "DecodeImages" >> DecodeImages(cfg, spec.input_size)
    embedded = decoded.images | "EmbedImages" >> EmbedImages(cfg, weights, mid)
    failures = (decoded[FAILURES_TAG], embedded[FAILURES_TAG]) | "AllFailures" >> beam.Flatten()
    outputs = {"rows": embedded["rows"], FAILURES_TAG: failures, "uris": read["uris"], "listed": read["listed"]}
    return outputs | "WriteOutputs" >> WriteOutputs(cfg, staging, mid, spec.embedding_dim)


class InputError(ValueError):
    """The input names nothing to process."""


def preflight(cfg: ExtractConfig) -> int | None:
    """Checks that need I/O, done before the pipeline starts. Returns the manifest's URI column."""
    if cfg.input:
        found = FileSystems.match([cfg.input])[0].metadata_list
        if not found:
            raise InputError(f"--input {cfg.input!r} matches no files; nothing to embed")
        return None
    if not FileSystems.exists(cfg.input_manifest):
        raise InputError(f"--input_manifest {cfg.input_manifest!r} does not exist")
    with FileSystems.open(cfg.input_manifest, compression_type="uncompressed") as handle:
        head = handle.read(64 * 1024).decode("utf-8", errors="replace")
    lines = [ln for ln in head.splitlines() if ln.strip() and not ln.strip().startswith("#")]
    if not lines:
        raise InputError(f"--input_manifest {cfg.input_manifest!r} lists no URIs")
    column = parse_manifest_header(head.splitlines()[0]) if head.splitlines() else None
    return column


def run(argv: list[str] | None = None) -> dict[str, Any]:
    """Parse, check, run and wait; returns the manifest. Raises on bad input before any work."""
    cfg, beam_args = parse_extract_args(argv)
    spec = get_spec(cfg.model)
    weights = resolve_weights(spec, cfg.weights, cfg.seed)
    options = pipeline_options(beam_args)
    refuse_local_detach(options, cfg.detach)
    column = preflight(cfg)
    staging = storage.staging_dir_for(cfg.output)
    LOG.info(
        "extract_embeddings run_id=%s model_id=%s input=%s output=%s",
        cfg.run_id,
        model_id(spec, weights),
        cfg.input or cfg.input_manifest,
        cfg.output,
    )
    pipeline = beam.Pipeline(options=options)
    build_pipeline(pipeline, cfg, weights, staging, column)
    result = pipeline.run()
    if cfg.detach:
        return detached(result, cfg.output)
    result.wait_until_finish()
    manifest, metrics = attach_metrics(result, cfg.output, METRICS_NAMESPACE)
    LOG.info(
        "extract_embeddings done: inputs=%d embedded=%d failed=%d in %.1fs (%.1f images/s); failures=%s",
        manifest["inputs"],
        manifest["embedded"],
        manifest["failed"],
        manifest["seconds"],
        manifest["images_per_second"],
        manifest["failures_by_reason"],
    )
    LOG.info("metrics: %s", json.dumps(metrics, sort_keys=True))
    return manifest


def main(argv: list[str] | None = None) -> int:
    from beam_jobs.config import ConfigError
    from beam_jobs.models import WeightsError

    try:
        run(argv)
    except (ConfigError, WeightsError, InputError) as exc:
        # Configuration problems: say what is wrong, exit 2 (no stack trace, nothing started).
        LOG.error("%s", exc)
        return 2
    return 0


if __name__ == "__main__":
    configure_logging()
    raise SystemExit(main())
