"""Several models in one pass (``--model a,b``): flags, one decode for several sizes, one branch per model,
per-model accounting, and one CLI run of two registry models on real sample images."""

from __future__ import annotations

import glob
import json
import os
from pathlib import Path

import apache_beam as beam
import numpy as np
import pyarrow.parquet as pq
import pytest
from apache_beam.testing.test_pipeline import TestPipeline
from apache_beam.testing.util import assert_that, equal_to

from beam_jobs.config import ConfigError, ExtractConfig, weights_for
from beam_jobs.contract import ENGINE_TF, ModelFigures
from beam_jobs.extract_embeddings.decode import FAILURES_TAG, DecodeImages, DecodeParams
from beam_jobs.extract_embeddings.embed import ENGINES_TAG, EmbedModels, branch_label
from beam_jobs.extract_embeddings.engines import EngineChoice
from beam_jobs.extract_embeddings.images import decode_and_resize, decode_for_sizes
from beam_jobs.extract_embeddings.models import ModelError, resolve_models
from beam_jobs.extract_embeddings.outputs import finish_extraction
from beam_jobs.runtime import AccountingError
from tests.conftest import run_cli

RUNNER_ARGS = ["--runner=FnApiRunner"]
TWO = ("resnet50", "mobilenet_v3_large")


def test_weights_take_model_value_pairs_and_a_plain_value_for_the_rest():
    assert weights_for(TWO, "random") == {"resnet50": "random", "mobilenet_v3_large": "random"}
    # A path with '=' in it (a ds= folder) stays a path; a pair names a model of the run.
    pairs = weights_for(TWO, "random,resnet50=/w/ds=2026-11-20/r.weights.h5")
    assert pairs == {"resnet50": "/w/ds=2026-11-20/r.weights.h5", "mobilenet_v3_large": "random"}
    assert weights_for(("resnet50",), "/w/ds=2026-11-20/r.h5") == {"resnet50": "/w/ds=2026-11-20/r.h5"}
    # With several models a SavedModel keeps its own weights; a plain value is for the registry models.
    assert weights_for(("resnet50", "savedmodel:/m"), "random")["savedmodel:/m"] == "imagenet"
    with pytest.raises(ConfigError, match="'convnext_tiny' is not one of this run's models"):
        weights_for(TWO, "convnext_tiny=random")
    with pytest.raises(ConfigError, match="one plain value"):
        weights_for(TWO, "random,imagenet")


def test_model_flag_lists_models_once_each():
    cfg = ExtractConfig(output="/o/e", input="/x/*", model=" resnet50 , mobilenet_v3_large", weights="random")
    assert cfg.validate().models == TWO
    problems = {
        "resnet50,resnet50": "names a model twice",
        "resnet50,vgg99": "must be one of",
    }
    for model, message in problems.items():
        with pytest.raises(ConfigError, match=message):
            ExtractConfig(output="/o/e", input="/x/*", model=model).validate()
    with pytest.raises(ConfigError, match="not one of this run's models"):
        ExtractConfig(output="/o/e", input="/x/*", model="resnet50", weights="convnext_tiny=random").validate()


def test_one_decode_gives_each_size_the_same_pixels_a_single_decode_would(sample_dir):
    data = Path(sorted(glob.glob(os.path.join(sample_dir, "img_*")))[0]).read_bytes()
    small, large = decode_for_sizes(data, ((48, 40), (224, 224)), use_draft=False)
    np.testing.assert_array_equal(small.pixels, decode_and_resize(data, (48, 40), use_draft=False).pixels)
    np.testing.assert_array_equal(large.pixels, decode_and_resize(data, (224, 224), use_draft=False).pixels)
    assert (small.width, small.height, small.content_sha256) == (large.width, large.height, large.content_sha256)


def test_the_same_model_twice_under_two_paths_is_refused(two_savedmodels, tmp_path):
    import shutil

    first, _ = two_savedmodels
    copy = shutil.copytree(first, tmp_path / "copy")
    with pytest.raises(ModelError, match="are the same model"):
        resolve_models((f"savedmodel:{first}", f"savedmodel:{copy}"), _plain(first, copy))


def _plain(*paths) -> dict[str, str]:
    return {f"savedmodel:{p}": "imagenet" for p in paths}


@pytest.fixture(scope="module")
def two_savedmodels(tmp_path_factory):
    """Two tiny feature extractors of different input sizes; the second returns inf for an all-black image
    (1 / mean brightness), so that one model alone fails an input at inference."""
    import keras

    keras.utils.set_random_seed(3)
    root = tmp_path_factory.mktemp("two")
    a_in = keras.Input((40, 48, 3))
    a = keras.Model(a_in, keras.layers.GlobalAveragePooling2D()(keras.layers.Conv2D(6, 3)(a_in)))
    b_in = keras.Input((32, 32, 3))
    mean = keras.layers.GlobalAveragePooling2D()(b_in)
    b = keras.Model(b_in, keras.layers.Lambda(lambda m: 1.0 / m)(mean))
    paths = []
    for model, name in ((a, "a"), (b, "b")):
        model.export(str(root / name), format="tf_saved_model", verbose=False)
        paths.append(str(root / name))
    return paths


def test_each_model_gets_its_branch_its_size_and_its_own_failures(two_savedmodels, sample_dir, tmp_path):
    """Decode once for two sizes, embed through two RunInference branches; the black image fails model b only."""
    from PIL import Image

    first, second = two_savedmodels
    names = (f"savedmodel:{first}", f"savedmodel:{second}")
    runs = resolve_models(names, _plain(first, second))
    black = tmp_path / "black.png"
    Image.new("RGB", (64, 64)).save(black)
    photos = sorted(glob.glob(os.path.join(sample_dir, "img_*")))[:3]
    missing = str(tmp_path / "gone.jpg")
    uris = [*photos, str(black), missing]
    params = DecodeParams(runs[0].spec.input_size, more_sizes=(runs[1].spec.input_size,))
    a_id, b_id = runs[0].model_id, runs[1].model_id
    with TestPipeline(argv=RUNNER_ARGS) as p:
        decoded = p | beam.Create(uris) | "Decode" >> DecodeImages(params, "run")
        out = decoded.images | "Embed" >> EmbedModels(runs, 2, "run", EngineChoice(ENGINE_TF))
        # Each model's rows and failures are their own outputs (written where they are made, no Flatten).
        a, b = (f"embed_{branch_label(run, i)}" for i, run in enumerate(runs))
        assert sorted(out) == sorted(
            [ENGINES_TAG, f"rows_{a}", f"rows_{b}", f"{FAILURES_TAG}_{a}", f"{FAILURES_TAG}_{b}"]
        )
        for source, model_id, dim, images in ((a, a_id, 6, [*photos, str(black)]), (b, b_id, 3, photos)):
            rows = out[f"rows_{source}"] | f"RowKey_{source}" >> beam.Map(
                lambda r: (r["model_id"], os.path.basename(r["image_uri"]), len(r["embedding"]))
            )
            want = [(model_id, os.path.basename(u), dim) for u in images]
            assert_that(rows, equal_to(want), label=f"rows of {source}")
        fails = out[f"{FAILURES_TAG}_{b}"] | "FailKey" >> beam.Map(lambda r: (r["model_id"], r["stage"], r["error"]))
        assert_that(fails, equal_to([(b_id, "inference", "non_finite")]), label="inference failures")
        assert_that(out[f"{FAILURES_TAG}_{a}"], equal_to([]), label="none for model a")
        read_fails = decoded[FAILURES_TAG] | "ReadKey" >> beam.Map(lambda r: ("model_id" in r, r["error"]))
        assert_that(read_fails, equal_to([(False, "not_found")]), label="read failures are every model's")
        engines = out[ENGINES_TAG] | "EngineModel" >> beam.Map(lambda e: json.loads(e)["model"]) | beam.Distinct()
        assert_that(engines, equal_to(list(names)), label="engines")


def test_commit_accounts_each_model_and_reports_the_primary_at_the_top():
    models = {
        "a": {"model_id": "A", "dim": 4, "input_size": [2, 2], "weights": "random"},
        "b": {"model_id": "B", "dim": 3, "input_size": [2, 2], "weights": "random"},
    }
    common = {
        "seconds": 2.0,
        "settings": {"model": "a", "model_id": "A", "models": models},
        "embedding_files": [],
        "failure_files": [],
        "npy_count": 0,
        "engines": [json.dumps({"engine": "tf", "precision": "f32", "model": m}) for m in "ab"],
    }
    counts = {"inputs": 5, "listed": 5, "embedded": 7}
    failures = [(("", "read/not_found"), 1), (("B", "inference/non_finite"), 1)]
    manifest = finish_extraction(
        "/s", counts=counts, embedded_by_model={"A": 4, "B": 3}, failures_by_model=failures, **common
    )
    a, b = manifest["models"]["a"], manifest["models"]["b"]
    assert set(a) == set(ModelFigures.__annotations__)
    assert (a["embedded"], a["failed"], a["failures_by_reason"]) == (4, 1, {"read/not_found": 1})
    assert (b["embedded"], b["failed"]) == (3, 2)
    assert b["failures_by_reason"] == {"inference/non_finite": 1, "read/not_found": 1}
    assert (a["images_per_second"], b["images_per_second"]) == (2.0, 1.5)
    assert [e["model"] for e in b["engines"]] == ["b"]
    assert (manifest["embedded"], manifest["failed"], manifest["model_id"]) == (4, 1, "A")
    with pytest.raises(AccountingError, match="for model b: 5 inputs but 2 embedded"):
        finish_extraction(
            "/s",
            counts=counts,
            embedded_by_model={"A": 4, "B": 2},
            failures_by_model=failures,
            **common,
        )


@pytest.mark.slow  # one job run, two registry models with random weights on 4 images (~40-60 s on 2 cores)
def test_cli_runs_two_registry_models_in_one_pass(sample_dir, tmp_path):
    folder = tmp_path / "images"
    folder.mkdir()
    for f in sorted(glob.glob(os.path.join(sample_dir, "img_*")))[:4]:
        os.symlink(f, folder / os.path.basename(f))
    (folder / "broken.jpg").write_bytes(b"\xff\xd8 not a jpeg")
    out = str(tmp_path / "out")
    done = run_cli(
        "beam_jobs.extract_embeddings",
        *("--input", f"{folder}/*", "--output", out, "--model", "mobilenet_v3_large,resnet50"),
        *("--weights", "random", "--engine", "tf", "--batch_size", "4"),
    )
    assert done.returncode == 0, done.stderr[-3000:]
    manifest = json.loads(Path(out, "manifest.json").read_text())
    rows = [r for f in glob.glob(os.path.join(out, "embeddings-*.parquet")) for r in pq.read_table(f).to_pylist()]
    dims = {"mobilenet_v3_large": 960, "resnet50": 2048}
    assert set(manifest["models"]) == set(dims)
    for name, dim in dims.items():
        figures = manifest["models"][name]
        mine = [r for r in rows if r["model_id"] == figures["model_id"]]
        assert figures["model_id"].startswith(f"{name}/pool=avg/in=224x224/weights=random-seed0")
        assert (len(mine), figures["embedded"], figures["failed"], figures["dim"]) == (4, 4, 1, dim)
        assert {len(r["embedding"]) for r in mine} == {dim}
        assert figures["failures_by_reason"] == {"decode/not_an_image": 1}
        assert figures["images_per_second"] > 0
    assert len(rows) == 8
    # The top level is the primary (first) model's, as a single-model run's.
    assert (manifest["inputs"], manifest["embedded"], manifest["failed"]) == (5, 4, 1)
    assert manifest["model_id"] == manifest["models"]["mobilenet_v3_large"]["model_id"]
    assert manifest["embedding_dim"] == 960
    assert manifest["metrics"]["decoded"] == 4  # each image decoded once for both models
    assert "resnet50: embedded=4 failed=1" in done.stderr
