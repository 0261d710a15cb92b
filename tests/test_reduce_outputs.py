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

from beam_jobs.partitions import InputSummary
from beam_jobs.reduce_dim.outputs import (
    CoordsFn,
    MapParams,
    WriteOutputs,
    explorer_note,
    extraction_figures,
    finish_reduction,
    header_facts,
    map_labels,
    sample_thumbnails,
    sample_trustworthiness,
    to_table,
)
from beam_jobs.reduce_dim.records import DroppedRows, Projected, projection_schema
from beam_jobs.reduce_dim.reduction import Sample
from beam_jobs.runtime import AccountingError
from beam_jobs.thumbnails import Thumbnails

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
        assert len(got["sample"]) == 6  # trust_sample_size, with embeddings
        assert len(got["points"]) == 4  # html_points, coordinates only
        assert "x" not in got["points"].columns
        # Same seed: the explorer's points and the trust sample start with the same rows.
        assert list(got["points"].columns["image_uri"]) == list(got["sample"].columns["image_uri"][:4])
        assert got["thumbs"].images == {}  # thumbnails=False: no image is read
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


def test_no_thumbnails_read_when_switched_off_or_nothing_sampled():
    sample = side_values(10)["points"]
    assert sample_thumbnails(sample, MAPS).images == {}
    assert sample_thumbnails(Sample(4), MapParams(4, 32, True, 0, 0)).images == {}


def test_header_figures_and_note_say_what_the_page_shows(tmp_path):
    for ds, inputs, failed in (("2026-11-19", 10, 1), ("2026-11-20", 5, 2)):
        folder = tmp_path / f"ds={ds}"
        folder.mkdir()
        (folder / "manifest.json").write_text(f'{{"inputs": {inputs}, "failed": {failed}}}')
    files = [str(tmp_path / f"ds={ds}" / "embeddings-0.parquet") for ds in ("2026-11-19", "2026-11-20")]
    assert extraction_figures(files) == {"inputs": 15, "failed": 3}
    assert extraction_figures([*files, str(tmp_path / "elsewhere" / "e.parquet")]) is None
    facts = dict(header_facts(1000, 2, {"inputs": 15, "failed": 3}, 500, 40))
    assert facts == {
        "rows": "1,000",
        "failed extraction": "3",
        "inputs": "15",
        "dropped (NaN/inf)": "2",
        "points shown": "500",
        "with thumbnails": "40",
    }
    assert "failed extraction" not in dict(header_facts(10, 0, None, 10, 0))
    thumbs = Thumbnails()
    assert explorer_note(10, 10, 0, thumbs).startswith("All 10 rows are drawn.")
    thumbs.misses.update(timeout=3, time_budget=7)
    note = explorer_note(4, 10, 5, thumbs)
    assert "seeded sample of 4 of 10 rows (seed 5" in note
    assert "Thumbnails missed: 3 timeout, 7 time_budget." in note


def side_values(rows: int) -> dict:
    blocks = projected_blocks(rows, rows)
    ds = np.full(rows, "2026-11-20", dtype=object)
    sample = Sample(6).add(
        np.arange(rows, dtype=np.uint64), image_uri=blocks[0].uris, ds=ds, x=blocks[0].x, xy=blocks[0].xy
    )
    points = Sample(4).add(np.arange(rows, dtype=np.uint64), image_uri=blocks[0].uris, ds=ds, xy=blocks[0].xy)
    return {
        "info": {"explained_variance_ratio": [0.5, 0.25], "explained_variance": [2.0, 1.0], "fit_rows": rows},
        "dropped": DroppedRows(0, ()),
        "rows": rows,
        "coords": (blocks[0].xy, np.full(rows, "2026-11-20", dtype=object)),
        "sample": sample,
        "points": points.sorted(),
        "thumbs": Thumbnails(),
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
    assert fields["thumbnail_misses"] == {"unreadable": 0, "timeout": 0, "time_budget": 0}
    assert fields["mosaic_images"] == 0  # no thumbnails, no mosaic
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
    assert "Showing a seeded sample of 4 of 10 rows (seed 0" in page
    assert page.index("/img/000.jpg") < page.index("/img/003.jpg")  # sample order
    assert "/img/004.jpg" not in page
    assert not os.path.exists(os.path.join(staging, "map_mosaic.png"))


def test_finish_draws_the_mosaic_from_the_thumbnails(tmp_path):
    import io

    from PIL import Image

    from beam_jobs.thumbnails import data_uri_length

    def webp(shade: int) -> bytes:
        out = io.BytesIO()
        Image.new("RGB", (20, 16), (shade, 0, 0)).save(out, format="WEBP")
        return out.getvalue()

    side = side_values(10)
    images = {i: webp(60 * i) for i in range(4)}
    side["thumbs"] = Thumbnails(images=images, html={0, 1})
    maps = MapParams(4, 32, True, 6, 0, thumbnail_budget_bytes=2 * data_uri_length(images[0]), mosaic_grid=2)
    staging = str(tmp_path / "staging")
    fields = finish_reduction(
        staging, seconds=2.0, settings={}, summary=summary_of(10), method="pca", run_id="r", maps=maps, **side
    )
    assert (fields["thumbnails"], fields["mosaic_images"]) == (2, 4)
    assert fields["files"]["map_mosaic"] == "map_mosaic.png"
    with Image.open(os.path.join(staging, "map_mosaic.png")) as mosaic:
        assert mosaic.size == (2 * 48, 2 * 48)
        reds = sorted(mosaic.convert("RGB").getpixel((c * 48 + 24, r * 48 + 24))[0] for r in (0, 1) for c in (0, 1))
    assert [abs(a - b) <= 8 for a, b in zip(reds, [0, 60, 120, 180], strict=True)] == [True] * 4  # every image once
    with open(os.path.join(staging, "map.html"), encoding="utf-8") as handle:
        page = handle.read()
    assert page.count("data:image/webp;base64,") == 2  # the HTML got the two within its budget


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


def test_map_samples_share_one_hash_and_match_a_plain_sample_whatever_the_split():
    from beam_jobs.reduce_dim.fit import SampleFn
    from beam_jobs.reduce_dim.outputs import MapSamplesFn

    blocks = projected_blocks(500, 37)
    fn = MapSamplesFn(trust_size=20, map_size=120, seed=3)
    accs = [fn.create_accumulator() for _ in range(3)]
    for k, block in enumerate(blocks):
        accs[k % 3] = fn.add_input(accs[k % 3], block)
    trust, points = fn.extract_output(fn.merge_accumulators(accs))
    plain = SampleFn(120, 3, ("xy",))
    ref = plain.extract_output(
        plain.merge_accumulators([plain.add_input(plain.create_accumulator(), b) for b in reversed(blocks)])
    )
    assert len(points) == 120  # lazily trimmed while adding, exactly the capacity at the end
    assert list(points.columns["image_uri"]) == list(ref.columns["image_uri"])
    assert list(trust.columns["image_uri"]) == list(points.columns["image_uri"][:20])
    assert trust.columns["x"].shape == (20, 5)
    assert "x" not in points.columns
