"""Stage ReadImageURIs: a glob or a manifest file of URIs -> distinct URIs, and the I/O checks before a run."""

from __future__ import annotations

import csv

import apache_beam as beam
from apache_beam.io import fileio
from apache_beam.io.filesystems import FileSystems

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


class ReadImageURIs(beam.PTransform):
    """A glob or a manifest of URIs -> {"listed": every URI read, "uris": distinct URIs}."""

    def __init__(self, input_glob: str | None, input_manifest: str | None = None, manifest_column: int | None = None):
        super().__init__()
        self._glob = input_glob
        self._manifest = input_manifest
        self._column = manifest_column

    def expand(self, pbegin):
        if self._glob:
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
    return parse_manifest_header(head.splitlines()[0])
