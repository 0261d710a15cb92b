"""TestPipeline tests of the extraction job's composite transforms (FnApiRunner, real files)."""

from __future__ import annotations

import glob
import os
from pathlib import Path

import apache_beam as beam
import numpy as np
import pytest
from apache_beam.testing.test_pipeline import TestPipeline
from apache_beam.testing.util import assert_that, equal_to, is_not_empty

from beam_jobs.config import ExtractConfig
from beam_jobs.extract_embeddings.decode import FAILURES_TAG, DecodeImages, DecodeParams, ImageMeta
from beam_jobs.extract_embeddings.embed import EmbedImages
from beam_jobs.extract_embeddings.engines import EngineChoice
from beam_jobs.extract_embeddings.images import decode_and_resize
from beam_jobs.extract_embeddings.inputs import ReadImageURIs, parse_manifest_header, parse_manifest_line
from beam_jobs.extract_embeddings.models import get_spec, model_id, resolve_weights
from beam_jobs.extract_embeddings.outputs import npy_name

RUNNER_ARGS = ["--runner=FnApiRunner"]


def cfg_for(**kw) -> ExtractConfig:
    base = {"output": "/unused", "input": "/unused/*", "run_id": "test-run"}
    base.update(kw)
    return ExtractConfig(**base).validate()


# --------------------------------------------------------------------------- helpers


def test_manifest_parsing():
    assert parse_manifest_header("/a/b.jpg") is None
    assert parse_manifest_header("id,image_uri,label") == 1
    assert parse_manifest_line("  /a/b.jpg \n", None) == "/a/b.jpg"
    assert parse_manifest_line("# comment", None) is None
    assert parse_manifest_line("", None) is None
    assert parse_manifest_line('7,"gs://b/x, y.jpg",cat', 1) == "gs://b/x, y.jpg"


def test_npy_names_never_collide():
    a, b = npy_name("/d1/cat.jpg"), npy_name("/d2/cat.jpg")
    assert a != b
    assert a.startswith("cat-")
    assert a.endswith(".npy")


# --------------------------------------------------------------------------- transforms


def test_read_image_uris_from_manifest_dedupes(tmp_path):
    manifest = tmp_path / "m.csv"
    manifest.write_text("id,image_uri\n1,/x/a.jpg\n2,/x/b.jpg\n3,/x/a.jpg\n\n")
    cfg = cfg_for(input=None, input_manifest=str(manifest))
    with TestPipeline(argv=RUNNER_ARGS) as p:
        out = p | ReadImageURIs(cfg.input, cfg.input_manifest, manifest_column=1)
        assert_that(out["uris"], equal_to(["/x/a.jpg", "/x/b.jpg"]), label="distinct")
        assert_that(out["listed"] | beam.CombineGlobally(sum), equal_to([3]), label="listed")


def test_read_image_uris_from_glob(sample_dir):
    cfg = cfg_for(input=os.path.join(sample_dir, "*.jpg"))
    expected = sorted(glob.glob(os.path.join(sample_dir, "*.jpg")))
    assert expected
    with TestPipeline(argv=RUNNER_ARGS) as p:
        out = p | ReadImageURIs(cfg.input)
        assert_that(out["uris"], equal_to(expected))


def test_decode_images_splits_good_and_bad(edge_dir, sample_dir, tmp_path):
    _folder, expected = edge_dir
    good = sorted(glob.glob(os.path.join(sample_dir, "img_*")))[:3]
    missing = str(tmp_path / "gone.jpg")
    uris = [*good, *expected, missing]
    want_failed = sorted(
        [(p, outcome) for p, outcome in expected.items() if outcome != "ok"] + [(missing, "read/not_found")]
    )
    want_ok = sorted([*good, *(p for p, o in expected.items() if o == "ok")])
    cfg = cfg_for()
    with TestPipeline(argv=RUNNER_ARGS) as p:
        out = (
            p | beam.Create(uris) | DecodeImages(DecodeParams((224, 224), cfg.resize_mode, cfg.max_pixels), cfg.run_id)
        )
        ok = out.images | "OkUri" >> beam.Map(lambda kv: (kv[0].image_uri, kv[1].shape, kv[1].dtype.name))
        assert_that(ok, equal_to([(u, (224, 224, 3), "uint8") for u in want_ok]), label="ok")
        bad = out[FAILURES_TAG] | "BadKey" >> beam.Map(lambda r: (r["image_uri"], f"{r['stage']}/{r['error']}"))
        assert_that(bad, equal_to(want_failed), label="bad")
        runs = out[FAILURES_TAG] | "RunIds" >> beam.Map(lambda r: (r["run_id"], bool(r["message"])))
        assert_that(runs | beam.Distinct(), equal_to([("test-run", True)]), label="run_id")


@pytest.mark.slow
def test_embed_images_matches_direct_model_call(sample_dir, weights_file):
    """RunInference output equals a plain Keras call on the same pixels (1e-4 relative).

    TensorFlow is forced: ``auto`` runs OpenVINO bf16 on a CPU with AVX512_BF16, which is within the engine
    guard (cosine 0.999) but not 1e-4 of f32; tests/test_engines.py covers the other engines.
    """
    import keras

    files = sorted(glob.glob(os.path.join(sample_dir, "img_*")))[:5]
    decoded = [decode_and_resize(Path(f).read_bytes()) for f in files]
    spec = get_spec("resnet50")
    weights = resolve_weights(spec, weights_file)
    mid = model_id(spec, weights)
    reference = keras.applications.ResNet50(include_top=False, pooling="avg", weights=None, input_shape=(224, 224, 3))
    reference.load_weights(weights_file)
    x = keras.applications.resnet50.preprocess_input(np.stack([d.pixels for d in decoded]).astype("float32"))
    expected = dict(zip(files, np.asarray(reference.predict(x, verbose=0)), strict=True))

    def check(rows):
        got = {r["image_uri"]: r for r in rows}
        assert set(got) == set(files)
        for uri, row in got.items():
            ref = expected[uri]
            vec = row["embedding"]
            assert vec.shape == (2048,)
            assert vec.dtype == np.float32
            rel = np.linalg.norm(vec - ref) / np.linalg.norm(ref)
            assert rel < 1e-4, (uri, rel)
            assert row["model_id"] == mid

    items = [(ImageMeta(f, d.content_sha256, d.width, d.height), d.pixels) for f, d in zip(files, decoded, strict=True)]
    cfg = cfg_for(batch_size=2)  # 5 images in batches of 2: a partial last batch too
    with TestPipeline(argv=RUNNER_ARGS) as p:
        out = (
            p
            | beam.Create(items)
            | EmbedImages(cfg.model, weights, mid, cfg.batch_size, cfg.run_id, EngineChoice("tf"))
        )
        assert_that(out["rows"], check, label="rows")
        assert_that(out[FAILURES_TAG], equal_to([]), label="no failures")
        assert_that(out["rows"], is_not_empty(), label="some rows")


@pytest.mark.slow
def test_a_failing_batch_becomes_failure_records(weights_file):
    """Pixels the compiled model refuses fail their batch; every image still gets a record."""
    spec = get_spec("resnet50")
    weights = resolve_weights(spec, weights_file)
    wrong = np.zeros((100, 100, 3), np.uint8)  # not the (224, 224, 3) the signature accepts
    items = [(ImageMeta(f"/img/{i}.jpg", "x", 100, 100), wrong) for i in range(3)]
    cfg = cfg_for(batch_size=2)
    with TestPipeline(argv=RUNNER_ARGS) as p:
        out = (
            p
            | beam.Create(items)
            | EmbedImages(cfg.model, weights, model_id(spec, weights), cfg.batch_size, cfg.run_id)
        )
        assert_that(out["rows"], equal_to([]), label="rows")
        stages = out[FAILURES_TAG] | beam.Map(lambda r: (r["image_uri"], r["stage"]))
        assert_that(stages, equal_to([(f"/img/{i}.jpg", "inference") for i in range(3)]), label="failures")


def test_empty_output_files_are_dropped_but_one_of_a_kind_stays(tmp_path):
    """Every step's sink writes a file even when it got nothing; the commit keeps only files with content."""
    import pyarrow as pa
    import pyarrow.parquet as pq

    from beam_jobs import storage
    from beam_jobs.contract import EMBEDDING_COLUMNS
    from beam_jobs.extract_embeddings.outputs import drop_empty

    schema = storage.arrow_schema(EMBEDDING_COLUMNS)
    row = {"image_uri": "/a", "embedding": [1.0], "model_id": "m", "content_sha256": "s", "width": 1, "height": 1}
    full, empty = str(tmp_path / "embeddings-computed-0.parquet"), str(tmp_path / "embeddings-copied-0.parquet")
    pq.write_table(pa.Table.from_pylist([{**row, "run_id": "r"}], schema=schema), full)
    pq.write_table(schema.empty_table(), empty)
    assert drop_empty([empty, full], storage.parquet_row_count) == [full]
    assert sorted(os.listdir(tmp_path)) == ["embeddings-computed-0.parquet"]
    texts = [tmp_path / f"failures-{name}-0.jsonl" for name in ("copy", "embed", "read")]
    for path in texts:
        path.write_text("")
    # Nothing failed anywhere: one (empty) failures file stays, so a reader still finds the kind.
    assert drop_empty([str(p) for p in texts], storage.file_size) == [str(texts[0])]
    assert sorted(os.listdir(tmp_path)) == ["embeddings-computed-0.parquet", "failures-copy-0.jsonl"]
