"""Model comparison (beam_jobs.compare) on synthetic embeddings where the answer is known, and the
mixed partition two models write: the comparison job, reduce_dim and build_index each pick a model."""

from __future__ import annotations

import json
import os
from pathlib import Path

import numpy as np
import pytest

from beam_jobs.compare.metrics import compare_pair, distance_spearman, knn_overlap, linear_cka, spearman
from beam_jobs.contract import COMPARISON_JSON, COMPARISON_PNG, PairComparison
from devtools.synthetic import clustered_embeddings


@pytest.fixture(scope="module")
def embeddings() -> np.ndarray:
    x, _ = clustered_embeddings(600, dim=96, clusters=8, seed=2, rank=16)
    return x


def rotated(x: np.ndarray, seed: int = 1, scale: float = 3.0) -> np.ndarray:
    q = np.linalg.qr(np.random.default_rng(seed).normal(size=(x.shape[1], x.shape[1])))[0]
    return (x @ q * scale).astype(np.float32)


def noisy(x: np.ndarray, level: float, seed: int = 5) -> np.ndarray:
    return (x + np.random.default_rng(seed).normal(scale=level * x.std(), size=x.shape)).astype(np.float32)


def test_a_rotated_scaled_copy_agrees_fully(embeddings):
    figures = compare_pair(embeddings, rotated(embeddings), k=10, pairs=20_000)
    assert figures == compare_pair(embeddings, widened(rotated(embeddings), 128, seed=8), k=10, pairs=20_000)
    assert figures["knn_overlap"]["mean"] == 1.0
    assert figures["knn_overlap"]["histogram"][-1] == len(embeddings)
    assert figures["linear_cka"] == pytest.approx(1.0, abs=1e-4)
    assert figures["distance_spearman"] == pytest.approx(1.0, abs=1e-4)


def test_scores_fall_monotonically_as_noise_grows(embeddings):
    levels = (0.05, 0.2, 0.5, 1.0, 2.0)
    scores = [compare_pair(embeddings, noisy(embeddings, level), k=10, pairs=20_000) for level in levels]
    for name in ("linear_cka", "distance_spearman"):
        values = [s[name] for s in scores]
        assert values == sorted(values, reverse=True), (name, values)
        assert values[-1] < values[0]
    overlaps = [s["knn_overlap"]["mean"] for s in scores]
    assert overlaps == sorted(overlaps, reverse=True), overlaps
    assert overlaps[0] > 0.8 > 0.4 > overlaps[-1]


def test_unrelated_embeddings_score_near_zero(embeddings):
    other = np.random.default_rng(9).normal(size=embeddings.shape).astype(np.float32)
    assert knn_overlap(embeddings, other, 10).mean() < 0.1
    assert abs(distance_spearman(embeddings, other, 20_000)) < 0.1
    assert linear_cka(embeddings, other) < 0.3  # small n over d: CKA's bias keeps it above 0


def test_spearman_handles_ties_like_the_textbook():
    from scipy.stats import spearmanr

    x = np.array([1, 2, 2, 3, 5, 5, 5, 8], float)
    y = np.array([2, 1, 4, 3, 6, 7, 7, 9], float)
    assert spearman(x, y) == pytest.approx(spearmanr(x, y).statistic)


def widened(x: np.ndarray, dim: int, seed: int = 4) -> np.ndarray:
    """x in a larger space by a map with orthonormal rows: every distance kept, another length."""
    q = np.linalg.qr(np.random.default_rng(seed).normal(size=(dim, dim)))[0]
    return (x @ q[: x.shape[1]]).astype(np.float32)


def write_mixed(path: str, models: dict[str, np.ndarray], first: int = 0) -> None:
    """One Parquet file holding several models' rows interleaved, as one `--model a,b` shard does."""
    import pyarrow as pa
    import pyarrow.parquet as pq

    from beam_jobs.contract import EMBEDDING_COLUMNS
    from beam_jobs.storage import arrow_schema

    rows = []
    for i in range(max(len(x) for x in models.values())):
        for mid, x in models.items():
            if i < len(x):
                rows.append(
                    {
                        "image_uri": f"/n/img_{first + i:04d}.jpg",
                        "embedding": x[i].tolist(),
                        "model_id": mid,
                        "content_sha256": "0" * 64,
                        "width": 10,
                        "height": 10,
                        "run_id": "r",
                    }
                )
    pq.write_table(pa.Table.from_pylist(rows, schema=arrow_schema(EMBEDDING_COLUMNS)), path, row_group_size=256)


@pytest.fixture(scope="module")
def mixed_partition(embeddings, tmp_path_factory) -> str:
    """One night with two models' rows in the same files (as `--model a,b` writes it), of different lengths:
    b is a's rotated, widened copy plus noise, and misses a few images, so the comparison must align the
    models on the images both embedded."""
    folder = tmp_path_factory.mktemp("night") / "embeddings" / "ds=2026-11-20"
    folder.mkdir(parents=True)
    b = noisy(widened(rotated(embeddings), 128), 0.2)[:550]
    write_mixed(str(folder / "embeddings-00000-of-00002.parquet"), {"model-a": embeddings[:300], "model-b": b[:300]})
    write_mixed(
        str(folder / "embeddings-00001-of-00002.parquet"), {"model-b": b[300:], "model-a": embeddings[300:]}, 300
    )
    manifest = {"model_id": "model-b", "models": {"a": {"model_id": "model-a"}, "b": {"model_id": "model-b"}}}
    (folder / "manifest.json").write_text(json.dumps(manifest))
    return str(folder)


def test_the_job_compares_the_models_of_a_partition_and_publishes_json_and_png(mixed_partition, tmp_path):
    from beam_jobs.compare.job import run

    out = str(tmp_path / "comparisons" / "ds=2026-11-20")
    report = run(["--input", mixed_partition, "--output", out, "--sample_size", "400", "--run_id", "r1"])
    assert sorted(os.listdir(out)) == [COMPARISON_JSON, COMPARISON_PNG]
    assert json.loads(Path(out, COMPARISON_JSON).read_text()) == json.loads(json.dumps(report))
    assert report["images_by_model"] == {"model-a": 600, "model-b": 550}
    assert report["common_images"] == 550
    (pair,) = report["comparisons"]
    assert set(pair) == set(PairComparison.__annotations__)
    assert pair["models"] == ["b", "a"]  # the primary (the manifest's model_id) first
    assert pair["images"] == 400
    assert 0.5 < pair["knn_overlap"]["mean"] < 1.0
    assert sum(pair["knn_overlap"]["histogram"]) == 400
    assert 0.8 < pair["linear_cka"] <= 1.0
    with open(os.path.join(out, COMPARISON_PNG), "rb") as handle:
        assert handle.read(8) == b"\x89PNG\r\n\x1a\n"


def test_the_job_refuses_what_it_cannot_compare(mixed_partition, tmp_path):
    from beam_jobs import runtime
    from beam_jobs.compare.job import run

    out = str(tmp_path / "c")
    assert runtime.main(run, ["--input", mixed_partition, "--output", out, "--model_id", "model-a"]) == 2
    assert (
        runtime.main(run, ["--input", mixed_partition, "--output", out, "--model_id", "nope", "--model_id", "x"]) == 2
    )
    assert not os.path.exists(out)


def test_reduce_and_index_pick_one_model_of_a_mixed_partition(mixed_partition):
    from beam_jobs.build_index.window import plan_window
    from beam_jobs.partitions import inspect_inputs
    from beam_jobs.runtime import InputError

    with pytest.raises(InputError, match="--model_id"):
        inspect_inputs([mixed_partition])
    summary = inspect_inputs([mixed_partition], model_id="model-b")
    assert (summary.model_id, summary.rows, summary.dim) == ("model-b", 550, 128)
    index_out = mixed_partition.replace("embeddings", "index")
    window = plan_window((mixed_partition,), index_out, 1, "model-a", True, 0)
    assert (window.summary.model_id, window.summary.rows, window.summary.dim) == ("model-a", 600, 96)
