"""Stage ReadEmbeddings, and the checks of the inputs before a run.

``inspect_inputs`` runs in the launcher before the pipeline is built: it lists
the embeddings files and reads only their Parquet footers, the ``model_id``
column and one row per file, so a bad input is refused in seconds with one
clear line (``runtime.InputError``, exit status 2). ``ReadEmbeddings`` then
reads the files as blocks of rows, file by file, so memory holds a few blocks,
never the data set.
"""

from __future__ import annotations

import re
from collections.abc import Iterator, Sequence
from dataclasses import dataclass

import apache_beam as beam
import numpy as np
from apache_beam.io.filesystems import FileSystems
from apache_beam.metrics import Metrics

from beam_jobs import storage
from beam_jobs.contract import EMBEDDING_FILES
from beam_jobs.reduce_dim.records import METRICS_NAMESPACE, NO_PARTITION, Block
from beam_jobs.runtime import InputError

# The columns of the extraction output (contract.EMBEDDING_COLUMNS) this job reads.
REQUIRED_COLUMNS = ("image_uri", "embedding", "model_id")
_PARTITION = re.compile(r"(?:^|/)ds=(\d{4}-\d{2}-\d{2})(?=/|$)")


def partition_of(path: str) -> str | None:
    """The ``ds=YYYY-MM-DD`` partition a file sits in, if any."""
    found = _PARTITION.findall(path)
    return found[-1] if found else None


def file_pattern(spec: str) -> str:
    """A partition directory (or a glob of them) -> the glob of its embeddings files."""
    last = spec.rstrip("/").rsplit("/", 1)[-1]
    if last.endswith(".parquet"):
        return spec
    return storage.join(spec, EMBEDDING_FILES)


def _hidden(path: str) -> bool:
    # Staging and trash directories of running or killed jobs start with a dot.
    return any(part.startswith(".") and part not in (".", "..") for part in path.split("/"))


@dataclass
class InputSummary:
    """What the launcher learnt about the inputs; the pipeline's stages take their fields."""

    files: list[str]
    rows_total: int  # of every model
    rows: int  # of the selected model: the rows the job must project
    model_id: str
    dim: int
    partitions: list[str]


def _open_parquet(path: str):
    import pyarrow.parquet as pq

    handle = FileSystems.open(path, compression_type="uncompressed")
    return handle, pq.ParquetFile(handle)


def _list_files(inputs: Sequence[str]) -> list[str]:
    files: list[str] = []
    for spec in inputs:
        pattern = file_pattern(spec)
        try:
            matched = FileSystems.match([pattern])[0].metadata_list
        except Exception as exc:
            raise InputError(f"--input {spec!r}: cannot list {pattern!r}: {exc}") from exc
        found = sorted(m.path for m in matched if not _hidden(m.path) and m.size_in_bytes > 0)
        if not found:
            raise InputError(f"--input {spec!r} matches no embeddings files ({pattern!r})")
        files.extend(found)
    return sorted(set(files))


def inspect_inputs(inputs: Sequence[str], model_id: str | None = None) -> InputSummary:
    """Check the inputs before any work: reads Parquet footers, the model_id column and one row per file.

    Args:
        inputs: the ``--input`` values (partition directories, globs of them, or globs of files).
        model_id: keep only rows of this model; None: the input must hold one model.
    """
    import pyarrow.compute as pc

    files = _list_files(inputs)
    model_rows: dict[str, int] = {}
    files_by_dim: dict[int, list[str]] = {}
    rows_total = 0
    for path in files:
        handle, parquet = _open_parquet(path)
        with handle:
            missing = [c for c in REQUIRED_COLUMNS if c not in parquet.schema_arrow.names]
            if missing:
                raise InputError(f"{path} is not extraction output: it lacks column(s) {', '.join(missing)}")
            file_rows = parquet.metadata.num_rows
            rows_total += file_rows
            if file_rows == 0:
                continue
            for entry in pc.value_counts(parquet.read(columns=["model_id"]).column("model_id")).to_pylist():
                model_rows[entry["values"]] = model_rows.get(entry["values"], 0) + entry["counts"]
            first = next(parquet.iter_batches(batch_size=1, columns=["embedding"]))
            files_by_dim.setdefault(len(first.column(0)[0]), []).append(path)
    if rows_total == 0:
        raise InputError(f"no input rows: {len(files)} embeddings file(s) matched but all are empty")
    if len(files_by_dim) > 1:
        detail = "; ".join(f"length {d} in {len(p)} file(s), e.g. {p[0]}" for d, p in sorted(files_by_dim.items()))
        raise InputError(f"input rows have different embedding lengths: {detail}")
    listing = ", ".join(f"{m!r} ({count} rows)" for m, count in sorted(model_rows.items()))
    if model_id is not None:
        if model_id not in model_rows:
            raise InputError(f"--model_id {model_id!r} has no rows in the input; it holds {listing}")
        chosen = model_id
    elif len(model_rows) > 1:
        raise InputError(
            f"input mixes embeddings of {len(model_rows)} models: {listing}. "
            "Their vectors are not comparable; pick one with --model_id"
        )
    else:
        chosen = next(iter(model_rows))
    partitions = sorted({partition_of(f) or NO_PARTITION for f in files})
    return InputSummary(files, rows_total, model_rows[chosen], chosen, next(iter(files_by_dim)), partitions)


class ReadBlocksFn(beam.DoFn):
    """A Parquet file -> Blocks of ``block_rows`` rows of the selected model."""

    def __init__(self, model_id: str, dim: int, block_rows: int):
        self._model_id = model_id
        self._dim = dim
        self._block_rows = block_rows

    def setup(self):
        ns = METRICS_NAMESPACE
        self._files = Metrics.counter(ns, "files_read")
        self._rows = Metrics.counter(ns, "rows_read")
        self._skipped = Metrics.counter(ns, "rows_skipped_other_model")
        self._block_size = Metrics.distribution(ns, "block_rows")

    def process(self, path: str) -> Iterator[Block]:
        import pyarrow.compute as pc

        ds = partition_of(path)
        handle, parquet = _open_parquet(path)
        with handle:
            self._files.inc()
            for batch in parquet.iter_batches(batch_size=self._block_rows, columns=list(REQUIRED_COLUMNS)):
                keep = pc.equal(batch.column("model_id"), self._model_id)
                matching = pc.sum(keep).as_py() or 0
                # Filtering copies every column (the embeddings too): only when some rows are skipped.
                kept = batch if matching == batch.num_rows else batch.filter(keep)
                self._skipped.inc(batch.num_rows - kept.num_rows)
                rows = kept.num_rows
                if rows == 0:
                    continue
                embeddings = kept.column("embedding")
                if embeddings.null_count:
                    raise ValueError(f"{path}: {embeddings.null_count} row(s) have no embedding")
                lengths = pc.min_max(pc.list_value_length(embeddings)).as_py()
                if lengths["min"] != self._dim or lengths["max"] != self._dim:
                    raise ValueError(
                        f"{path}: rows with embedding lengths {lengths['min']}..{lengths['max']}, "
                        f"expected {self._dim} (every row must have the same length)"
                    )
                flat = embeddings.flatten().to_numpy(zero_copy_only=False)
                x = flat.astype(np.float32, copy=False).reshape(rows, self._dim)
                uris = kept.column("image_uri").to_numpy(zero_copy_only=False)
                self._rows.inc(rows)
                self._block_size.update(rows)
                yield Block(uris, x, ds, self._model_id)


class ReadEmbeddings(beam.PTransform):
    """Embeddings files -> Blocks of the selected model's rows (typed, so Beam uses BlockCoder)."""

    def __init__(self, files: Sequence[str], model_id: str, dim: int, block_rows: int):
        super().__init__()
        self._files = list(files)
        self._model_id = model_id
        self._dim = dim
        self._block_rows = block_rows

    def expand(self, pbegin):
        return (
            pbegin
            | "Files" >> beam.Create(self._files)
            # Spread files over workers (Create alone puts them all in one bundle).
            | "SpreadFiles" >> beam.Reshuffle()
            | "ReadBlocks"
            >> beam.ParDo(ReadBlocksFn(self._model_id, self._dim, self._block_rows)).with_output_types(Block)
        )
