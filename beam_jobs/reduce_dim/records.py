"""What moves between reduce_dim's stages: blocks of rows, their coders, and the output schema."""

from __future__ import annotations

import pickle
from typing import NamedTuple

import apache_beam as beam
import numpy as np

from beam_jobs import storage
from beam_jobs.contract import JOB_REDUCE, PROJECTION_COLUMNS

METRICS_NAMESPACE = JOB_REDUCE


def projection_schema():
    """Arrow schema of ``projection-*.parquet`` (``contract.PROJECTION_COLUMNS``)."""
    return storage.arrow_schema(PROJECTION_COLUMNS)


class Block(NamedTuple):
    """Consecutive rows of one file: the unit that moves through the pipeline."""

    uris: np.ndarray  # (rows,) object (str)
    x: np.ndarray  # (rows, dim) float32
    ds: str | None
    model_id: str


class Projected(NamedTuple):
    """A Block after projection: its 2D coordinates, with the embeddings kept for the trustworthiness sample."""

    uris: np.ndarray
    xy: np.ndarray  # (rows, 2) float32
    ds: str | None
    model_id: str
    x: np.ndarray  # dropped before writing


class DroppedRows(NamedTuple):
    """Rows left out because their embedding holds a NaN or an infinity: how many, and a few of their URIs."""

    count: int
    examples: tuple[str, ...]  # the smallest URIs (sorted), at most MAX_DROPPED_EXAMPLES


MAX_DROPPED_EXAMPLES = 5


class _ArrayTupleCoder(beam.coders.Coder):
    """Coder for the NamedTuples of arrays above (one per element type).

    Beam's default for them is pickle, and its size sampling pickles each sampled
    element just to count bytes: for 8192 x 2048 blocks that was ~4.6 s of a 100k-row
    PCA run. Here the size comes from the arrays' lengths without copying anything,
    and the encoding itself is pickle protocol 5 (a single copy of each array).
    """

    element_type: type = tuple

    def encode(self, value) -> bytes:
        return pickle.dumps(tuple(value), protocol=5)

    def decode(self, encoded: bytes):
        return self.element_type(*pickle.loads(encoded))

    def estimate_size(self, value) -> int:
        size = 0
        for part in value:
            if isinstance(part, np.ndarray):
                # Object arrays hold URIs: count their characters, not the pointers.
                size += sum(len(uri) + 5 for uri in part.flat) if part.dtype == object else part.nbytes
            elif isinstance(part, str):
                size += len(part) + 5
        return size

    def to_type_hint(self):
        return self.element_type


class BlockCoder(_ArrayTupleCoder):
    element_type = Block


class ProjectedCoder(_ArrayTupleCoder):
    element_type = Projected


beam.coders.registry.register_coder(Block, BlockCoder)
beam.coders.registry.register_coder(Projected, ProjectedCoder)
