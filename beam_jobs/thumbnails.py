"""Thumbnails for the maps and reports, read in parallel within a size budget, a per-read timeout and a total
time budget.

The map must never hold the night hostage: with ``gs://`` URIs and a slow or
unreachable store, one read through the store's client can wait for minutes on
its retry policy. ``gather_thumbnails`` reads the seeded sample's images on a
small pool of daemon threads, gives up on a read after ``read_timeout_s`` (the
thread is abandoned and replaced: a daemon thread cannot keep the process
alive) and stops everything after ``time_budget_s``. What it did not get is
drawn without a thumbnail and counted by reason:

* ``unreadable``: the read failed, the file is not an image, too large, or not a regular file;
* ``timeout``: one read took longer than ``read_timeout_s``;
* ``time_budget``: queued or in flight when the total budget ran out.

Results are accepted in sample order, so with a healthy store the same sample
gives the same thumbnails whatever the thread timing: the HTML gets them until
``budget_bytes`` of data URIs are spent, the mosaic the first ``min_count``.
At most ``max_reads`` are tried, so a night whose images are gone costs a few
thousand failed reads, not one per point.
"""

from __future__ import annotations

import base64
import io
import os
import queue
import threading
import time
from collections.abc import Callable, Sequence
from dataclasses import dataclass, field

from beam_jobs import storage
from beam_jobs.contract import DEFAULT_MAX_PIXELS

MAX_IMAGE_BYTES = 64 << 20  # larger files are not read for a thumbnail
MISS_REASONS = ("unreadable", "timeout", "time_budget")
DATA_URI_PREFIX = "data:image/webp;base64,"


@dataclass(frozen=True)
class ThumbnailParams:
    """How many thumbnails to get and how long to try.

    Args:
        size: longest side in pixels.
        budget_bytes: data URI bytes the HTML may hold; reading stops once spent (and ``min_count`` reached).
        min_count: thumbnails wanted whatever the byte budget (the mosaic's images).
        read_timeout_s: one read (open, read, decode, encode).
        time_budget_s: all reads together.
        threads: reads in flight.
    """

    size: int = 96
    budget_bytes: int = 8_000_000
    min_count: int = 0
    read_timeout_s: float = 10.0
    time_budget_s: float = 120.0
    threads: int = 16
    min_bytes_each: int = 1500  # reads stop after min_count + budget_bytes / this many (a store of missing images)

    @property
    def max_reads(self) -> int:
        return self.min_count + self.budget_bytes // self.min_bytes_each


@dataclass
class Thumbnails:
    """The thumbnails got, by index into the sample, as encoded image bytes; ``html`` indices fit the budget."""

    images: dict[int, bytes] = field(default_factory=dict)
    html: set[int] = field(default_factory=set)
    misses: dict[str, int] = field(default_factory=lambda: dict.fromkeys(MISS_REASONS, 0))
    seconds: float = 0.0

    def data_uri(self, index: int) -> str | None:
        if index not in self.html:
            return None
        return data_uri(self.images[index])


def data_uri(image: bytes) -> str:
    return DATA_URI_PREFIX + base64.b64encode(image).decode("ascii")


def data_uri_length(image: bytes) -> int:
    return len(DATA_URI_PREFIX) + 4 * ((len(image) + 2) // 3)


def encode_thumbnail(data: bytes, size: int, max_pixels: int = DEFAULT_MAX_PIXELS) -> bytes | None:
    """A small WEBP of an image (RGB as in the extraction job: ``pixels.to_rgb``), or None if it cannot be decoded."""
    from PIL import Image, ImageOps

    from beam_jobs.pixels import to_rgb

    try:
        with Image.open(io.BytesIO(data)) as img:
            if img.width * img.height > max_pixels:
                return None
            img.draft("RGB", (size * 2, size * 2))
            thumb = to_rgb(ImageOps.exif_transpose(img))
            thumb.thumbnail((size, size))
            out = io.BytesIO()
            thumb.save(out, format="WEBP", quality=70, method=4)
    except Exception:  # noqa: BLE001 - a missing thumbnail must not lose the map
        return None
    return out.getvalue()


def read_image_bytes(uri: str, max_bytes: int = MAX_IMAGE_BYTES) -> bytes:
    """The file's bytes through Beam's FileSystems; refuses FIFOs/devices and files over ``max_bytes``."""
    from apache_beam.io.filesystems import FileSystems

    if storage.is_local(uri) and (kind := storage.not_regular(os.stat(uri).st_mode)):
        raise OSError(f"{uri} is {kind}")
    with FileSystems.open(uri, compression_type="uncompressed") as handle:
        data = handle.read(max_bytes + 1)
    if len(data) > max_bytes:
        raise OSError(f"{uri} is over {max_bytes} bytes")
    return data


def thumbnail_of(uri: str, size: int, read: Callable[[str], bytes] = read_image_bytes) -> bytes | None:
    try:
        data = read(uri)
    except Exception:  # noqa: BLE001 - moved, deleted, unreachable: drawn without a thumbnail
        return None
    return encode_thumbnail(data, size) if data else None


def gather_thumbnails(
    uris: Sequence[str],
    params: ThumbnailParams,
    read: Callable[[str], bytes] = read_image_bytes,
    clock: Callable[[], float] = time.monotonic,
) -> Thumbnails:
    """Thumbnails for ``uris`` in order until the byte budget is spent, within the time budgets (module doc)."""
    out = Thumbnails()
    started_at = clock()
    if not uris or (params.budget_bytes <= 0 and params.min_count <= 0):
        return out
    deadline = started_at + params.time_budget_s
    todo: queue.Queue = queue.Queue()
    done: queue.Queue = queue.Queue()
    starts: dict[int, float] = {}  # index -> when its read began (written by the workers)

    def work() -> None:
        while (item := todo.get()) is not None:
            index, uri = item
            starts[index] = clock()
            done.put((index, thumbnail_of(uri, params.size, read)))

    def spawn() -> None:
        threading.Thread(target=work, name="thumbnail-read", daemon=True).start()

    workers = max(1, params.threads)
    for _ in range(workers):
        spawn()
    results: dict[int, bytes | str | None] = {}
    submitted = accepted = html_bytes = 0
    html_open = params.budget_bytes > 0
    lookahead = 4 * workers

    limit = min(len(uris), params.max_reads)

    def wanted() -> bool:
        return accepted < limit and (html_open or len(out.images) < params.min_count)

    while wanted():
        while submitted < limit and submitted < accepted + lookahead:
            todo.put((submitted, uris[submitted]))
            submitted += 1
        now = clock()
        if now >= deadline:
            break
        try:
            index, image = done.get(timeout=min(0.05, max(deadline - now, 0.001)))
            if index not in results:  # a late answer from an abandoned read stays a timeout
                results[index] = image
        except queue.Empty:
            pass
        now = clock()
        for index, began in list(starts.items()):
            if index not in results and now - began > params.read_timeout_s:
                results[index] = "timeout"
                starts.pop(index, None)
                spawn()  # the stuck thread is abandoned; keep the pool at strength
        while accepted in results and wanted():
            image = results.pop(accepted)
            starts.pop(accepted, None)
            if image == "timeout":
                out.misses["timeout"] += 1
            elif image is None:
                out.misses["unreadable"] += 1
            else:
                assert isinstance(image, bytes)
                out.images[accepted] = image
                size = data_uri_length(image)
                if html_open and html_bytes + size <= params.budget_bytes:
                    out.html.add(accepted)
                    html_bytes += size
                else:
                    html_open = False
            accepted += 1
    if wanted():  # the time budget ran out with reads queued or in flight
        out.misses["time_budget"] = submitted - accepted
    while True:  # let idle workers finish; stuck ones are daemon threads
        try:
            todo.get_nowait()
        except queue.Empty:
            break
    for _ in range(workers + out.misses["timeout"]):
        todo.put(None)
    out.seconds = clock() - started_at
    return out
