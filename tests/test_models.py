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

    # Offline whatever this machine's network: the reachability check says no (an empty cache, so it is asked).
    asked = []
    monkeypatch.setattr(models, "_internet_reachable", lambda *args, **kwargs: asked.append(args) or False)
    monkeypatch.setattr(models, "KERAS_CACHE_DIR", str(tmp_path))
    with pytest.raises(WeightsError) as err:
        resolve_weights(get_spec("resnet50"), "imagenet")
    msg = str(err.value)
    assert "no internet" in msg
    assert "--weights /path/to/resnet50_weights_tf_dim_ordering_tf_kernels_notop.h5" in msg
    assert asked  # the offline path came from the check, not from some other failure


def test_unknown_model_names_the_known_ones():
    with pytest.raises(ValueError, match="known models: convnext_tiny, efficientnetv2_s, mobilenet_v3_large, resnet50"):
        get_spec("vgg99")


@pytest.mark.slow
def test_specs_name_real_keras_callables():
    for spec in MODEL_SPECS.values():
        assert callable(resolve_attr(spec.builder))
        assert callable(resolve_attr(spec.preprocess))
        # The Keras cache file name is the one Keras itself asks for (the offline message names it).
        assert spec.imagenet_url.endswith("/" + spec.imagenet_file)


@pytest.mark.slow  # builds every registry model and converts it for OpenVINO: ~1-2 min on 2 cores
@pytest.mark.parametrize("name", [name for name in MODEL_SPECS if name != "resnet50"])
def test_every_registry_model_embeds_real_photos_and_auto_keeps_them_tf_compatible(name, capsys):
    """Each entry's declared input size and dimension hold; what ``auto`` returns matches TF f32.

    With random weights EfficientNetV2-S is numerically chaotic (activations ~1e5: TensorFlow's own
    batch-of-6 and one-at-a-time results differ to cosine 0.945), so there OpenVINO may miss the
    first-batch guard and ``auto`` falls back to TensorFlow; the others run on OpenVINO.
    """
    import io

    import numpy as np

    from beam_jobs.contract import ENGINE_OPENVINO, GUARD_MIN_COSINE
    from beam_jobs.extract_embeddings.engines import EngineChoice, load_engine, min_cosine
    from beam_jobs.extract_embeddings.images import decode_and_resize
    from beam_jobs.extract_embeddings.inference import compile_embedding_fn
    from beam_jobs.extract_embeddings.models import build_keras_model
    from devtools.samples import load_sources

    spec = get_spec(name)
    weights = resolve_weights(spec, "random", seed=1)
    assert (
        model_id(spec, weights) == f"{name}/pool=avg/in={spec.input_size[0]}x{spec.input_size[1]}/weights=random-seed1"
    )
    pixels = []
    for img in load_sources()[:3]:
        buf = io.BytesIO()
        img.save(buf, format="JPEG", quality=90)
        pixels.append(decode_and_resize(buf.getvalue(), spec.input_size).pixels)
    pixels = np.stack(pixels)
    fn = compile_embedding_fn(build_keras_model(spec, weights), resolve_attr(spec.preprocess), spec.input_size)
    reference = fn(pixels).numpy()
    assert reference.shape == (3, spec.embedding_dim)
    assert np.isfinite(reference).all()
    model = load_engine(fn, spec, EngineChoice())
    assert min_cosine(model(pixels), reference) >= GUARD_MIN_COSINE
    info = model.info
    with capsys.disabled():
        print(
            f"\n  {name}: auto ran {info['engine']} {info['precision']}, "
            f"first batch {info.get('first_batch_min_cosine')}"
        )
    if name != "efficientnetv2_s":
        assert info["engine"] == ENGINE_OPENVINO
    if info["engine"] == ENGINE_OPENVINO:
        assert info["first_batch_min_cosine"] >= GUARD_MIN_COSINE
    else:
        assert "first real batch" in info["fallbacks"][-1]
