"""Stage ReadImageURIs: a glob or a manifest file of URIs -> distinct URIs, and the I/O checks before a run."""

from __future__ import annotations

import csv
import os
import re
from collections.abc import Iterator
from typing import NamedTuple

import apache_beam as beam
from apache_beam.io import fileio
from apache_beam.io.filesystem import FileSystem
from apache_beam.io.filesystems import FileSystems

from beam_jobs import storage
from beam_jobs.config import ExtractConfig
from beam_jobs.extract_embeddings.inference import count_through
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


class ReadImageURIs(beam.PTransform):
    """A glob or a manifest of URIs -> {"listed": every URI read, "uris": distinct URIs}."""

    def __init__(self, input_glob: str | None, input_manifest: str | None = None, manifest_column: int | None = None):
        super().__init__()
        self._glob = input_glob
        self._manifest = input_manifest
        self._column = manifest_column

    def expand(self, pbegin):
        if self._glob and storage.is_local(self._glob):
            raw = pbegin | "Pattern" >> beam.Create([self._glob]) | "ListLocal" >> beam.FlatMap(list_local)
        elif self._glob:
            raw = pbegin | "MatchGlob" >> fileio.MatchFiles(self._glob) | "MetadataToPath" >> beam.Map(lambda m: m.path)
        else:
            column = self._column
            raw = (
                pbegin
                | "ReadManifest"
                >> beam.io.ReadFromText(self._manifest, skip_header_lines=1 if column is not None else 0)
                | "ParseManifestLines"
                >> beam.FlatMap(lambda line: [u] if (u := parse_manifest_line(line, column)) else [])
            )
        listed = raw | "CountListed" >> beam.Map(count_through("uris_listed"))
        # Distinct is a shuffle, so it also spreads the URIs of one glob across workers.
        return {"listed": listed, "uris": listed | "Distinct" >> beam.Distinct()}


class Preflight(NamedTuple):
    """What the checks before a run learned: the manifest's URI column, and how many
    entries a local glob matched (the commit step refuses a run that saw fewer)."""

    manifest_column: int | None = None
    local_matches: int | None = None


def preflight(cfg: ExtractConfig) -> Preflight:
    """Checks that need I/O, done before the pipeline starts."""
    if cfg.input:
        if storage.is_local(cfg.input):
            # Listing a local folder is cheap (200,000 entries in ~0.6 s), and the count lets the
            # commit step catch URIs lost before its own counts, which it could not see otherwise.
            matches = sum(1 for _ in list_local(cfg.input))
            found = matches > 0
        else:
            matches = None
            found = bool(FileSystems.match([cfg.input], limits=[1])[0].metadata_list)
        if not found:
            raise InputError(f"--input {cfg.input!r} matches no files; nothing to embed")
        return Preflight(None, matches)
    if not FileSystems.exists(cfg.input_manifest):
        raise InputError(f"--input_manifest {cfg.input_manifest!r} does not exist")
    with FileSystems.open(cfg.input_manifest, compression_type="uncompressed") as handle:
        head = handle.read(64 * 1024).decode("utf-8", errors="replace")
    lines = [ln for ln in head.splitlines() if ln.strip() and not ln.strip().startswith("#")]
    if not lines:
        raise InputError(f"--input_manifest {cfg.input_manifest!r} lists no URIs")
    return Preflight(parse_manifest_header(head.splitlines()[0]), None)
