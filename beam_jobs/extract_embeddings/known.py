"""``--skip_known``: content embedded before with the same model gets that vector again, not a new one.

A join on ``content_sha256``; what enters it from earlier nights is filtered by tonight's hashes
first, so it grows with tonight, not with the history kept:

  ReadAndHash   decode.py  URI -> (sha256, URI); each input read and hashed, not decoded
  KnownVectors  here       the rows of this model_id whose hash tonight holds (a side input) in the
                           other partitions' files (``partitions.files_beside``): hashes read first,
                           vectors only of matching row groups; the vectors as bytes through the
                           shuffle, which so grows with tonight only
  SplitByKnown  here       CoGroupByKey of tonight's hashes with the known ones: a known hash -> a
                           reused row per URI; an unknown one -> its first URI (sorted) is read again,
                           decoded and embedded (DecodeImages), the other URIs with the same bytes
                           wait for that vector
  CopyVectors   here       the vectors computed tonight joined with the waiting URIs: each gets a
                           copy; when the computation failed, each gets a failure record naming it

Tonight's partition stays complete: every input URI still ends in exactly one of the rows or
the failures, and a reused vector is the stored float32 one, bit for bit.
"""

from __future__ import annotations

from collections.abc import Iterator, Sequence
from typing import Any

import apache_beam as beam
import numpy as np
from apache_beam.io.filesystems import FileSystems
from apache_beam.metrics import Metrics

from beam_jobs.extract_embeddings.decode import FAILURES_TAG, failure_record
from beam_jobs.extract_embeddings.inference import METRICS_NAMESPACE
from beam_jobs.partitions import folder_name

KNOWN_COLUMNS = ["content_sha256", "model_id", "embedding", "width", "height"]
REUSED_TAG = "reused"
COMPUTE_TAG = "compute"
PENDING_TAG = "pending"
# A URI whose bytes equal another URI's of tonight whose embedding failed.
SAME_CONTENT_FAILED = ("reuse", "same_content_failed")


def table_to_known(item: tuple[str, Any], model_id: str):
    """One Parquet row group -> (sha256, (partition, vector, width, height)) for rows of ``model_id``.

    The vectors are copied out of Arrow's buffers in one pass, each its own small array: views into
    the row group's buffer took the job to 17 GB of memory (and a corrupt stream) at 20,000 known rows.
    """
    import pyarrow.compute as pc

    path, table = item
    night = folder_name(path)
    table = table.filter(pc.equal(table.column("model_id"), model_id))
    if table.num_rows == 0:
        return
    shas = table.column("content_sha256").to_pylist()
    widths = table.column("width").to_pylist()
    heights = table.column("height").to_pylist()
    lists = table.column("embedding").combine_chunks()
    lengths = pc.fill_null(pc.list_value_length(lists), 0).to_numpy(zero_copy_only=False).astype(np.int64)
    flat = np.array(pc.list_flatten(lists).to_numpy(zero_copy_only=False), dtype=np.float32)
    ends = np.cumsum(lengths)
    for i, sha in enumerate(shas):
        vector = flat[ends[i] - lengths[i] : ends[i]]
        if sha and vector.size and np.isfinite(vector).all():
            # Plain bytes, not an array: Beam encodes (str, bytes, int, int) natively.
            yield sha, (night, vector.tobytes(), widths[i], heights[i])


class ReadKnownFn(beam.DoFn):
    """An embeddings file -> (sha256, (partition, vector, width, height)) of ``model_id`` for the hashes
    tonight holds, row group by row group: the hash and model columns first, the vectors only of a row
    group that has a match. Memory holds one row group; the shuffle after it, only tonight's matches."""

    def __init__(self, model_id: str):
        self._model_id = model_id

    def setup(self):
        self._scanned = Metrics.counter(METRICS_NAMESPACE, "known_rows_scanned")
        self._matched = Metrics.counter(METRICS_NAMESPACE, "known_rows_matched")

    def process(self, path: str, wanted: set[str]):
        import pyarrow as pa
        import pyarrow.parquet as pq

        if not wanted:
            return
        model_id = self._model_id
        with FileSystems.open(path, compression_type="uncompressed") as handle:
            parquet = pq.ParquetFile(handle)
            for group in range(parquet.num_row_groups):
                keys = parquet.read_row_group(group, columns=["content_sha256", "model_id"])
                shas, models = keys.column("content_sha256").to_pylist(), keys.column("model_id").to_pylist()
                mask = [sha in wanted and model == model_id for sha, model in zip(shas, models, strict=True)]
                self._scanned.inc(len(mask))
                if not any(mask):
                    continue
                self._matched.inc(sum(mask))
                rows = parquet.read_row_group(group, columns=KNOWN_COLUMNS).filter(pa.array(mask))
                yield from table_to_known((path, rows), model_id)


class KnownVectors(beam.PTransform):
    """Embeddings files -> (sha256, (partition, float32 vector as bytes, width, height)) of ``model_id``, for
    the hashes in ``wanted`` (a side input: tonight's hashes).

    Every matching stored row, not one per hash; the split keeps the earliest night's (several nights rarely
    hold the same bytes). Filtering by tonight's hashes before the join keeps the shuffle (and the local
    runner's memory) in proportion to tonight, not to every night kept: each nightly run used to send every
    earlier vector of the model through the join.
    """

    def __init__(self, files: Sequence[str], model_id: str, wanted: beam.pvalue.AsSideInput):
        super().__init__()
        self._files = list(files)
        self._model_id = model_id
        self._wanted = wanted

    def expand(self, pbegin):
        return (
            pbegin
            | "KnownFiles" >> beam.Create(self._files)
            # Spreads the files over workers; each is then read row group by row group by one plain DoFn.
            | "SpreadFiles" >> beam.Reshuffle()
            | "ReadKnown" >> beam.ParDo(ReadKnownFn(self._model_id), wanted=self._wanted)
        )


class SplitByKnownFn(beam.DoFn):
    """One hash's URIs of tonight and its stored vector (if any) -> reused rows, the URI to compute, and
    the URIs that wait for it."""

    def __init__(self, model_id: str, run_id: str):
        self._model_id = model_id
        self._run_id = run_id

    def setup(self):
        self._reused = Metrics.counter(METRICS_NAMESPACE, "reused")
        self._reused_same_night = Metrics.counter(METRICS_NAMESPACE, "reused_same_night")

    def process(self, item: tuple[str, dict[str, list]]) -> Iterator[Any]:
        sha, groups = item
        tonight = sorted(groups["tonight"])
        if not tonight:
            return
        known = [k for k in groups["known"] if k is not None]
        if known:
            # The earliest night's vector when several nights hold the content: the same choice every run.
            _night, stored, width, height = min(known, key=lambda k: k[0])
            vector = np.frombuffer(stored, dtype=np.float32).copy()
            for uri in tonight:
                self._reused.inc()
                yield beam.pvalue.TaggedOutput(REUSED_TAG, self._row(uri, sha, vector, width, height))
            return
        yield beam.pvalue.TaggedOutput(COMPUTE_TAG, tonight[0])
        for uri in tonight[1:]:
            self._reused_same_night.inc()
            yield beam.pvalue.TaggedOutput(PENDING_TAG, (sha, uri))

    def _row(self, uri: str, sha: str, vector, width: int, height: int) -> dict[str, Any]:
        return {
            "image_uri": uri,
            "embedding": vector,
            "model_id": self._model_id,
            "content_sha256": sha,
            "width": width,
            "height": height,
            "run_id": self._run_id,
        }


class SplitByKnown(beam.PTransform):
    """{"tonight": (sha, uri), "known": (sha, stored)} -> reused rows, compute (uri), pending (sha, uri)."""

    def __init__(self, model_id: str, run_id: str):
        super().__init__()
        self._fn = SplitByKnownFn(model_id, run_id)

    def expand(self, pcolls):
        joined = pcolls | "JoinOnHash" >> beam.CoGroupByKey()
        split = joined | "Split" >> beam.ParDo(self._fn).with_outputs(REUSED_TAG, COMPUTE_TAG, PENDING_TAG)
        return {REUSED_TAG: split[REUSED_TAG], COMPUTE_TAG: split[COMPUTE_TAG], PENDING_TAG: split[PENDING_TAG]}


def copy_vectors(item: tuple[str, dict[str, list]], run_id: str) -> Iterator[Any]:
    """Rows computed tonight for one hash, and the URIs waiting for it -> a copy each, or a record each."""
    _sha, groups = item
    # Keyed by the hash of the decode's read: a file rewritten between the two reads leaves its waiting
    # copies without a vector, and so with a record, never with another content's vector.
    rows, waiting = groups["rows"], sorted(groups["pending"])
    if not waiting:
        return
    if rows:
        source = rows[0]
        vector = np.frombuffer(source["embedding"], dtype=np.float32)
        for uri in waiting:
            Metrics.counter(METRICS_NAMESPACE, "reused").inc()
            yield {**source, "image_uri": uri, "embedding": vector.copy()}
        return
    stage, error = SAME_CONTENT_FAILED
    for uri in waiting:
        Metrics.counter(METRICS_NAMESPACE, "failed").inc()
        Metrics.counter(METRICS_NAMESPACE, f"failed_{stage}_{error}").inc()
        message = "same bytes as another input of this night whose embedding failed (see its record)"
        yield beam.pvalue.TaggedOutput(FAILURES_TAG, failure_record(uri, stage, error, message, run_id))


class HashSet(beam.PTransform):
    """(sha256, anything) pairs -> one set of their hashes, to filter a join's other side with (a side input)."""

    def expand(self, pairs):
        return pairs | "Hashes" >> beam.Map(lambda item: item[0]) | "ToSet" >> beam.combiners.ToSet()


class CopyVectors(beam.PTransform):
    """{"rows": tonight's computed rows, "pending": (sha, uri)} -> ``rows`` copies and ``failures``."""

    def __init__(self, run_id: str):
        super().__init__()
        self._run_id = run_id

    def expand(self, pcolls):
        # Only the computed rows whose content another URI of tonight waits for enter the join (a side
        # input: the waiting hashes, usually few), so the shuffle holds the duplicates' vectors, not all
        # of tonight's. Bytes, not the numpy array, through it (see KnownVectors).
        waiting = beam.pvalue.AsSingleton(pcolls[PENDING_TAG] | "WaitingHashes" >> HashSet())
        keyed = (
            pcolls["rows"]
            | "AwaitedRows" >> beam.Filter(lambda row, wanted: row["content_sha256"] in wanted, wanted=waiting)
            | "KeyBySha"
            >> beam.Map(
                lambda row: (
                    row["content_sha256"],
                    {**row, "embedding": np.asarray(row["embedding"], np.float32).tobytes()},
                )
            )
        )
        joined = {"rows": keyed, "pending": pcolls[PENDING_TAG]} | "JoinComputed" >> beam.CoGroupByKey()
        out = joined | "Copy" >> beam.FlatMap(copy_vectors, self._run_id).with_outputs(FAILURES_TAG, main="rows")
        return {"rows": out.rows, FAILURES_TAG: out[FAILURES_TAG]}
