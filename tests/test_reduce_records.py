"""beam_jobs.reduce_dim.records: the block coders and the projection schema."""

from __future__ import annotations

import apache_beam as beam
import numpy as np
import pyarrow as pa
import pytest
from apache_beam import coders
from apache_beam.testing.test_pipeline import TestPipeline
from apache_beam.testing.util import assert_that, equal_to

from beam_jobs.contract import PROJECTION_COLUMNS
from beam_jobs.reduce_dim import records
from beam_jobs.reduce_dim.records import Block, Projected, projection_schema

RUNNER = ["--runner=FnApiRunner"]


@pytest.mark.parametrize("kind", [Block, Projected])
def test_block_coders_round_trip_and_size_without_encoding(kind, monkeypatch):
    coder = coders.registry.get_coder(kind)
    uris = np.array(["gs://b/a.jpg", "/x/é.png"], dtype=object)
    x = np.arange(2 * 2048, dtype=np.float32).reshape(2, 2048)
    value = Block(uris, x, "2026-11-20", "m1") if kind is Block else Projected(uris, x[:, :2].copy(), None, "m1", x)
    back = coder.decode(coder.encode(value))
    assert type(back) is kind
    for got, want in zip(back, value, strict=True):
        if isinstance(want, np.ndarray):
            assert got.dtype == want.dtype
            np.testing.assert_array_equal(got, want)
        else:
            assert got == want
    # Beam sizes sampled elements with estimate_size: it must not serialise the arrays.
    monkeypatch.setattr(records.pickle, "dumps", lambda *a, **k: pytest.fail("estimate_size encoded"))
    arrays = sum(v.nbytes for v in value if isinstance(v, np.ndarray) and v.dtype != object)
    assert arrays < coder.estimate_size(value) < arrays + 200


def test_blocks_cross_a_shuffle_intact():
    """Typed Blocks are encoded with BlockCoder between stages and arrive whole."""
    uris = [np.array([f"u{i}"], dtype=object) for i in range(4)]
    blocks = [Block(uris[i], np.full((1, 3), i, np.float32), "2026-11-20", "m") for i in range(4)]

    def summary(block: Block):
        return (str(block.uris[0]), float(block.x.sum()), block.x.dtype.name, block.ds, block.model_id)

    with TestPipeline(argv=RUNNER) as p:
        shuffled = p | beam.Create(blocks).with_output_types(Block) | beam.Reshuffle()
        out = shuffled | beam.Map(summary)
        assert_that(out, equal_to([(f"u{i}", 3.0 * i, "float32", "2026-11-20", "m") for i in range(4)]))


def test_projection_schema_is_the_contract():
    assert projection_schema() == pa.schema(
        [
            ("image_uri", pa.string()),
            ("x", pa.float32()),
            ("y", pa.float32()),
            ("method", pa.string()),
            ("model_id", pa.string()),
            ("ds", pa.string()),
            ("run_id", pa.string()),
        ]
    )
    assert projection_schema().names == [name for name, _ in PROJECTION_COLUMNS]
