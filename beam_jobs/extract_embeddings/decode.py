"""Stage DecodeImages: URI -> bytes -> model-ready pixels in one step; anything wrong -> a failure record."""

from __future__ import annotations

import concurrent.futures
import os
import time
from collections.abc import Iterator
from dataclasses import dataclass
from typing import Any, NamedTuple

import apache_beam as beam
from apache_beam.io.filesystems import FileSystems
from apache_beam.metrics import Metrics

from beam_jobs import storage
from beam_jobs.contract import (
    DEFAULT_MAX_BYTES,
    DEFAULT_MAX_PIXELS,
    DEFAULT_READ_TIMEOUT_S,
    FailureRecord,
    ResizeMode,
)
from beam_jobs.extract_embeddings.images import ImageError, decode_for_sizes, sha256_hex
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


def _check_local(path: str, max_bytes: int) -> None:
    """Refuse what must not be opened, from the file's metadata alone.

    Opening a FIFO blocks until a writer appears (forever, in a folder of uploads);
    a multi-GB file would be read whole into memory. Both are decided by stat()
    before any open().
    """
    try:
        info = os.stat(path)
    except FileNotFoundError:
        if os.path.islink(path):
            raise ImageError(
                "read", "dangling_symlink", f"{path} is a symlink to {os.readlink(path)!r}, which does not exist"
            ) from None
        raise ImageError(
            "read", "not_found", f"{path} does not exist (it may have been removed after listing)"
        ) from None
    except PermissionError as exc:
        raise ImageError("read", "permission_denied", f"PermissionError: {exc}") from None
    if kind := storage.not_regular(info.st_mode):
        raise ImageError("read", "not_a_regular_file", f"{path} is {kind}; only regular files are read")
    if info.st_size > max_bytes:
        raise ImageError("read", "too_large", f"{path} has {info.st_size:,} bytes, over --max_bytes {max_bytes:,}")


def _read_at_most(uri: str, max_bytes: int) -> bytes:
    with FileSystems.open(uri, compression_type="uncompressed") as handle:
        # One byte over the limit tells "too large" without holding more than the limit.
        return handle.read(max_bytes + 1)


def read_input(uri: str, max_bytes: int, timeout_s: float) -> bytes:
    """The bytes of one input, or ImageError(stage="read", reason=...) saying why not.

    Local files are checked before they are opened (regular file, size). On object
    stores the read is bounded in bytes (``max_bytes`` + 1) and in time (``timeout_s``):
    a stalled read becomes ``read/timeout`` instead of holding the worker.
    """
    local = storage.is_local(uri)
    if local:
        _check_local(uri, max_bytes)
    try:
        if local:
            data = _read_at_most(uri, max_bytes)
        else:
            pool = concurrent.futures.ThreadPoolExecutor(max_workers=1, thread_name_prefix="read")
            try:
                data = pool.submit(_read_at_most, uri, max_bytes).result(timeout=timeout_s)
            except concurrent.futures.TimeoutError:
                raise ImageError("read", "timeout", f"no complete read of {uri} within {timeout_s:g} s") from None
            finally:
                pool.shutdown(wait=False)
    except ImageError:
        raise
    except PermissionError as exc:
        raise ImageError("read", "permission_denied", f"PermissionError: {exc}") from None
    except Exception as exc:  # noqa: BLE001 - every read error becomes a record
        missing = isinstance(exc, FileNotFoundError) or not _exists(uri)
        reason = "not_found" if missing else "io_error"
        raise ImageError("read", reason, f"{type(exc).__name__}: {exc}") from None
    if len(data) > max_bytes:
        raise ImageError("read", "too_large", f"{uri} has more than --max_bytes {max_bytes:,} bytes")
    return data


@dataclass(frozen=True)
class DecodeParams:
    """What turns a URI into model pixels: the model's input size and the input limits.

    ``more_sizes``: the other input sizes of a several-model pass. When they add a size,
    each image comes out as (ImageMeta, {(width, height): pixels}), decoded once.
    """

    input_size: tuple[int, int]  # (width, height)
    resize_mode: ResizeMode = ResizeMode.CENTER_CROP
    max_pixels: int = DEFAULT_MAX_PIXELS
    max_bytes: int = DEFAULT_MAX_BYTES
    read_timeout_s: float = DEFAULT_READ_TIMEOUT_S
    more_sizes: tuple[tuple[int, int], ...] = ()

    @property
    def sizes(self) -> tuple[tuple[int, int], ...]:
        return tuple(dict.fromkeys((tuple(self.input_size), *map(tuple, self.more_sizes))))


class DecodeImageFn(beam.DoFn):
    """URI -> (ImageMeta, pixels); anything wrong -> a failure record on FAILURES_TAG."""

    def __init__(self, params: DecodeParams, run_id: str):
        self._params = params
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

    def _read_bytes(self, uri: str) -> bytes | beam.pvalue.TaggedOutput:
        """The input's bytes, or the failure record saying why they could not be read."""
        try:
            data = read_input(uri, self._params.max_bytes, self._params.read_timeout_s)
        except ImageError as exc:
            return self._fail(uri, exc.stage, exc.reason, exc.message)
        self._read.inc()
        self._bytes.update(len(data))
        return data

    def process(self, uri: str) -> Iterator[Any]:
        data = self._read_bytes(uri)
        if isinstance(data, beam.pvalue.TaggedOutput):
            yield data
            return
        yield from self._decode(uri, data)

    def _decode(self, uri: str, data: bytes) -> Iterator[Any]:
        start = time.perf_counter()
        try:
            params = self._params
            sizes = params.sizes
            images = decode_for_sizes(data, sizes, params.resize_mode, params.max_pixels)
        except ImageError as exc:
            yield self._fail(uri, exc.stage, exc.reason, exc.message)
            return
        except Exception as exc:  # noqa: BLE001 - a decoder bug must not kill the job
            yield self._fail(uri, "decode", "unexpected", f"{type(exc).__name__}: {exc}")
            return
        self._decode_ms.update(int((time.perf_counter() - start) * 1000))
        self._decoded.inc()
        img = images[0]
        meta = ImageMeta(uri, img.content_sha256, img.width, img.height)
        if len(sizes) == 1:
            yield meta, img.pixels
        else:
            yield meta, {size: image.pixels for size, image in zip(sizes, images, strict=True)}


def _exists(uri: str) -> bool:
    try:
        return FileSystems.exists(uri)
    except Exception:  # noqa: BLE001
        return False


class ReadAndHashFn(DecodeImageFn):
    """URI -> (content_sha256, URI): the input read and hashed, nothing decoded; a read failure -> a record.

    Only the hash and the URI go on to the join with the known hashes. The bytes do not: carried
    through the join's shuffle (hundreds of KB to MBs each), the local FnApiRunner lost elements
    (1 of 400 in 1 run of 3, against 0 in 3 with hashes only), and on Dataflow shuffling the bytes
    costs about what reading them again does. Content not embedded before is read again by
    ``DecodeImages``: known images are read once, new ones twice.
    """

    def process(self, uri: str) -> Iterator[Any]:
        data = self._read_bytes(uri)
        if isinstance(data, beam.pvalue.TaggedOutput):
            yield data
            return
        yield sha256_hex(data), uri


class DecodeImages(beam.PTransform):
    """URIs -> ``images`` (ImageMeta, pixels) and ``failures`` records."""

    def __init__(self, params: DecodeParams, run_id: str):
        super().__init__()
        self._fn = DecodeImageFn(params, run_id)

    def expand(self, uris):
        return uris | "ReadDecodeResize" >> beam.ParDo(self._fn).with_outputs(FAILURES_TAG, main="images")
