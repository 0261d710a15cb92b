"""reduce_dim: PCA against scikit-learn, UMAP quality and determinism, refusals, and real end-to-end runs."""

from __future__ import annotations

import glob
import json
import os
from pathlib import Path

import numpy as np
import pyarrow.parquet as pq
import pytest
from apache_beam import coders
from apache_beam.testing.test_pipeline import TestPipeline
from apache_beam.testing.util import assert_that
from sklearn.decomposition import PCA

from beam_jobs import reduce_dim
from beam_jobs.config import ConfigError, ReduceConfig, parse_reduce_args
from beam_jobs.reduce_dim import (
    Block,
    BlockCoder,
    FitPCA,
    InputError,
    Projected,
    ReadEmbeddings,
    file_pattern,
    inspect_inputs,
    partition_of,
)
from beam_jobs.reduction import GramStats, Sample, fit_pca, fit_umap, row_priority, trustworthiness
from devtools.synthetic import clustered_embeddings, write_embeddings
from tests.conftest import run_cli

MODULE = "beam_jobs.reduce_dim"
RUNNER = ["--runner=FnApiRunner"]


def read_projection(out: str) -> list[dict]:
    rows = []
    for f in sorted(glob.glob(os.path.join(out, "projection-*.parquet"))):
        rows += pq.read_table(f).to_pylist()
    return rows


def cfg_for(inputs, **kw) -> ReduceConfig:
    return ReduceConfig(inputs=tuple(inputs), output="/unused", method=kw.pop("method", "pca"), **kw).validate()


@pytest.fixture(scope="module")
def clustered(tmp_path_factory):
    """3000 clustered 2048-d rows over two nightly partitions, in the extraction output format."""
    x, labels = clustered_embeddings(3000, 2048, clusters=6, seed=11)
    root = tmp_path_factory.mktemp("emb") / "embeddings"
    write_embeddings(str(root / "ds=2026-11-19"), x[:1500], "synthetic/a", files=2, prefix="a")
    write_embeddings(str(root / "ds=2026-11-20"), x[1500:], "synthetic/a", files=3, prefix="b")
    uris = [f"/synthetic/a/img_{j:07d}.jpg" for j in range(1500)]
    uris += [f"/synthetic/b/img_{j:07d}.jpg" for j in range(1500)]
    return str(root), x, labels, uris


# --------------------------------------------------------------------------- pure helpers


def test_gram_stats_merge_is_exact_whatever_the_split():
    rng = np.random.default_rng(0)
    x = (rng.normal(size=(900, 64)) * 3 + 100).astype(np.float32)
    whole = GramStats().add_block(x)
    parts = [GramStats().add_block(x[:100]), GramStats().add_block(x[100:650]).add_block(x[650:]), GramStats()]
    merged = parts[2].merge(parts[1]).merge(parts[0])
    assert merged.n == whole.n == 900
    np.testing.assert_allclose(merged.mean(), x.astype(np.float64).mean(axis=0), rtol=1e-6)
    np.testing.assert_allclose(merged.covariance(), np.cov(x.astype(np.float64), rowvar=False), rtol=1e-4, atol=1e-4)
    np.testing.assert_allclose(whole.covariance(), merged.covariance(), rtol=1e-5, atol=1e-5)


def test_pca_matches_scikit_learn_per_axis():
    x, _ = clustered_embeddings(4000, 2048, clusters=8, seed=5)
    stats = GramStats()
    for block in np.array_split(x, 7):
        stats.add_block(block)
    ours = fit_pca(stats, 2)
    ref = PCA(n_components=2, svd_solver="full").fit(x.astype(np.float64))
    a, b = ours.transform(x), ref.transform(x.astype(np.float64))
    for axis in range(2):
        assert abs(np.corrcoef(a[:, axis], b[:, axis])[0, 1]) >= 0.9999
    np.testing.assert_allclose(ours.explained_variance_ratio, ref.explained_variance_ratio_, rtol=1e-3)
    # Same sign convention as scikit-learn: the largest loading of each component is positive.
    assert np.all(ours.components[np.arange(2), np.argmax(np.abs(ours.components), axis=1)] > 0)


def test_sample_does_not_depend_on_order_or_split():
    uris = np.array([f"u{i}" for i in range(500)], dtype=object)
    prio = row_priority(uris, seed=3)
    whole = Sample(50).add(prio, image_uri=uris).sorted()
    rng = np.random.default_rng(1)
    perm = rng.permutation(500)
    split = [Sample(50).add(prio[perm[i::4]], image_uri=uris[perm[i::4]]) for i in range(4)]
    merged = split[3].merge(split[1]).merge(split[0]).merge(split[2]).sorted()
    assert list(merged.columns["image_uri"]) == list(whole.columns["image_uri"])
    assert len(Sample(10_000).add(prio, image_uri=uris)) == 500  # larger than the data: all rows
    assert not np.array_equal(row_priority(uris, 3), row_priority(uris, 4))


@pytest.mark.parametrize(("n", "dim", "noise"), [(600, 2048, 0.5), (200, 64, 3.0), (9, 4, 0.1), (3, 3, 0.0)])
def test_trustworthiness_equals_scikit_learn(n, dim, noise):
    from sklearn.manifold import trustworthiness as sklearn_trustworthiness

    rng = np.random.default_rng(n)
    if dim >= 64:
        x = clustered_embeddings(n, dim, clusters=4, seed=n)[0]
    else:
        x = rng.normal(size=(n, dim)).astype(np.float32)
    low = (x[:, :2] + rng.normal(scale=noise, size=(n, 2))).astype(np.float32)
    ours = trustworthiness(x, low)
    if n // 2 - 1 < 1:
        assert ours is None  # too few rows for a neighbourhood
        return
    k = min(10, n // 2 - 1)
    expected = sklearn_trustworthiness(x.astype(np.float64), low.astype(np.float64), n_neighbors=k)
    assert ours == pytest.approx(expected, abs=1e-12)
    assert 0.0 < ours <= 1.0


def test_umap_keeps_clusters_apart_and_neighbourhoods_trustworthy():
    x, labels = clustered_embeddings(2000, 2048, clusters=5, seed=2)
    stats = GramStats().add_block(x)
    model = fit_umap(x[::2], fit_pca(stats, 50), seed=0)
    xy = model.transform(x[1::2])  # rows the model never saw
    lab = labels[1::2]
    assert trustworthiness(x[1::2][:800], xy[:800]) >= 0.9
    centres = np.stack([xy[lab == c].mean(axis=0) for c in range(5)])
    radius = max(np.linalg.norm(xy[lab == c] - centres[c], axis=1).max() for c in range(5))
    gaps = [np.linalg.norm(centres[i] - centres[j]) for i in range(5) for j in range(i + 1, 5)]
    # Nearest-centre assignment recovers every cluster: the clusters stay apart.
    nearest = np.argmin(np.linalg.norm(xy[:, None, :] - centres[None], axis=2), axis=1)
    assert (nearest == lab).mean() == 1.0
    assert min(gaps) > radius


# --------------------------------------------------------------------------- config and inputs


def test_partition_and_patterns():
    assert partition_of("/d/embeddings/ds=2026-11-20/embeddings-00000-of-00002.parquet") == "2026-11-20"
    assert partition_of("gs://b/x/embeddings-0.parquet") is None
    assert file_pattern("/d/ds=2026-11-20") == "/d/ds=2026-11-20/embeddings-*.parquet"
    assert file_pattern("gs://b/e/ds=2026-11-*/") == "gs://b/e/ds=2026-11-*/embeddings-*.parquet"
    assert file_pattern("/d/ds=1/embeddings-*.parquet") == "/d/ds=1/embeddings-*.parquet"


@pytest.mark.parametrize(
    ("kw", "message"),
    [
        ({"method": "tsne"}, "--method must be one of"),
        ({"pca_dims": 1}, "--pca_dims must be 0"),
        ({"fit_sample_size": 2}, "--fit_sample_size must be >= 3"),
        ({"html_points": 50_000}, "--html_points must be between"),
        ({"min_dist": 2.0}, "--min_dist must be between"),
    ],
)
def test_bad_parameters_are_refused(kw, message):
    with pytest.raises(ConfigError, match=message):
        cfg_for(["/x"], **kw)


def test_args_split_between_job_and_beam():
    cfg, beam_args = parse_reduce_args(
        ["--input", "/a", "--input", "/b", "--output", "/o", "--method", "umap", "--runner", "FnApiRunner"]
    )
    assert cfg.inputs == ("/a", "/b")
    assert cfg.method == "umap"
    assert beam_args == ["--runner", "FnApiRunner"]


def test_inspect_inputs_covers_partitions(clustered):
    root, _x, _, _ = clustered
    s = inspect_inputs(cfg_for([os.path.join(root, "ds=2026-11-*")]))
    assert (s.rows, s.dim, s.model_id) == (3000, 2048, "synthetic/a")
    assert s.partitions == ["2026-11-19", "2026-11-20"]
    assert len(s.files) == 5


def test_refuses_no_rows_mixed_lengths_and_mixed_models(tmp_path, clustered):
    root, x, _, _ = clustered
    with pytest.raises(InputError, match="matches no embeddings files"):
        inspect_inputs(cfg_for([str(tmp_path / "nothing" / "ds=2026-11-20")]))

    empty = tmp_path / "empty" / "ds=2026-11-20"
    write_embeddings(str(empty), np.zeros((0, 8), np.float32), "m", files=1)
    with pytest.raises(InputError, match="no input rows"):
        inspect_inputs(cfg_for([str(empty)]))

    short = tmp_path / "short" / "ds=2026-11-21"
    write_embeddings(str(short), x[:10, :1000], "synthetic/a", files=1)
    with pytest.raises(InputError, match=r"different embedding lengths: length 1000 .*; length 2048"):
        inspect_inputs(cfg_for([str(short), os.path.join(root, "ds=2026-11-20")]))

    other = tmp_path / "other" / "ds=2026-11-21"
    write_embeddings(str(other), x[:10], "resnet50/other-weights", files=1, prefix="o")
    mixed = [str(other), os.path.join(root, "ds=2026-11-20")]
    with pytest.raises(InputError, match=r"mixes embeddings of 2 models: .*pick one with --model_id"):
        inspect_inputs(cfg_for(mixed))
    picked = inspect_inputs(cfg_for(mixed, model_id="resnet50/other-weights"))
    assert (picked.rows, picked.rows_total) == (10, 1510)
    with pytest.raises(InputError, match="has no rows in the input"):
        inspect_inputs(cfg_for(mixed, model_id="nope"))


def test_rows_of_different_length_inside_one_file_fail_the_job(tmp_path):
    import pyarrow as pa

    from beam_jobs.extract_embeddings.outputs import embedding_schema

    folder = tmp_path / "ds=2026-11-20"
    folder.mkdir()
    rows = [[0.5] * 16, [0.5] * 16, [0.5] * 12]
    table = pa.Table.from_pydict(
        {
            "image_uri": ["a", "b", "c"],
            "embedding": rows,
            "model_id": ["m"] * 3,
            "content_sha256": ["0"] * 3,
            "width": [1] * 3,
            "height": [1] * 3,
            "run_id": ["r"] * 3,
        },
        schema=embedding_schema(),
    )
    pq.write_table(table, folder / "embeddings-00000-of-00001.parquet")
    out = tmp_path / "out"
    with pytest.raises(Exception, match=r"embedding lengths 12\.\.16, expected 16"):
        reduce_dim.run(["--input", str(folder), "--output", str(out), "--method", "pca", *RUNNER])
    assert not out.exists()


# --------------------------------------------------------------------------- Beam transforms


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
    monkeypatch.setattr(reduce_dim.pickle, "dumps", lambda *a, **k: pytest.fail("estimate_size encoded"))
    arrays = sum(v.nbytes for v in value if isinstance(v, np.ndarray) and v.dtype != object)
    assert arrays < coder.estimate_size(value) < arrays + 200


def test_read_and_fit_pca_transforms_match_scikit_learn(clustered):
    root, x, _, _ = clustered
    summary = inspect_inputs(cfg_for([root + "/ds=*"]))
    ref = PCA(n_components=2, svd_solver="full").fit(x.astype(np.float64))

    def check(models):
        (model,) = models
        assert model.n_rows == 3000
        for axis in range(2):
            cos = abs(float(model.components[axis] @ ref.components_[axis]))
            assert cos >= 0.9999, f"component {axis}: |cos| = {cos}"

    def check_blocks(blocks):
        assert sum(len(b.uris) for b in blocks) == 3000
        assert max(len(b.uris) for b in blocks) <= 512
        assert {b.ds for b in blocks} == {"2026-11-19", "2026-11-20"}

    with TestPipeline(argv=RUNNER) as p:
        blocks = p | "Read" >> ReadEmbeddings(summary, block_rows=512)
        # Typed, so Beam picks BlockCoder (not pickle) wherever blocks are encoded or sized.
        assert blocks.element_type is Block
        assert isinstance(coders.registry.get_coder(blocks.element_type), BlockCoder)
        assert_that(blocks, check_blocks, label="Blocks")
        assert_that(blocks | FitPCA(2), check, label="Model")


# --------------------------------------------------------------------------- jobs end to end


@pytest.mark.slow
def test_pca_job_matches_scikit_learn_and_writes_everything(clustered, tmp_path):
    root, x, _, uris = clustered
    out = str(tmp_path / "projections" / "method=pca" / "ds=2026-11-20")
    args = ["--input", root + "/ds=2026-11-19", "--input", root + "/ds=2026-11-20", "--output", out]
    manifest = reduce_dim.run([*args, "--method", "pca", "--run_id", "r1", "--block_rows", "700", *RUNNER])
    rows = read_projection(out)
    assert len(rows) == manifest["rows"] == 3000
    assert {r["image_uri"] for r in rows} == set(uris)
    assert {r["ds"] for r in rows} == {"2026-11-19", "2026-11-20"}
    assert {(r["method"], r["model_id"], r["run_id"]) for r in rows} == {("pca", "synthetic/a", "r1")}
    ref = PCA(n_components=2, svd_solver="full").fit_transform(x.astype(np.float64))
    by_uri = {r["image_uri"]: (r["x"], r["y"]) for r in rows}
    ours = np.array([by_uri[u] for u in uris])
    for axis in range(2):
        assert abs(np.corrcoef(ours[:, axis], ref[:, axis])[0, 1]) >= 0.9999
    assert len(manifest["explained_variance_ratio"]) == 2
    assert manifest["explained_variance_ratio"][0] >= manifest["explained_variance_ratio"][1] > 0
    assert manifest["partitions"] == ["2026-11-19", "2026-11-20"]
    assert manifest["metrics"]["rows_projected"] == 3000
    assert manifest["metrics"]["rows_read"] == 6000  # two passes: statistics, then projection
    assert manifest["html_points"] == 1000
    assert "seeded sample" in Path(out, "map.html").read_text()
    assert Path(out, "map.png").read_bytes()[:8] == b"\x89PNG\r\n\x1a\n"


@pytest.mark.slow
def test_umap_job_is_deterministic_and_rerun_replaces_output(clustered, tmp_path):
    root, _x, labels, uris = clustered
    base = ["--method", "umap", "--seed", "7", *RUNNER]
    out_a, out_b = str(tmp_path / "a"), str(tmp_path / "b")
    both = ["--input", root + "/ds=*", "--fit_sample_size", "1200"]
    first = reduce_dim.run([*base, *both, "--output", out_a, "--num_shards", "3"])
    reduce_dim.run([*base, *both, "--output", out_b])
    a = {r["image_uri"]: (r["x"], r["y"]) for r in read_projection(out_a)}
    b = {r["image_uri"]: (r["x"], r["y"]) for r in read_projection(out_b)}
    assert a == b  # same seed and input: same coordinates, whatever the sharding
    assert first["fit_rows"] == 1200
    assert first["trustworthiness"] >= 0.9
    xy = np.array([a[u] for u in uris])
    for c in np.unique(labels):  # each cluster's points are nearer their own centre than any other
        centres = np.stack([xy[labels == k].mean(axis=0) for k in np.unique(labels)])
        nearest = np.argmin(np.linalg.norm(xy[labels == c][:, None] - centres[None], axis=2), axis=1)
        assert (nearest == c).mean() >= 0.99

    # Re-run into the same directory with other shards and a smaller input: replaced whole.
    again = reduce_dim.run([*base, "--output", out_a, "--input", root + "/ds=2026-11-20", "--fit_sample_size", "5000"])
    assert again["fit_rows"] == 1500  # a fit sample larger than the data uses all rows
    rows = read_projection(out_a)
    assert len(rows) == 1500
    assert sorted(os.listdir(out_a)) == sorted([*again["files"]["projections"], "manifest.json", "map.png", "map.html"])
    assert sorted(os.listdir(tmp_path)) == ["a", "b"]  # no staging or trash directories left


@pytest.fixture(scope="module")
def real_embeddings(sample_dir, tmp_path_factory):
    """The extraction job's real output for the sample photos (random weights)."""
    out = str(tmp_path_factory.mktemp("real") / "embeddings" / "ds=2026-11-20")
    proc = run_cli(
        "beam_jobs.extract_embeddings",
        "--input",
        os.path.join(sample_dir, "*"),
        "--output",
        out,
        "--weights",
        "random",
        "--run_id",
        "real",
        "--runner",
        "FnApiRunner",
    )
    assert proc.returncode == 0, proc.stderr[-3000:]
    return out


@pytest.mark.slow
@pytest.mark.parametrize("method", ["pca", "umap"])
def test_cli_on_real_extraction_output(real_embeddings, sample_dir, method, tmp_path):
    out = str(tmp_path / f"method={method}" / "ds=2026-11-20")
    proc = run_cli(MODULE, "--input", real_embeddings, "--output", out, "--method", method, "--runner", "FnApiRunner")
    assert proc.returncode == 0, proc.stderr[-3000:]
    manifest = json.loads(Path(out, "manifest.json").read_text())
    extracted = json.loads(Path(real_embeddings, "manifest.json").read_text())
    rows = read_projection(out)
    assert len(rows) == manifest["rows"] == extracted["embedded"]
    assert {r["image_uri"] for r in rows} == {p for p in glob.glob(os.path.join(sample_dir, "*"))}
    assert all(np.isfinite([r["x"], r["y"]]).all() for r in rows)
    assert manifest["model_id"] == extracted["model_id"]
    assert manifest["method"] == method
    assert manifest["seconds"] > 0
    page = Path(out, "map.html").read_text()
    # Offline: no external script, style or image; every point has its thumbnail inline.
    assert "http://" not in page.replace("http://www.w3.org/2000/svg", "")
    assert "https://" not in page
    assert manifest["thumbnails"] == manifest["html_points"] == len(rows)
    assert page.count("data:image/jpeg;base64,") == len(rows)
    from PIL import Image

    with Image.open(Path(out, "map.png")) as img:
        assert img.size[0] >= 1000
        assert len(img.getcolors(1 << 20) or []) > 10  # a real picture, not a blank canvas
    if method == "umap":
        assert manifest["fit_rows"] == len(rows)


@pytest.mark.slow
def test_cli_refuses_bad_input_before_any_work(tmp_path, clustered):
    root, *_ = clustered
    out = str(tmp_path / "out")
    proc = run_cli(MODULE, "--input", str(tmp_path / "none"), "--output", out, "--method", "pca")
    assert proc.returncode == 2
    assert "matches no embeddings files" in proc.stderr
    assert "Traceback" not in proc.stderr
    proc = run_cli(MODULE, "--input", root, "--output", out, "--method", "umap", "--pca_dims", "1")
    assert proc.returncode == 2
    assert "--pca_dims must be 0 (off) or >= 2" in proc.stderr
    assert not os.path.exists(out)
