"""beam_jobs.reduce_dim.outputs: WriteOutputs as a Beam stage, and the commit step's checks, maps and fields."""

from __future__ import annotations

import glob
import os

import apache_beam as beam
import numpy as np
import pyarrow.parquet as pq
import pytest
from apache_beam.testing.test_pipeline import TestPipeline
from apache_beam.testing.util import assert_that

from beam_jobs.reduce_dim.inputs import InputSummary
from beam_jobs.reduce_dim.outputs import (
    CoordsFn,
    MapParams,
    WriteOutputs,
    finish_reduction,
    map_labels,
    sample_points,
    sample_trustworthiness,
    to_table,
)
from beam_jobs.reduce_dim.records import DroppedRows, Projected, projection_schema
from beam_jobs.reduce_dim.reduction import Sample
from beam_jobs.runtime import AccountingError

RUNNER = ["--runner=FnApiRunner"]
MAPS = MapParams(html_points=4, thumbnail_size=32, thumbnails=False, trust_sample_size=6, seed=0)


def projected_blocks(rows: int, per_block: int) -> list[Projected]:
    rng = np.random.default_rng(0)
    x = rng.normal(size=(rows, 5)).astype(np.float32)
    uris = np.array([f"/img/{i:03d}.jpg" for i in range(rows)], dtype=object)
    return [
        Projected(uris[i : i + per_block], x[i : i + per_block, :2].copy(), "2026-11-20", "m", x[i : i + per_block])
        for i in range(0, rows, per_block)
    ]


def summary_of(rows: int) -> InputSummary:
    return InputSummary(["/e/ds=2026-11-20/embeddings-0.parquet"], rows, rows, "m", 5, ["2026-11-20"])


@pytest.mark.slow  # 4-7 s on 2 busy cores (many stages); the pieces are checked fast below
def test_write_outputs_stage_writes_parquet_and_gathers_what_the_commit_needs(tmp_path):
    staging = str(tmp_path / "staging")

    def check(results):
        (got,) = results
        assert got["rows"] == 10
        xy, groups = got["coords"]
        assert xy.shape == (10, 2)
        assert set(groups) == {"2026-11-20"}
        assert len(got["sample"]) == 6  # max(html_points, trust_sample_size)
        points = sorted(got["points"], key=lambda p: p["order"])
        assert [p["order"] for p in points] == [0, 1, 2, 3]
        assert [p["image_uri"] for p in points] == list(got["sample"].columns["image_uri"][:4])
        assert all(p["thumbnail"] is None for p in points)  # thumbnails=False: no image is read
        assert len(got["files"]) == 2

    with TestPipeline(argv=RUNNER) as p:
        projected = p | beam.Create(projected_blocks(10, 3)).with_output_types(Projected)
        written = projected | WriteOutputs(staging, "pca", "r1", num_shards=2, maps=MAPS)
        gathered = p | "Trigger" >> beam.Create([None]) | beam.Map(lambda _, **side: side, **written)
        assert_that(gathered, check)

    files = sorted(glob.glob(os.path.join(staging, "projection-*.parquet")))
    assert len(files) == 2
    rows = [r for f in files for r in pq.read_table(f).to_pylist()]
    assert pq.read_schema(files[0]).remove_metadata() == projection_schema()
    assert sorted(r["image_uri"] for r in rows) == [f"/img/{i:03d}.jpg" for i in range(10)]
    assert {(r["method"], r["model_id"], r["ds"], r["run_id"]) for r in rows} == {("pca", "m", "2026-11-20", "r1")}


def test_parquet_rows_and_map_coordinates_of_projected_blocks():
    blocks = projected_blocks(5, 3)
    table = to_table(blocks[0], "umap", "r1")
    assert table.schema == projection_schema()
    assert table.column("image_uri").to_pylist() == ["/img/000.jpg", "/img/001.jpg", "/img/002.jpg"]
    np.testing.assert_array_equal(table.column("x").to_numpy(), blocks[0].xy[:, 0])
    assert set(table.column("method").to_pylist()) == {"umap"}
    coords = CoordsFn()
    parts = [coords.add_input(coords.create_accumulator(), b) for b in blocks]
    xy, groups = coords.extract_output(coords.merge_accumulators(parts))
    assert xy.shape == (5, 2)
    assert list(groups) == ["2026-11-20"] * 5
    empty_xy, empty_groups = coords.extract_output(coords.create_accumulator())
    assert empty_xy.shape == (0, 2)
    assert len(empty_groups) == 0


def test_sample_points_are_numbered_in_sample_order():
    sample = side_values(10)["sample"]
    points = sample_points(sample, 4)
    assert [p["order"] for p in points] == [0, 1, 2, 3]
    assert [p["image_uri"] for p in points] == list(sample.columns["image_uri"][:4])
    assert points[1]["x"] == float(sample.columns["xy"][1, 0])
    assert len(sample_points(sample, 100)) == len(sample)


def side_values(rows: int) -> dict:
    blocks = projected_blocks(rows, rows)
    ds = np.full(rows, "2026-11-20", dtype=object)
    sample = Sample(6).add(
        np.arange(rows, dtype=np.uint64), image_uri=blocks[0].uris, ds=ds, x=blocks[0].x, xy=blocks[0].xy
    )
    points = [
        {"image_uri": f"/img/{i:03d}.jpg", "x": 0.1 * i, "y": 0.2, "ds": "2026-11-20", "order": i, "thumbnail": None}
        for i in reversed(range(4))
    ]
    return {
        "info": {"explained_variance_ratio": [0.5, 0.25], "explained_variance": [2.0, 1.0], "fit_rows": rows},
        "dropped": DroppedRows(0, ()),
        "rows": rows,
        "coords": (blocks[0].xy, np.full(rows, "2026-11-20", dtype=object)),
        "sample": sample,
        "points": points,
        "files": ["/s/projection-00001-of-00002.parquet", "/s/projection-00000-of-00002.parquet"],
    }


def test_finish_refuses_a_row_count_mismatch(tmp_path):
    staging = str(tmp_path / "staging")
    with pytest.raises(AccountingError, match=r"mismatch: 11 input rows of 'm' but 10 projected \+ 0 dropped"):
        finish_reduction(
            staging, seconds=1.0, settings={}, summary=summary_of(11), method="pca", run_id="r", maps=MAPS,
            **side_values(10),
        )  # fmt: skip
    assert not os.path.exists(staging)  # nothing rendered for a run that will not be published


def test_finish_renders_both_maps_and_returns_the_manifest_fields(tmp_path):
    staging = str(tmp_path / "staging")
    fields = finish_reduction(
        staging, seconds=2.0, settings={"method": "pca"}, summary=summary_of(10), method="pca", run_id="r",
        maps=MAPS, **side_values(10),
    )  # fmt: skip
    assert fields["rows"] == 10
    assert fields["rows_per_second"] == 5.0
    assert fields["html_points"] == 4
    assert fields["thumbnails"] == 0
    assert fields["trustworthiness_rows"] == 6
    assert 0 < fields["trustworthiness"] <= 1
    assert fields["files"] == {
        "projections": ["projection-00000-of-00002.parquet", "projection-00001-of-00002.parquet"],
        "map_png": "map.png",
        "map_html": "map.html",
    }
    assert fields["explained_variance_ratio"] == [0.5, 0.25]
    assert (fields["rows_dropped_non_finite"], fields["non_finite_examples"]) == (0, [])
    with open(os.path.join(staging, "map.png"), "rb") as handle:
        assert handle.read(8) == b"\x89PNG\r\n\x1a\n"
    with open(os.path.join(staging, "map.html"), encoding="utf-8") as handle:
        page = handle.read()
    assert "Showing 4 of 10 rows (seeded sample, seed 0)." in page
    # Points are plotted in sample order, whatever order the thumbnails arrived in.
    assert page.index("/img/000.jpg") < page.index("/img/003.jpg")


def test_finish_accounts_for_rows_dropped_for_nan_or_inf(tmp_path):
    staging = str(tmp_path / "staging")
    side = {**side_values(10), "dropped": DroppedRows(3, ("/img/bad-0.jpg", "/img/bad-1.jpg"))}
    fields = finish_reduction(
        staging, seconds=1.0, settings={}, summary=summary_of(13), method="pca", run_id="r", maps=MAPS, **side
    )
    assert fields["rows"] == 10
    assert fields["rows_dropped_non_finite"] == 3
    assert fields["non_finite_examples"] == ["/img/bad-0.jpg", "/img/bad-1.jpg"]
    # Projected + dropped must equal the input rows exactly, both ways.
    for input_rows in (12, 14):
        with pytest.raises(AccountingError, match=rf"{input_rows} input rows of 'm' but 10 projected \+ 3 dropped"):
            finish_reduction(
                staging, seconds=1.0, settings={}, summary=summary_of(input_rows), method="pca", run_id="r",
                maps=MAPS, **side,
            )  # fmt: skip


def test_sample_trustworthiness_uses_at_most_the_asked_rows():
    sample = side_values(10)["sample"]
    assert sample_trustworthiness(sample, 0) == (None, 0)
    assert sample_trustworthiness(Sample(5), 100) == (None, 0)
    trust, used = sample_trustworthiness(sample, 100)
    assert used == 6
    assert 0 < trust <= 1
    assert sample_trustworthiness(sample, 3) == (None, 0)  # too few rows for a neighbourhood


def test_map_labels_name_the_method_span_and_run():
    summary = InputSummary([], 0, 0, "resnet50/abc", 5, ["2026-11-19", "2026-11-20"])
    pca = map_labels("pca", "r1", 7, summary, {"explained_variance_ratio": [0.5, 0.125]}, 1234, 0.98765)
    assert pca.title == "PCA map of 1,234 image embeddings"
    assert pca.subtitle == "2026-11-19 .. 2026-11-20 (2 partitions) · model resnet50/abc"
    assert (pca.x_label, pca.y_label) == ("PC1 (50.0% of variance)", "PC2 (12.5% of variance)")
    assert pca.footer == "run r1 · seed 7 · trustworthiness 0.988"
    umap = map_labels("umap", "r1", 7, summary, {"fit_rows": 20_000}, 1234, None)
    assert (umap.x_label, umap.y_label) == ("UMAP 1", "UMAP 2")
    assert umap.footer == "run r1 · seed 7 · fit on 20,000 sampled rows"
