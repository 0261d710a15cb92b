"""Inference engines: the choice logic, the accuracy guard on real photos, and the job on each engine.

The guard's figure is the one users rely on: vectors from OpenVINO keep TensorFlow's
``model_id`` only because every one of them is within cosine 0.999 of TensorFlow f32's.
"""

from __future__ import annotations

import glob
import io
import json
import os
from pathlib import Path

import numpy as np
import pyarrow.parquet as pq
import pytest

from beam_jobs.config import ConfigError, ExtractConfig
from beam_jobs.contract import (
    ENGINE_AUTO,
    ENGINE_OPENVINO,
    ENGINE_TF,
    GUARD_MIN_COSINE,
    PRECISION_AUTO,
    PRECISION_BF16,
    PRECISION_F32,
    ModelSpec,
)
from beam_jobs.extract_embeddings import engines
from beam_jobs.extract_embeddings.engines import EngineChoice, EngineError, EngineModel, load_engine
from tests.conftest import run_cli

TINY = ModelSpec(
    name="tiny",
    input_size=(32, 32),
    embedding_dim=8,
    pooling="avg",
    builder="unused",
    preprocess="unused",
    imagenet_file="unused",
    imagenet_url="unused",
)


@pytest.fixture(scope="module")
def tiny_fn():
    """A small real Keras graph compiled the way the job compiles ResNet50 (uint8 in, preprocess inside)."""
    import keras

    from beam_jobs.extract_embeddings.inference import compile_embedding_fn

    keras.utils.set_random_seed(3)
    inputs = keras.Input((32, 32, 3))
    x = keras.layers.Conv2D(16, 3, activation="relu")(inputs)
    x = keras.layers.Conv2D(8, 3, activation="relu")(x)
    model = keras.Model(inputs, keras.layers.GlobalAveragePooling2D()(x))
    return compile_embedding_fn(model, lambda t: t / 127.5 - 1.0, (32, 32))


def photos(size: tuple[int, int], count: int) -> np.ndarray:
    """Real photos (scikit-learn, scikit-image, matplotlib samples), decoded and resized as the job does."""
    from beam_jobs.extract_embeddings.images import decode_and_resize
    from devtools.samples import load_sources

    out = []
    for i, img in enumerate(load_sources()[:count]):
        buf = io.BytesIO()
        img.save(buf, format="JPEG", quality=85 + i % 10)
        out.append(decode_and_resize(buf.getvalue(), size).pixels)
    return np.stack(out)


# --------------------------------------------------------------------------- choice logic


def test_precision_follows_the_cpu_and_a_forced_bf16_needs_it():
    assert engines.openvino_precision(PRECISION_AUTO, ["FP32", "INT8"]) == PRECISION_F32
    assert engines.openvino_precision(PRECISION_AUTO, ["FP32", "BF16", "INT8"]) == PRECISION_BF16
    assert engines.openvino_precision(PRECISION_F32, ["FP32", "BF16"]) == PRECISION_F32
    with pytest.raises(EngineError, match="no native bf16"):
        engines.openvino_precision(PRECISION_BF16, ["FP32", "INT8"])


def test_cpu_features_are_the_relevant_flags_of_this_cpu():
    features = engines.cpu_features()
    assert set(features) <= set(engines.RELEVANT_CPU_FLAGS)
    flags = next(line for line in Path("/proc/cpuinfo").read_text().splitlines() if line.startswith("flags"))
    assert ("avx2" in features) == (" avx2 " in flags + " ")


def test_min_cosine():
    a = np.array([[1.0, 0.0], [0.0, 2.0]])
    assert engines.min_cosine(a, a * 3) == pytest.approx(1.0)
    assert engines.min_cosine(a, np.array([[1.0, 0.0], [2.0, 0.0]])) == pytest.approx(0.0)
    assert engines.min_cosine(np.zeros((1, 2)), np.zeros((1, 2))) == 1.0


def test_bf16_with_tf_is_refused_before_any_work():
    with pytest.raises(ConfigError, match="--precision bf16 needs --engine openvino or auto"):
        ExtractConfig(output="/o", input="/i/*", engine=ENGINE_TF, precision=PRECISION_BF16).validate()
    with pytest.raises(ConfigError, match="--engine must be one of"):
        ExtractConfig(output="/o", input="/i/*", engine="tensorrt").validate()


# --------------------------------------------------------------------------- engines on a real graph


def test_openvino_runs_the_same_graph_within_the_guard(tiny_fn):
    pixels = photos((32, 32), 6)
    reference = tiny_fn(pixels).numpy()
    model = load_engine(tiny_fn, TINY, EngineChoice(ENGINE_OPENVINO))
    got = model(pixels)
    assert got.shape == reference.shape == (6, 8)
    assert got.dtype == np.float32
    assert engines.min_cosine(got, reference) >= GUARD_MIN_COSINE
    info = model.info
    assert info["engine"] == ENGINE_OPENVINO
    assert info["chosen_by"] == "flag"
    assert info["guard_min_cosine"] >= GUARD_MIN_COSINE
    assert info["infer_requests"] >= 1
    assert info["cpu_features"] == engines.cpu_features()
    # One batch smaller than the number of requests, and a batch of one, still come back whole and in order.
    assert engines.min_cosine(model(pixels[:1]), reference[:1]) >= GUARD_MIN_COSINE
    np.testing.assert_allclose(model(pixels[::-1]), got[::-1], rtol=1e-4, atol=1e-5)


def test_threads_sharing_one_openvino_model_each_get_their_own_batch_back(tiny_fn):
    """RunInference shares the model per process: concurrent batches share its infer requests chunk
    by chunk, and each caller gets exactly its own rows, in order; a refused batch leaks no request."""
    import threading

    model = load_engine(tiny_fn, TINY, EngineChoice(ENGINE_OPENVINO))
    pixels = photos((32, 32), 24)
    batches = [pixels[i : i + n] for i, n in ((0, 7), (7, 1), (8, 5), (13, 11), (2, 9), (5, 3))]
    expected = [model(batch) for batch in batches]
    got: dict[tuple[int, int], np.ndarray] = {}
    errors: list[BaseException] = []

    def worker(thread: int) -> None:
        try:
            for rnd in range(10):
                index = (thread + rnd) % len(batches)
                got[(thread, rnd)] = model(batches[index])
        except BaseException as exc:  # noqa: BLE001 - reported by the main thread
            errors.append(exc)

    threads = [threading.Thread(target=worker, args=(t,)) for t in range(6)]
    for t in threads:
        t.start()
    for t in threads:
        t.join(timeout=120)
    assert not errors
    assert len(got) == 60
    for (thread, rnd), out in got.items():
        np.testing.assert_allclose(out, expected[(thread + rnd) % len(batches)], rtol=1e-5, atol=1e-6)

    with pytest.raises(Exception):  # noqa: B017, PT011 - OpenVINO's own error type for a wrong shape
        model(photos((16, 16), 4))
    for _ in range(model.info["infer_requests"] + 1):
        np.testing.assert_allclose(model(batches[0]), expected[0], rtol=1e-5, atol=1e-6)


def test_auto_takes_openvino_here_and_records_why(tiny_fn):
    model = load_engine(tiny_fn, TINY, EngineChoice())
    assert model.info["engine"] == ENGINE_OPENVINO
    assert model.info["chosen_by"] == "auto"
    caps = model.info["openvino_capabilities"]
    assert model.info["precision"] == (PRECISION_BF16 if "BF16" in caps else PRECISION_F32)
    assert "fallbacks" not in model.info


def test_an_engine_that_misses_the_guard_is_refused_when_forced_and_skipped_by_auto(tiny_fn, monkeypatch):
    """A lossy engine (as an int8 one could be) must never hand out vectors under the same model_id."""
    real = engines.LOADERS[ENGINE_OPENVINO]

    def lossy(embed_fn, spec, choice):
        loaded = real(embed_fn, spec, choice)
        rng = np.random.default_rng(0)
        return EngineModel(lambda px: loaded(px) + rng.normal(0, 1.0, (len(px), 8)).astype(np.float32), loaded.info)

    monkeypatch.setitem(engines.LOADERS, ENGINE_OPENVINO, lossy)
    with pytest.raises(EngineError, match="failed the accuracy guard"):
        load_engine(tiny_fn, TINY, EngineChoice(ENGINE_OPENVINO, PRECISION_F32))
    fallback = load_engine(tiny_fn, TINY, EngineChoice(ENGINE_AUTO))
    assert fallback.info["engine"] == ENGINE_TF
    assert any("failed the accuracy guard" in reason for reason in fallback.info["fallbacks"])
    pixels = photos((32, 32), 3)
    np.testing.assert_allclose(fallback(pixels), tiny_fn(pixels).numpy())


def test_an_engine_that_passes_the_probe_but_not_real_photos_is_caught_on_the_first_batch(tiny_fn, monkeypatch):
    """The probe cannot stand for every night: the first real batch is checked against TF f32 too."""
    real = engines.LOADERS[ENGINE_OPENVINO]
    probe_size = len(engines.probe_batch(TINY.input_size))

    def wrong_on_real_data(embed_fn, spec, choice):
        loaded = real(embed_fn, spec, choice)
        return EngineModel(lambda px: loaded(px) if len(px) == probe_size else -loaded(px), loaded.info)

    monkeypatch.setitem(engines.LOADERS, ENGINE_OPENVINO, wrong_on_real_data)
    pixels = photos((32, 32), 3)
    expected = tiny_fn(pixels).numpy()

    auto = load_engine(tiny_fn, TINY, EngineChoice())
    assert auto.info["engine"] == ENGINE_OPENVINO  # passed at load
    np.testing.assert_allclose(auto(pixels), expected)  # the first batch comes from TF, not the bad engine
    assert (auto.info["engine"], auto.info["precision"]) == (ENGINE_TF, PRECISION_F32)
    assert auto.info["first_batch_min_cosine"] < 0
    assert "first real batch" in auto.info["fallbacks"][-1]
    np.testing.assert_allclose(auto(pixels[:2]), expected[:2])  # and every batch after it

    forced = load_engine(tiny_fn, TINY, EngineChoice(ENGINE_OPENVINO))
    for _ in range(2):  # refused on the first batch and on every one after, never a mix
        with pytest.raises(EngineError, match="failed the accuracy guard on the first real batch"):
            forced(pixels)

    monkeypatch.setitem(engines.LOADERS, ENGINE_OPENVINO, real)
    good = load_engine(tiny_fn, TINY, EngineChoice(ENGINE_OPENVINO))
    good(pixels)
    assert good.info["engine"] == ENGINE_OPENVINO
    assert good.info["first_batch_min_cosine"] >= GUARD_MIN_COSINE


def test_no_thread_gets_unchecked_vectors_while_the_first_batch_is_being_checked(tiny_fn, monkeypatch):
    """RunInference shares one model between a process's threads: the others wait for the check."""
    import threading

    real = engines.LOADERS[ENGINE_OPENVINO]
    probe_size = len(engines.probe_batch(TINY.input_size))
    started = threading.Event()

    def slow_and_wrong(embed_fn, spec, choice):
        loaded = real(embed_fn, spec, choice)

        def call(px):
            if len(px) == probe_size:
                return loaded(px)
            started.set()
            threading.Event().wait(0.3)  # a long first batch: the other thread arrives meanwhile
            return -loaded(px)

        return EngineModel(call, loaded.info)

    monkeypatch.setitem(engines.LOADERS, ENGINE_OPENVINO, slow_and_wrong)
    model = load_engine(tiny_fn, TINY, EngineChoice())
    pixels = photos((32, 32), 3)
    expected = tiny_fn(pixels).numpy()
    results = {}

    def embed(name):
        if name == "second":
            started.wait(5)
        results[name] = model(pixels)

    threads = [threading.Thread(target=embed, args=(name,)) for name in ("first", "second")]
    for t in threads:
        t.start()
    for t in threads:
        t.join(30)
    for name in ("first", "second"):
        np.testing.assert_allclose(results[name], expected, err_msg=name)
    assert model.info["engine"] == ENGINE_TF


def test_auto_survives_an_engine_that_cannot_load(tiny_fn, monkeypatch):
    def broken(embed_fn, spec, choice):
        raise RuntimeError("converter bug")

    monkeypatch.setitem(engines.LOADERS, ENGINE_OPENVINO, broken)
    model = load_engine(tiny_fn, TINY, EngineChoice())
    assert model.info["engine"] == ENGINE_TF
    assert model.info["fallbacks"] == ["openvino: RuntimeError: converter bug"]


@pytest.mark.slow  # ResNet50 built, traced and converted: ~15-30 s on 2 busy cores
def test_resnet50_on_openvino_matches_tensorflow_f32_on_real_photos(record_property, capsys):
    """The issue's guard: every embedding of real photos within cosine 0.999 of TF f32's, at each precision run here."""
    from beam_jobs.extract_embeddings.inference import load_embedding_model
    from beam_jobs.extract_embeddings.models import get_spec, resolve_weights

    spec = get_spec("resnet50")
    weights = resolve_weights(spec, "random", seed=0)
    pixels = photos(spec.input_size, 12)
    reference = load_embedding_model("resnet50", weights, EngineChoice(ENGINE_TF))(pixels)
    assert np.abs(reference).sum() > 0
    ov = load_embedding_model("resnet50", weights, EngineChoice(ENGINE_OPENVINO))
    cosine = engines.min_cosine(ov(pixels), reference)
    precision = ov.info["precision"]
    record_property("openvino_precision", precision)
    with capsys.disabled():
        print(f"\n  ResNet50 OpenVINO {precision} vs TF f32 on {len(pixels)} photos: min cosine {cosine:.6f}")
    assert cosine >= GUARD_MIN_COSINE, f"OpenVINO {precision}: min cosine {cosine}"


# --------------------------------------------------------------------------- the job, in separate processes


def read_rows(out: str) -> dict[str, np.ndarray]:
    rows = {}
    for f in sorted(glob.glob(os.path.join(out, "embeddings-*.parquet"))):
        for row in pq.read_table(f).to_pylist():
            rows[row["image_uri"]] = np.asarray(row["embedding"], dtype=np.float32)
    return rows


@pytest.mark.slow  # one job run in two worker processes, each converting its own model (~40-70 s)
def test_job_in_worker_processes_with_auto_engine_matches_tf(sample_dir, edge_dir, tmp_path):
    """multi_processing is the local stand-in for Dataflow's separate workers: accounting and vectors hold."""
    from beam_jobs.extract_embeddings.images import decode_and_resize
    from beam_jobs.extract_embeddings.inference import load_embedding_model
    from beam_jobs.extract_embeddings.models import get_spec, model_id, resolve_weights

    _edge_folder, expected = edge_dir
    folder = tmp_path / "ds=2026-11-20"
    folder.mkdir()
    files = sorted(glob.glob(os.path.join(sample_dir, "*")))[:10]
    for f in files:
        os.symlink(f, folder / os.path.basename(f))
    bad = next(path for path, reason in expected.items() if reason.startswith("decode/"))
    os.symlink(bad, folder / os.path.basename(bad))
    out = str(tmp_path / "out")
    done = run_cli(
        "beam_jobs.extract_embeddings",
        *("--input", f"{folder}/*", "--weights", "random", "--batch_size", "4", "--output", out),
        "--direct_running_mode=multi_processing",
        "--direct_num_workers=2",
    )
    assert done.returncode == 0, done.stderr[-3000:]
    manifest = json.loads(Path(out, "manifest.json").read_text())
    assert (manifest["inputs"], manifest["embedded"], manifest["failed"]) == (11, 10, 1)
    assert list(manifest["failures_by_reason"]) == [expected[bad]]
    assert (manifest["engine"], manifest["precision"]) == (ENGINE_AUTO, PRECISION_AUTO)
    assert {e["engine"] for e in manifest["engines"]} == {ENGINE_OPENVINO}
    assert all(e["guard_min_cosine"] >= GUARD_MIN_COSINE for e in manifest["engines"])
    assert all(e["cpu_features"] == engines.cpu_features() for e in manifest["engines"])

    rows = read_rows(out)
    uris = sorted(str(folder / os.path.basename(f)) for f in files)
    assert sorted(rows) == uris
    spec = get_spec("resnet50")
    weights = resolve_weights(spec, "random", seed=0)
    assert manifest["model_id"] == model_id(spec, weights)
    tf = load_embedding_model("resnet50", weights, EngineChoice(ENGINE_TF))
    pixels = np.stack([decode_and_resize(Path(u).read_bytes(), spec.input_size).pixels for u in uris])
    cosine = engines.min_cosine(np.stack([rows[u] for u in uris]), tf(pixels))
    assert cosine >= GUARD_MIN_COSINE
