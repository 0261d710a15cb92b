"""Stage DecodeImages: URI -> bytes -> model-ready pixels in one step; anything wrong -> a failure record."""

from __future__ import annotations

import time
from collections.abc import Iterator
from typing import Any, NamedTuple

import apache_beam as beam
from apache_beam.io.filesystems import FileSystems
from apache_beam.metrics import Metrics

from beam_jobs.contract import FailureRecord, ResizeMode
from beam_jobs.extract_embeddings.images import ImageError, decode_and_resize
from beam_jobs.extract_embeddings.inference import METRICS_NAMESPACE

FAILURES_TAG = "failures"


class ImageMeta(NamedTuple):
    """Travels as the RunInference key next to the pixels."""

    image_uri: str
    content_sha256: str
    width: int
    height: int


def failure_record(uri: str, stage: str, error: str, message: str, run_id: str) -> FailureRecord:
    return {"image_uri": uri, "stage": stage, "error": error, "message": message, "run_id": run_id}


class DecodeImageFn(beam.DoFn):
    """URI -> (ImageMeta, pixels); anything wrong -> a failure record on FAILURES_TAG."""

    def __init__(self, input_size: tuple[int, int], resize_mode: ResizeMode, max_pixels: int, run_id: str):
        self._size = input_size
        self._resize_mode = resize_mode
        self._max_pixels = max_pixels
        self._run_id = run_id

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
        return beam.pvalue.TaggedOutput(FAILURES_TAG, failure_record(uri, stage, reason, message, self._run_id))

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
            img = decode_and_resize(data, self._size, self._resize_mode, self._max_pixels)
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
    """URIs -> ``images`` (ImageMeta, pixels) and ``failures`` records."""

    def __init__(self, input_size: tuple[int, int], resize_mode: ResizeMode, max_pixels: int, run_id: str):
        super().__init__()
        self._fn = DecodeImageFn(input_size, resize_mode, max_pixels, run_id)

    def expand(self, uris):
        return uris | "ReadDecodeResize" >> beam.ParDo(self._fn).with_outputs(FAILURES_TAG, main="images")
