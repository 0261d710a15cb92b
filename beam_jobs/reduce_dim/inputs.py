"""Stage ReadEmbeddings, and the row check of the inputs before a run.

The launcher lists and checks the embeddings files with ``partitions.inspect_inputs`` (Parquet footers,
the ``model_id`` column and one row per file: a file that is not Parquet is refused in seconds with one
clear line, ``runtime.InputError``, exit status 2); ``require_rows`` then refuses too few rows for the
method. ``ReadEmbeddings`` reads the files as blocks of rows, file by file, so memory holds a few
blocks, never the data set, and drops rows whose embedding holds a NaN or an infinity (counted, with a
few example URIs, for the manifest): those never reach a fit or a projection.
"""

from __future__ import annotations

import heapq
from collections.abc import Iterator, Sequence

import apache_beam as beam
import numpy as np
from apache_beam.metrics import Metrics

from beam_jobs import partitions
from beam_jobs.config import ConfigError
from beam_jobs.partitions import REQUIRED_COLUMNS, InputSummary, partition_of
from beam_jobs.reduce_dim.records import MAX_DROPPED_EXAMPLES, METRICS_NAMESPACE, Block, DroppedRows
from beam_jobs.reduce_dim.reduction import MIN_FIT_ROWS
from beam_jobs.runtime import InputError

# The tag of ReadBlocksFn's second output: a DroppedRows per block that had rows with NaN/inf values.
NON_FINITE = "non_finite"


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
        # Through the module: tests/support/killpoint.py stops a run here.
        handle, parquet = partitions.open_parquet(path)
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
