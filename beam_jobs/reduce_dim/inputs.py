"""Stage ReadEmbeddings, and the checks of the inputs before a run.

``inspect_inputs`` runs in the launcher before the pipeline is built: it lists
the embeddings files and reads only their Parquet footers, the ``model_id``
column and one row per file, so a bad input is refused in seconds with one
clear line (``runtime.InputError``, exit status 2): a file that is not Parquet
(truncated, corrupt, unreadable), too few rows for the method. ``ReadEmbeddings``
then reads the files as blocks of rows, file by file, so memory holds a few
blocks, never the data set, and drops rows whose embedding holds a NaN or an
infinity (counted, with a few example URIs, for the manifest): those never
reach a fit or a projection.
"""

from __future__ import annotations

import heapq
import os
import re
from collections.abc import Iterator, Sequence
from dataclasses import dataclass

import apache_beam as beam
import numpy as np
from apache_beam.io.filesystems import FileSystems
from apache_beam.metrics import Metrics

from beam_jobs import storage
from beam_jobs.config import ConfigError
from beam_jobs.contract import EMBEDDING_FILES
from beam_jobs.reduce_dim.records import MAX_DROPPED_EXAMPLES, METRICS_NAMESPACE, NO_PARTITION, Block, DroppedRows
from beam_jobs.reduce_dim.reduction import MIN_FIT_ROWS
from beam_jobs.runtime import InputError

# The columns of the extraction output (contract.EMBEDDING_COLUMNS) this job reads.
REQUIRED_COLUMNS = ("image_uri", "embedding", "model_id")
# The tag of ReadBlocksFn's second output: a DroppedRows per block that had rows with NaN/inf values.
NON_FINITE = "non_finite"
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


def _refuse_special_file(path: str) -> None:
    """A local FIFO (or device) matched by the glob would block the read forever: refuse it by name."""
    if not storage.is_local(path):
        return
    if kind := storage.not_regular(os.stat(path).st_mode):
        raise InputError(f"{path} is {kind}; only regular Parquet files are read")


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
        # Empty (0-byte) files are kept: a truncated file, refused by inspect_inputs with its name.
        found = sorted(m.path for m in matched if not _hidden(m.path))
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
    # model_id -> vector length -> files: one partition may hold several models (``--model a,b``), each with
    # its own length, in the same files; only the chosen model's rows must agree.
    model_dims: dict[str, dict[int, list[str]]] = {}
    rows_total = 0
    for path in files:
        try:
            _refuse_special_file(path)
            handle, parquet = _open_parquet(path)
            with handle:
                missing = [c for c in REQUIRED_COLUMNS if c not in parquet.schema_arrow.names]
                if missing:
                    raise InputError(f"{path} is not extraction output: it lacks column(s) {', '.join(missing)}")
                file_rows = parquet.metadata.num_rows
                if file_rows == 0:
                    continue
                ids = parquet.read(columns=["model_id"]).column("model_id")
                counts = pc.value_counts(ids).to_pylist()
                dims = {e["values"]: _length_at(parquet, pc.index(ids, e["values"]).as_py()) for e in counts}
        except InputError:
            raise
        except Exception as exc:  # pyarrow's ArrowInvalid, OSError, or a filesystem's own errors
            raise InputError(
                f"{path} cannot be read as Parquet (truncated, corrupt or unreadable): {_one_line(exc)}"
            ) from exc
        rows_total += file_rows
        for entry in counts:
            model_rows[entry["values"]] = model_rows.get(entry["values"], 0) + entry["counts"]
        for model, dim in dims.items():
            model_dims.setdefault(model, {}).setdefault(dim, []).append(path)
    if rows_total == 0:
        raise InputError(f"no input rows: {len(files)} embeddings file(s) matched but all are empty")
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
    files_by_dim = model_dims[chosen]
    if len(files_by_dim) > 1:
        detail = "; ".join(f"length {d} in {len(p)} file(s), e.g. {p[0]}" for d, p in sorted(files_by_dim.items()))
        raise InputError(f"input rows have different embedding lengths: {detail}")
    partitions = sorted({partition_of(f) or NO_PARTITION for f in files})
    return InputSummary(files, rows_total, model_rows[chosen], chosen, next(iter(files_by_dim)), partitions)


def _length_at(parquet, row: int) -> int:
    """Length of the embedding in row ``row`` of a file, reading only the row group that holds it."""
    for group in range(parquet.metadata.num_row_groups):
        size = parquet.metadata.row_group(group).num_rows
        if row < size:
            return len(parquet.read_row_group(group, columns=["embedding"]).column(0)[row])
        row -= size
    raise ValueError(f"row {row} is beyond the file's rows")


def _one_line(exc: BaseException) -> str:
    text = " ".join(str(exc).split()) or type(exc).__name__
    return text if len(text) <= 300 else text[:297] + "..."


def require_rows(summary: InputSummary, method: str, fit_sample_size: int) -> None:
    """Refuse, before any work, an input with fewer rows than ``method`` needs to fit (row counts of the footers).

    Rows dropped later for NaN/inf values can only be known by reading every row:
    the fit stage refuses those runs with the counts (``fit.check_fit_rows``).
    """
    need = MIN_FIT_ROWS[method]
    if method == "umap" and fit_sample_size < need:
        raise ConfigError(
            f"--fit_sample_size must be >= {need} (UMAP needs at least {need} rows to fit), got {fit_sample_size}"
        )
    if summary.rows < need:
        raise InputError(
            f"too few rows for {method}: the input holds {summary.rows} row(s) of model {summary.model_id!r} "
            f"in {len(summary.files)} file(s); {method} needs at least {need}"
        )


def drop_non_finite(uris: np.ndarray, x: np.ndarray) -> tuple[np.ndarray, np.ndarray, DroppedRows | None]:
    """(uris, x) without the rows holding a NaN or an infinity, and what was dropped (None: nothing).

    One vectorised pass over the block; the block is copied only when it has such rows.
    """
    finite = np.isfinite(x).all(axis=1)
    if finite.all():
        return uris, x, None
    bad = uris[~finite]
    examples = tuple(heapq.nsmallest(MAX_DROPPED_EXAMPLES, (str(u) for u in bad)))
    return uris[finite], x[finite], DroppedRows(len(bad), examples)


class ReadBlocksFn(beam.DoFn):
    """A Parquet file -> Blocks of ``block_rows`` rows of the selected model, rows with NaN/inf values left out.

    With ``report_dropped``, each block's left-out rows also go to the ``NON_FINITE``
    output (a DroppedRows) and to the ``rows_dropped_non_finite`` counter. The job
    reads its files twice (fit, then projection) and reports from one pass only,
    so the counter equals the manifest's figure.
    """

    def __init__(self, model_id: str, dim: int, block_rows: int, report_dropped: bool = False):
        self._model_id = model_id
        self._dim = dim
        self._block_rows = block_rows
        self._report_dropped = report_dropped

    def setup(self):
        ns = METRICS_NAMESPACE
        self._files = Metrics.counter(ns, "files_read")
        self._rows = Metrics.counter(ns, "rows_read")
        self._skipped = Metrics.counter(ns, "rows_skipped_other_model")
        self._dropped = Metrics.counter(ns, "rows_dropped_non_finite")
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
                # Null values inside a vector come out as NaN, and float64 values beyond float32 as inf:
                # both are left out below with the NaN/inf rows.
                flat = embeddings.flatten().to_numpy(zero_copy_only=False)
                x = flat.astype(np.float32, copy=False).reshape(rows, self._dim)
                uris = kept.column("image_uri").to_numpy(zero_copy_only=False)
                self._rows.inc(rows)
                uris, x, dropped = drop_non_finite(uris, x)
                if dropped is not None and self._report_dropped:
                    self._dropped.inc(dropped.count)
                    yield beam.pvalue.TaggedOutput(NON_FINITE, dropped)
                if not len(uris):
                    continue
                self._block_size.update(len(uris))
                yield Block(uris, x, ds, self._model_id)


class DroppedRowsFn(beam.CombineFn):
    """DroppedRows of every block -> one: the total count and the smallest example URIs (order-independent)."""

    def create_accumulator(self) -> DroppedRows:
        return DroppedRows(0, ())

    def add_input(self, acc: DroppedRows, item: DroppedRows) -> DroppedRows:
        examples = tuple(sorted(set(acc.examples) | set(item.examples))[:MAX_DROPPED_EXAMPLES])
        return DroppedRows(acc.count + item.count, examples)

    def merge_accumulators(self, accs) -> DroppedRows:
        out = self.create_accumulator()
        for acc in accs:
            out = self.add_input(out, acc)
        return out

    def extract_output(self, acc: DroppedRows) -> DroppedRows:
        return acc


class ReadEmbeddings(beam.PTransform):
    """Embeddings files -> Blocks of the selected model's finite rows (typed, so Beam uses BlockCoder).

    ``report_dropped``: return ``(blocks, dropped)``, ``dropped`` a PCollection of one
    DroppedRows summing the rows left out for NaN/inf values (count 0 when none).
    """

    def __init__(self, files: Sequence[str], model_id: str, dim: int, block_rows: int, report_dropped: bool = False):
        super().__init__()
        self._files = list(files)
        self._model_id = model_id
        self._dim = dim
        self._block_rows = block_rows
        self._report_dropped = report_dropped

    def expand(self, pbegin):
        read = ReadBlocksFn(self._model_id, self._dim, self._block_rows, self._report_dropped)
        outputs = (
            pbegin
            | "Files" >> beam.Create(self._files)
            # Spread files over workers (Create alone puts them all in one bundle).
            | "SpreadFiles" >> beam.Reshuffle()
            | "ReadBlocks" >> beam.ParDo(read).with_output_types(Block).with_outputs(NON_FINITE, main="blocks")
        )
        blocks = outputs.blocks
        if not self._report_dropped:
            return blocks
        dropped = outputs[NON_FINITE] | "CountDropped" >> beam.CombineGlobally(DroppedRowsFn())
        return blocks, dropped
