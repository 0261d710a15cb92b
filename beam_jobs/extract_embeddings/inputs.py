"""Stage ReadImageURIs: a glob or a manifest file of URIs -> distinct URIs, and the I/O checks before a run."""

from __future__ import annotations

import contextlib
import csv
import json
import os
import re
import shutil
import socket
import tempfile
from collections.abc import Callable, Iterator
from typing import Any, NamedTuple

import apache_beam as beam
from apache_beam.io.filesystem import FileSystem
from apache_beam.io.filesystems import FileSystems
from apache_beam.metrics import Metrics

from beam_jobs import storage
from beam_jobs.config import ExtractConfig
from beam_jobs.extract_embeddings.inference import METRICS_NAMESPACE, count_through
from beam_jobs.runtime import InputError


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


def list_local(pattern: str) -> Iterator[str]:
    """Every entry a local glob matches, read the way Beam reads globs, dropping nothing.

    Beam's local listing silently skips dangling symlinks (their size cannot be read)
    and never returns directories. Here every matching name is listed (files,
    symlinks dangling or not, FIFOs, sockets, folders), so each becomes an input and
    the decode step records why it could not be read instead of it vanishing from
    the count. Symlinked folders are not descended into, as in Beam. With ``**`` the
    folders walked through are not inputs themselves, only what is in them.
    """
    if pattern.endswith("/"):
        pattern += "*"  # as Beam's match does
    if not re.search(r"[*?[]", pattern):
        if os.path.lexists(pattern):
            yield pattern
        return
    matcher = re.compile(FileSystem.translate_pattern(pattern))
    prefix = re.match(r"^[^[*?]*", pattern).group(0)
    root = prefix if prefix.endswith("/") else os.path.dirname(prefix) or "."
    recursive = "**" in pattern
    for dirpath, dirnames, filenames in os.walk(root):
        for name in filenames if recursive else (*dirnames, *filenames):
            path = os.path.join(dirpath, name)
            if matcher.match(path):
                yield path


class ListingRange(NamedTuple):
    """Bytes ``[start, end)`` of a listing snapshot: whole lines, ``uris`` of them."""

    start: int
    end: int
    uris: int


# A glob's URIs cross the shuffle in batches: one element per URI made the local runner hold
# ~1.4 KB per input in its grouping buffers (+283 MB at 200,000 inputs, issue 16). Small nights
# keep one URI per batch, so their work still spreads over every worker.
MAX_LIST_BATCH = 500
MIN_LIST_BATCHES = 256


def list_batch_size(count: int) -> int:
    """URIs per shuffled element for a listing of ``count``: 1 up to 256 URIs, at most 500."""
    return max(1, min(MAX_LIST_BATCH, -(-count // MIN_LIST_BATCHES)))


def list_in_batches(pattern: str) -> Iterator[list[str]]:
    """Every URI a glob matches (local: ``list_local``; remote: the filesystem's match), in batches."""
    if storage.is_local(pattern):
        paths = list(list_local(pattern))
    else:
        paths = [m.path for m in FileSystems.match([pattern])[0].metadata_list]
    size = list_batch_size(len(paths))
    for start in range(0, len(paths), size):
        yield paths[start : start + size]


def count_listed(item: Any, size: Callable[[Any], int]) -> Any:
    """Pass ``item`` (a batch of URIs or a listing range) on, counting the URIs it holds."""
    Metrics.counter(METRICS_NAMESPACE, "uris_listed").inc(size(item))
    return item


def range_size(piece: ListingRange) -> int:
    return piece.uris


class Listing(NamedTuple):
    """A local glob listed once before the run: one JSON string per line (a name may hold a newline)."""

    path: str
    count: int
    ranges: tuple[ListingRange, ...]


def write_listing(pattern: str, path: str) -> Listing:
    """List a local glob into ``path`` and cut it into ranges of ``list_batch_size`` URIs.

    Only the ranges cross the pipeline's shuffle: the local runner holds its shuffles in memory,
    and URIs in it cost ~0.5 KB each even in batches (issue 16: 200,000 inputs, +95 MB).
    """
    lengths = []  # of each line, in bytes: the ranges are cut from these once the count is known
    with open(path, "wb") as handle:
        for uri in list_local(pattern):
            line = (json.dumps(uri) + "\n").encode("ascii")  # json.dumps escapes anything beyond ASCII
            handle.write(line)
            lengths.append(len(line))
    size = list_batch_size(len(lengths))
    ranges, start = [], 0
    for first in range(0, len(lengths), size):
        piece = lengths[first : first + size]
        end = start + sum(piece)
        ranges.append(ListingRange(start, end, len(piece)))
        start = end
    return Listing(path, len(lengths), tuple(ranges))


LISTING_DIR_PREFIX = "extract-listing-"


def _pid_alive(pid: int) -> bool:
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return False
    except PermissionError:  # another user's live process
        return True
    return True


def listing_prefix() -> str:
    # The host name too: containers sharing a temp folder do not share process ids, and a process id
    # is only known to be gone on the host (or container) that made the folder.
    host = re.sub(r"[^A-Za-z0-9.]", "_", socket.gethostname())
    return f"{LISTING_DIR_PREFIX}{host}-"


def sweep_stale_listings(parent: str) -> list[str]:
    """Remove the snapshot folders of runs whose process is gone (a killed run cannot clean up).

    A folder's name carries its host and process id; a live process (or a reused id) keeps its
    folder, and so does every folder made on another host.
    """
    removed = []
    pattern = re.compile(re.escape(listing_prefix()) + r"(\d+)-")
    for name in os.listdir(parent):
        found = pattern.match(name)
        pid = int(found.group(1)) if found else None
        if pid is not None and pid != os.getpid() and not _pid_alive(pid):
            shutil.rmtree(os.path.join(parent, name), ignore_errors=True)
            removed.append(name)
    return removed


@contextlib.contextmanager
def listing_folder(parent: str | None = None) -> Iterator[str]:
    """A folder for this run's listing snapshot, removed after the run; stale ones of killed runs go first."""
    parent = parent or tempfile.gettempdir()
    sweep_stale_listings(parent)
    with tempfile.TemporaryDirectory(prefix=f"{listing_prefix()}{os.getpid()}-", dir=parent) as folder:
        yield folder


def read_listing_range(piece: ListingRange, path: str) -> list[str]:
    with open(path, "rb") as handle:
        handle.seek(piece.start)
        data = handle.read(piece.end - piece.start)
    uris = [json.loads(line) for line in data.splitlines()]
    if len(uris) != piece.uris:
        raise RuntimeError(f"listing {path} changed during the run: {len(uris)} URIs at {piece}, not {piece.uris}")
    return uris


class ReadImageURIs(beam.PTransform):
    """A glob or a manifest of URIs -> {"listed": how many URIs each listed element held, "uris": distinct URIs}.

    A glob lists each file once, so its URIs need no de-duplication. With ``listing`` (a local glob
    listed before the run, ``write_listing``) byte ranges of the snapshot are shuffled (which spreads
    them over workers) and each worker reads its ranges; otherwise the glob is listed here and its URIs
    are shuffled in batches. A manifest may name a URI twice: its lines go through ``Distinct``.
    """

    def __init__(
        self,
        input_glob: str | None,
        input_manifest: str | None = None,
        manifest_column: int | None = None,
        listing: Listing | None = None,
    ):
        super().__init__()
        self._glob = input_glob
        self._manifest = input_manifest
        self._column = manifest_column
        self._listing = listing

    def expand(self, pbegin):
        if self._listing:
            path = self._listing.path
            pieces = (
                pbegin
                | "ListingRanges" >> beam.Create(self._listing.ranges)
                | "CountListed" >> beam.Map(count_listed, range_size)
            )
            uris = (
                pieces
                | "SpreadRanges" >> beam.Reshuffle()
                | "ReadListingRange" >> beam.FlatMap(read_listing_range, path)
            )
            return {"listed": pieces | "RangeSizes" >> beam.Map(range_size), "uris": uris}
        if self._glob:
            batches = (
                pbegin
                | "Pattern" >> beam.Create([self._glob])
                | "ListInBatches" >> beam.FlatMap(list_in_batches)
                | "CountListed" >> beam.Map(count_listed, len)
            )
            uris = batches | "SpreadBatches" >> beam.Reshuffle() | "Unbatch" >> beam.FlatMap(lambda batch: batch)
            return {"listed": batches | "BatchSizes" >> beam.Map(len), "uris": uris}
        column = self._column
        lines = (
            pbegin
            | "ReadManifest" >> beam.io.ReadFromText(self._manifest, skip_header_lines=1 if column is not None else 0)
            | "ParseManifestLines" >> beam.FlatMap(lambda line: [u] if (u := parse_manifest_line(line, column)) else [])
            | "CountListed" >> beam.Map(count_through("uris_listed"))
        )
        return {"listed": lines | "OnePerLine" >> beam.Map(lambda _: 1), "uris": lines | "Distinct" >> beam.Distinct()}


class Preflight(NamedTuple):
    """What the checks before a run learned: the manifest's URI column, how many entries a
    local glob matched (the commit step refuses a run that saw fewer), and, given a folder
    for it, the local glob's listing snapshot the run reads its URIs from."""

    manifest_column: int | None = None
    local_matches: int | None = None
    listing: Listing | None = None


def preflight(cfg: ExtractConfig, listing_dir: str | None = None) -> Preflight:
    """Checks that need I/O, done before the pipeline starts.

    A local glob is listed here (200,000 entries in ~1 s): the count lets the commit step catch
    URIs lost before its own counts; with ``listing_dir`` the listing is kept there as the run's
    snapshot of its inputs (files landing later are not part of the run).
    """
    if cfg.input:
        listing = None
        if storage.is_local(cfg.input):
            if listing_dir:
                listing = write_listing(cfg.input, os.path.join(listing_dir, "listing.jsonl"))
                matches = listing.count
            else:
                matches = sum(1 for _ in list_local(cfg.input))
            found = matches > 0
        else:
            matches = None
            found = bool(FileSystems.match([cfg.input], limits=[1])[0].metadata_list)
        if not found:
            raise InputError(f"--input {cfg.input!r} matches no files; nothing to embed")
        return Preflight(None, matches, listing)
    if not FileSystems.exists(cfg.input_manifest):
        raise InputError(f"--input_manifest {cfg.input_manifest!r} does not exist")
    with FileSystems.open(cfg.input_manifest, compression_type="uncompressed") as handle:
        head = handle.read(64 * 1024).decode("utf-8", errors="replace")
    lines = [ln for ln in head.splitlines() if ln.strip() and not ln.strip().startswith("#")]
    if not lines:
        raise InputError(f"--input_manifest {cfg.input_manifest!r} lists no URIs")
    return Preflight(parse_manifest_header(head.splitlines()[0]), None)
