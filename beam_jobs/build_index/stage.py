"""Stage StageVectors: embeddings files -> unit-length float16 blocks staged beside the output.

Runs in parallel over files (one Beam element per file): each worker reads its
file in blocks, keeps the selected model's rows, leaves out rows whose vector
holds NaN/inf or is all zeros (counted), L2-normalises the rest and writes two
files per block into the staging directory's ``_parts/``: ``.npy`` float16 vectors
(half the bytes; the index stores fp16 anyway) and ``.parquet`` row metadata
(id, image_uri, ds, content_sha256). Only a small description of each block goes
through Beam to the build step.
"""

from __future__ import annotations

import io
from collections.abc import Iterator, Sequence
from typing import Any

import apache_beam as beam
import numpy as np
from apache_beam.io.filesystems import FileSystems
from apache_beam.metrics import Metrics

from beam_jobs import storage
from beam_jobs.build_index import ann
from beam_jobs.contract import JOB_INDEX
from beam_jobs.partitions import partition_of

PARTS_DIR = "_parts"
COLUMNS = ("image_uri", "embedding", "model_id", "content_sha256")


def write_npy(path: str, x: np.ndarray) -> None:
    buffer = io.BytesIO()
    np.save(buffer, x, allow_pickle=False)
    storage.write_bytes(path, buffer.getvalue())


def read_npy(path: str) -> np.ndarray:
    if storage.is_local(path):
        return np.load(path, allow_pickle=False)
    with FileSystems.open(path, compression_type="uncompressed") as handle:
        return np.load(io.BytesIO(handle.read()), allow_pickle=False)


class StageVectorsFn(beam.DoFn):
    def __init__(self, model_id: str, dim: int, block_rows: int, parts_dir: str):
        self._model_id = model_id
        self._dim = dim
        self._block_rows = block_rows
        self._parts_dir = parts_dir

    def setup(self):
        self._files = Metrics.counter(JOB_INDEX, "files_read")
        self._rows = Metrics.counter(JOB_INDEX, "rows_staged")
        self._non_finite = Metrics.counter(JOB_INDEX, "rows_dropped_non_finite")
        self._zero = Metrics.counter(JOB_INDEX, "rows_dropped_zero_vector")

    def process(self, item: tuple[str, int]) -> Iterator[dict[str, Any]]:
        import pyarrow as pa
        import pyarrow.compute as pc
        import pyarrow.parquet as pq

        path, first_row = item
        ds = partition_of(path)
        low, _ = ann.id_range(ds)
        with FileSystems.open(path, compression_type="uncompressed") as handle:
            parquet = pq.ParquetFile(handle)
            names = parquet.schema_arrow.names
            columns = [c for c in COLUMNS if c in names]
            self._files.inc()
            offset = first_row
            for number, batch in enumerate(parquet.iter_batches(batch_size=self._block_rows, columns=columns)):
                rows_in_batch = batch.num_rows
                ids = low + offset + np.arange(rows_in_batch, dtype=np.int64)
                offset += rows_in_batch
                keep = pc.equal(batch.column("model_id"), self._model_id).to_numpy(zero_copy_only=False)
                batch, ids = batch.filter(pa.array(keep)), ids[keep]
                if batch.num_rows == 0:
                    continue
                emb = batch.column("embedding")
                lengths = pc.min_max(pc.list_value_length(emb)).as_py()
                if emb.null_count or lengths["min"] != self._dim or lengths["max"] != self._dim:
                    raise ValueError(f"{path}: rows with no embedding or a length other than {self._dim}")
                x = emb.flatten().to_numpy(zero_copy_only=False).astype(np.float32).reshape(-1, self._dim)
                finite = np.isfinite(x).all(axis=1)
                unit, nonzero = ann.normalise(x[finite])
                dropped = {"non_finite": int((~finite).sum()), "zero_vector": int((~nonzero).sum())}
                self._non_finite.inc(dropped["non_finite"])
                self._zero.inc(dropped["zero_vector"])
                chosen = np.flatnonzero(finite)[nonzero]
                sha = (
                    batch.column("content_sha256").to_numpy(zero_copy_only=False)[chosen]
                    if "content_sha256" in names
                    else np.full(len(chosen), "", dtype=object)
                )
                stem = storage.join(self._parts_dir, f"{ds}-{first_row:010d}-{number:05d}")
                meta = pa.table(
                    {
                        "id": pa.array(ids[chosen], pa.int64()),
                        "image_uri": pa.array(batch.column("image_uri").to_numpy(zero_copy_only=False)[chosen]),
                        "ds": pa.array([ds] * len(chosen), pa.string()),
                        "content_sha256": pa.array(sha, pa.string()),
                    }
                )
                if len(chosen):
                    write_npy(stem + ".npy", unit.astype(np.float16))
                    sink = io.BytesIO()
                    pq.write_table(meta, sink)
                    storage.write_bytes(stem + ".parquet", sink.getvalue())
                self._rows.inc(len(chosen))
                yield {"stem": stem, "rows": len(chosen), "ds": ds, "dropped": dropped}


class StageVectors(beam.PTransform):
    """``(file, first row)`` pairs -> one small dict per staged block: stem, rows, ds, rows dropped."""

    def __init__(self, files: Sequence[tuple[str, int]], model_id: str, dim: int, block_rows: int, parts_dir: str):
        super().__init__()
        self._files = list(files)
        self._fn = StageVectorsFn(model_id, dim, block_rows, parts_dir)

    def expand(self, pbegin):
        return (
            pbegin
            | "Files" >> beam.Create(self._files)
            # Spread files over workers (Create alone puts them all in one bundle).
            | "SpreadFiles" >> beam.Reshuffle()
            | "NormaliseAndStage" >> beam.ParDo(self._fn)
        )
