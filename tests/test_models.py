"""Weights resolution and model ids (no TensorFlow needed)."""

from __future__ import annotations

import pytest

from beam_jobs.contract import MODEL_SPECS
from beam_jobs.extract_embeddings.models import WeightsError, get_spec, model_id, resolve_attr, resolve_weights


def test_weights_resolution(tmp_path):
    spec = get_spec("resnet50")
    rnd = resolve_weights(spec, "random", seed=5)
    assert model_id(spec, rnd) == "resnet50/pool=avg/in=224x224/weights=random-seed5"
    with pytest.raises(WeightsError, match="does not exist"):
        resolve_weights(spec, str(tmp_path / "missing.weights.h5"))
    with pytest.raises(WeightsError, match="not 'imagenet', 'random'"):
        resolve_weights(spec, str(tmp_path / "model.bin"))
    f = tmp_path / "w.weights.h5"
    f.write_bytes(b"abc")
    resolved = resolve_weights(spec, str(f))
    assert resolved.kind == "file"
    # sha256("abc"): the id pins the exact file, so two weight files never mix.
    assert model_id(spec, resolved).endswith("weights=file-sha256:ba7816bf8f01cfea")


def test_imagenet_offline_fails_at_once_with_instructions(tmp_path, monkeypatch):
    from beam_jobs.extract_embeddings import models

    if models._internet_reachable():
        pytest.skip("this machine can download the weights")
    monkeypatch.setattr(models, "KERAS_CACHE_DIR", str(tmp_path))
    with pytest.raises(WeightsError) as err:
        resolve_weights(get_spec("resnet50"), "imagenet")
    msg = str(err.value)
    assert "no internet" in msg
    assert "--weights /path/to/resnet50_weights_tf_dim_ordering_tf_kernels_notop.h5" in msg


def test_unknown_model_names_the_known_ones():
    with pytest.raises(ValueError, match="known models: resnet50"):
        get_spec("vgg99")


@pytest.mark.slow
def test_specs_name_real_keras_callables():
    for spec in MODEL_SPECS.values():
        assert callable(resolve_attr(spec.builder))
        assert callable(resolve_attr(spec.preprocess))
