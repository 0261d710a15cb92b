"""--model savedmodel:PATH: an image feature-vector SavedModel the test exports itself (nothing downloaded)."""

from __future__ import annotations

import glob
import json
import os
import shutil
from pathlib import Path

import numpy as np
import pyarrow.parquet as pq
import pytest

from beam_jobs.contract import ENGINE_OPENVINO, ENGINE_TF, GUARD_MIN_COSINE
from beam_jobs.extract_embeddings.engines import EngineChoice, min_cosine
from beam_jobs.extract_embeddings.models import ModelError, WeightsError, get_spec, model_id, resolve_weights
from tests.conftest import run_cli


def export(model, path: str) -> str:
    model.export(path, format="tf_saved_model", verbose=False)
    return path


@pytest.fixture(scope="module")
def feature_model(tmp_path_factory):
    """A small image feature extractor taking 0-1 floats (TF Hub's convention), exported as Keras writes it."""
    import keras

    keras.utils.set_random_seed(7)
    inputs = keras.Input((40, 48, 3))  # height 40, width 48: the two must not be swapped
    x = keras.layers.Conv2D(12, 3, activation="relu")(inputs)
    x = keras.layers.Conv2D(20, 3, strides=2, activation="relu")(x)
    model = keras.Model(inputs, keras.layers.GlobalAveragePooling2D()(x))
    return model, export(model, str(tmp_path_factory.mktemp("sm") / "features"))


def photos(size: tuple[int, int], count: int) -> np.ndarray:
    from beam_jobs.extract_embeddings.images import decode_and_resize
    from devtools.samples import source_photo_paths

    return np.stack([decode_and_resize(Path(p).read_bytes(), size).pixels for p in source_photo_paths()[:count]])


def test_spec_comes_from_the_serving_signature_and_the_id_from_the_fingerprint(feature_model, tmp_path):
    _model, path = feature_model
    spec = get_spec(f"savedmodel:{path}")
    assert (spec.input_size, spec.embedding_dim) == ((48, 40), 20)
    assert (spec.input_dtype, spec.input_range, spec.source) == ("float32", "0-1", "savedmodel")
    weights = resolve_weights(spec, "imagenet")  # the flag's default: nothing to resolve
    mid = model_id(spec, weights)
    assert mid == f"savedmodel/fingerprint={spec.fingerprint}/in=48x40/range=0-1"
    # The same SavedModel copied elsewhere is the same model; another range is another model_id.
    copy = shutil.copytree(path, tmp_path / "copy")
    assert model_id(get_spec(f"savedmodel:{copy}"), weights) == mid
    assert model_id(get_spec(f"savedmodel:{path}", "0-255"), weights).endswith("range=0-255")
    with pytest.raises(WeightsError, match="does not apply to savedmodel:"):
        resolve_weights(spec, "random")


def test_what_cannot_be_an_image_feature_extractor_is_refused_with_the_reason(tmp_path):
    import keras

    inputs = keras.Input((10,))
    table = export(keras.Model(inputs, keras.layers.Dense(4)(inputs)), str(tmp_path / "table"))
    with pytest.raises(
        ModelError, match=r"input must be a batch of RGB images \[batch, height, width, 3\].*\[None, 10\]"
    ):
        get_spec(f"savedmodel:{table}")
    with pytest.raises(ModelError, match=r"no saved_model\.pb there"):
        get_spec(f"savedmodel:{tmp_path}")
    with pytest.raises(ModelError, match="tensorflow_hub package"):
        get_spec("hub:google/imagenet/mobilenet_v3_large_100_224/feature_vector/5")


def test_vectors_are_the_models_own_on_real_photos_with_the_range_applied_on_both_engines(feature_model):
    model, path = feature_model
    spec = get_spec(f"savedmodel:{path}")
    weights = resolve_weights(spec, "imagenet")
    pixels = photos(spec.input_size, 6)
    expected = np.asarray(model(pixels.astype(np.float32) / 255.0))

    from beam_jobs.extract_embeddings.inference import load_embedding_model

    tf_model = load_embedding_model(spec, weights, EngineChoice(ENGINE_TF))
    np.testing.assert_allclose(tf_model(pixels), expected, rtol=1e-4, atol=1e-5)
    ov = load_embedding_model(spec, weights, EngineChoice(ENGINE_OPENVINO))
    assert min_cosine(ov(pixels), expected) >= GUARD_MIN_COSINE
    assert ov.info["first_batch_min_cosine"] >= GUARD_MIN_COSINE


@pytest.mark.slow  # one job run (~30-60 s)
def test_job_embeds_sample_images_with_a_savedmodel(feature_model, sample_dir, tmp_path):
    _model, path = feature_model
    out = str(tmp_path / "out")
    files = sorted(glob.glob(os.path.join(sample_dir, "*")))[:8]
    folder = tmp_path / "images"
    folder.mkdir()
    for f in files:
        os.symlink(f, folder / os.path.basename(f))
    done = run_cli(
        "beam_jobs.extract_embeddings", "--input", f"{folder}/*", "--output", out, "--model", f"savedmodel:{path}"
    )
    assert done.returncode == 0, done.stderr[-3000:]
    manifest = json.loads(Path(out, "manifest.json").read_text())
    assert (manifest["inputs"], manifest["embedded"], manifest["failed"]) == (8, 8, 0)
    assert manifest["model_id"].startswith("savedmodel/fingerprint=")
    assert manifest["embedding_dim"] == 20
    rows = [r for f in glob.glob(os.path.join(out, "embeddings-*.parquet")) for r in pq.read_table(f).to_pylist()]
    assert len(rows) == 8
    assert {len(r["embedding"]) for r in rows} == {20}
    assert {r["model_id"] for r in rows} == {manifest["model_id"]}

    refused = run_cli(
        "beam_jobs.extract_embeddings",
        *("--input", f"{folder}/*", "--output", str(tmp_path / "x"), "--model", f"savedmodel:{tmp_path}"),
    )
    assert refused.returncode == 2
    assert "no saved_model.pb there" in refused.stderr
    assert "Traceback" not in refused.stderr
