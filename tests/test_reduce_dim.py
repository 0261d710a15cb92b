"""reduce_dim as a whole: its flags, and real end-to-end runs (PCA against scikit-learn, UMAP determinism, CLI).

The stages are tested one module at a time in test_reduce_inputs, test_reduce_fit,
test_reduce_outputs, test_reduce_records, test_reduction and test_maps.
"""

from __future__ import annotations

import glob
import json
import os
import re
from pathlib import Path

import numpy as np
import pyarrow.parquet as pq
import pytest
from PIL import Image
from sklearn.decomposition import PCA

from beam_jobs.config import ConfigError, ReduceConfig
from beam_jobs.reduce_dim.pipeline import run
from beam_jobs.reduce_dim.reduction import GramStats, fit_pca
from devtools.synthetic import clustered_embeddings, write_embeddings
from tests.conftest import run_cli
from tests.test_reduce_inputs import write_clustered, write_rows

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
    return write_clustered(tmp_path_factory.mktemp("emb"))


# --------------------------------------------------------------------------- flags


@pytest.mark.parametrize(
    ("kw", "message"),
    [
        ({"method": "tsne"}, "--method must be one of"),
        ({"pca_dims": 1}, "--pca_dims must be 0"),
        ({"fit_sample_size": 2}, "--fit_sample_size must be >= 3"),
        ({"html_points": 1_000_001}, "--html_points must be between"),
        ({"mosaic_grid": 65}, "--mosaic_grid must be between"),
        ({"thumbnail_budget_mb": -1}, "--thumbnail_budget_mb must be between 0 and 200"),
        ({"min_dist": 2.0}, "--min_dist must be between"),
    ],
)
def test_bad_parameters_are_refused(kw, message):
    with pytest.raises(ConfigError, match=message):
        cfg_for(["/x"], **kw)


def test_args_split_between_job_and_beam():
    cfg, beam_args = ReduceConfig.parse(
        ["--input", "/a", "--input", "/b", "--output", "/o", "--method", "umap", "--runner", "FnApiRunner"]
    )
    assert cfg.inputs == ("/a", "/b")
    assert cfg.method == "umap"
    assert beam_args == ["--runner", "FnApiRunner"]


@pytest.mark.slow  # a whole run; test_reduce_inputs checks the same refusal on the stage alone
def test_rows_of_different_length_inside_one_file_fail_the_job(tmp_path):
    folder = tmp_path / "ds=2026-11-20"
    folder.mkdir()
    rows = [[0.5] * 16, [0.5] * 16, [0.5] * 12]
    write_rows(folder / "embeddings-00000-of-00001.parquet", ["a", "b", "c"], rows, ["m"] * 3)
    out = tmp_path / "out"
    with pytest.raises(Exception, match=r"embedding lengths 12\.\.16, expected 16"):
        run(["--input", str(folder), "--output", str(out), "--method", "pca", *RUNNER])
    assert not out.exists()


# --------------------------------------------------------------------------- the job end to end


@pytest.mark.slow
def test_pca_job_matches_scikit_learn_and_writes_everything(clustered, tmp_path):
    root, x, _, uris = clustered
    out = str(tmp_path / "projections" / "method=pca" / "ds=2026-11-20")
    args = ["--input", root + "/ds=2026-11-19", "--input", root + "/ds=2026-11-20", "--output", out]
    manifest = run([*args, "--method", "pca", "--run_id", "r1", "--block_rows", "700", *RUNNER])
    rows = read_projection(out)
    assert len(rows) == manifest["rows"] == 3000
    assert {r["image_uri"] for r in rows} == set(uris)
    assert {r["ds"] for r in rows} == {"2026-11-19", "2026-11-20"}
    assert {(r["method"], r["model_id"], r["run_id"]) for r in rows} == {("pca", "synthetic/a", "r1")}
    ref = PCA(n_components=2, svd_solver="covariance_eigh").fit_transform(x.astype(np.float64))
    by_uri = {r["image_uri"]: (r["x"], r["y"]) for r in rows}
    ours = np.array([by_uri[u] for u in uris])
    for axis in range(2):
        assert abs(np.corrcoef(ours[:, axis], ref[:, axis])[0, 1]) >= 0.9999
    assert len(manifest["explained_variance_ratio"]) == 2
    assert manifest["explained_variance_ratio"][0] >= manifest["explained_variance_ratio"][1] > 0
    assert manifest["partitions"] == ["2026-11-19", "2026-11-20"]
    assert manifest["metrics"]["rows_projected"] == 3000
    assert manifest["metrics"]["rows_read"] == 6000  # two passes: statistics, then projection
    assert manifest["html_points"] == 3000  # every row, up to --html_points (200,000)
    assert "All 3,000 rows are drawn." in Path(out, "map.html").read_text()
    assert Path(out, "map.png").read_bytes()[:8] == b"\x89PNG\r\n\x1a\n"


@pytest.mark.slow
def test_umap_job_is_deterministic_whatever_the_sharding(clustered, tmp_path):
    """One night (1,500 rows) twice with the same seed: same coordinates. The fit sample (1,000) is smaller
    than the night, so both the fitted rows and the transformed rest are compared. (A sample larger than the
    data takes every row: tests/test_reduction.py; a re-run replacing its output whole: tests/test_kills.py.)"""
    root, _x, labels, uris = clustered
    night = slice(1500, 3000)  # ds=2026-11-20
    base = ["--method", "umap", "--seed", "7", *RUNNER, "--input", root + "/ds=2026-11-20", "--fit_sample_size", "1000"]
    out_a, out_b = str(tmp_path / "a"), str(tmp_path / "b")
    first = run([*base, "--output", out_a, "--num_shards", "3"])
    run([*base, "--output", out_b])
    a = {r["image_uri"]: (r["x"], r["y"]) for r in read_projection(out_a)}
    b = {r["image_uri"]: (r["x"], r["y"]) for r in read_projection(out_b)}
    assert len(a) == 1500
    assert a == b  # same seed and input: same coordinates, whatever the sharding
    assert first["fit_rows"] == 1000
    assert first["trustworthiness"] >= 0.9
    xy = np.array([a[u] for u in uris[night]])
    labels = labels[night]
    clusters = np.unique(labels)
    centres = np.stack([xy[labels == k].mean(axis=0) for k in clusters])
    for i, c in enumerate(clusters):  # each cluster's points are nearer their own centre than any other
        nearest = np.argmin(np.linalg.norm(xy[labels == c][:, None] - centres[None], axis=2), axis=1)
        assert (nearest == i).mean() >= 0.99
    assert sorted(os.listdir(out_a)) == sorted([*first["files"]["projections"], "manifest.json", "map.png", "map.html"])
    assert sorted(os.listdir(tmp_path)) == ["a", "b"]  # no staging or trash directories left


@pytest.mark.slow
@pytest.mark.parametrize("method", ["pca", "umap"])
def test_cli_on_real_extraction_output(manifest_run, method, tmp_path):
    """The extraction job's real output (conftest.manifest_run: photos and the awkward files that decode)."""
    real_embeddings, expected, _ = manifest_run
    out = str(tmp_path / f"method={method}" / "ds=2026-11-20")
    proc = run_cli(MODULE, "--input", real_embeddings, "--output", out, "--method", method, "--runner", "FnApiRunner")
    assert proc.returncode == 0, proc.stderr[-3000:]
    manifest = json.loads(Path(out, "manifest.json").read_text())
    extracted = json.loads(Path(real_embeddings, "manifest.json").read_text())
    rows = read_projection(out)
    assert len(rows) == manifest["rows"] == extracted["embedded"]
    assert {r["image_uri"] for r in rows} == {uri for uri, outcome in expected.items() if outcome == "ok"}
    assert all(np.isfinite([r["x"], r["y"]]).all() for r in rows)
    assert manifest["model_id"] == extracted["model_id"]
    assert manifest["method"] == method
    assert manifest["seconds"] > 0
    page = Path(out, "map.html").read_text()
    # Offline: no external script or style (BokehJS is inline); every point has its thumbnail inline.
    assert not re.search(r"<(script|link)[^>]+(src|href)=", page)
    assert manifest["thumbnails"] == manifest["html_points"] == len(rows)
    assert page.count("data:image/webp;base64,") == len(rows)
    assert manifest["thumbnail_misses"] == {"unreadable": 0, "timeout": 0, "time_budget": 0}
    side = int(np.sqrt(len(rows)))
    assert manifest["mosaic_images"] == side * side
    with Image.open(Path(out, "map_mosaic.png")) as mosaic:
        assert mosaic.size == (side * 48, side * 48)
    with Image.open(Path(out, "map.png")) as img:
        assert img.size[0] >= 1000
        assert len(img.getcolors(1 << 20) or []) > 10  # a real picture, not a blank canvas
    if method == "umap":
        assert manifest["fit_rows"] == len(rows)


def refused_in_process(argv: list[str], caplog) -> str:
    """What `python -m beam_jobs.reduce_dim` does with these flags, in this process: exit 2 and one line."""
    from beam_jobs import runtime

    caplog.clear()
    assert runtime.main(run, [*argv, *RUNNER]) == 2
    return caplog.text


def test_bad_input_is_refused_before_any_work(tmp_path, clustered, caplog):
    root, *_ = clustered
    out = str(tmp_path / "out")
    text = refused_in_process(["--input", str(tmp_path / "none"), "--output", out, "--method", "pca"], caplog)
    assert "matches no embeddings files" in text
    text = refused_in_process(["--input", root, "--output", out, "--method", "umap", "--pca_dims", "1"], caplog)
    assert "--pca_dims must be 0 (off) or >= 2" in text
    assert not os.path.exists(out)


# --------------------------------------------------------------------------- hostile inputs (issue 16)


def partition_with_bad_rows(base, clean: int = 300) -> tuple[str, np.ndarray, list[str]]:
    """``clean`` finite rows in two files, plus a third file holding 3 NaN/inf rows among 3 good ones.

    Returns (partition directory, the finite rows, the URIs of the bad rows).
    """
    folder = base / "ds=2026-11-20"
    x, _ = clustered_embeddings(clean, 64, clusters=3, seed=5)
    write_embeddings(str(folder), x, "m", files=2)
    extra = np.random.default_rng(1).normal(size=(6, 64)).astype(np.float32) + 1.0
    extra[1, 3], extra[3, 0], extra[4, 63] = np.nan, np.inf, -np.inf
    uris = [f"/extra/img_{i}.jpg" for i in range(6)]
    write_rows(folder / "embeddings-00002-of-00003.parquet", uris, extra.tolist(), ["m"] * 6)
    finite = np.concatenate([x, extra[[0, 2, 5]]])
    return str(folder), finite, [uris[1], uris[3], uris[4]]


@pytest.mark.slow
def test_pca_job_leaves_nan_and_inf_rows_out_of_fit_and_projection(tmp_path):
    folder, finite, bad = partition_with_bad_rows(tmp_path)
    out = str(tmp_path / "out")
    manifest = run(["--input", folder, "--output", out, "--method", "pca", "--block_rows", "4", *RUNNER])
    assert manifest["rows_in_input"] == 306
    assert manifest["rows"] == 303
    assert manifest["rows_dropped_non_finite"] == 3
    assert manifest["non_finite_examples"] == sorted(bad)
    assert manifest["metrics"]["rows_dropped_non_finite"] == 3  # counted by one of the two reads only
    assert manifest["fit_rows"] == 303
    rows = read_projection(out)
    assert len(rows) == 303
    assert not {r["image_uri"] for r in rows} & set(bad)
    assert all(np.isfinite([r["x"], r["y"]]).all() for r in rows)
    # The fit saw exactly the finite rows.
    want = fit_pca(GramStats().add_block(finite), 2)
    np.testing.assert_allclose(manifest["explained_variance_ratio"], want.explained_variance_ratio, rtol=1e-4)
    on_disk = json.loads(Path(out, "manifest.json").read_text())
    assert on_disk["rows_dropped_non_finite"] == 3


@pytest.mark.slow  # umap-learn's numba compilation
def test_umap_job_leaves_nan_and_inf_rows_out(tmp_path):
    folder, _finite, bad = partition_with_bad_rows(tmp_path, clean=60)
    out = str(tmp_path / "out")
    manifest = run(["--input", folder, "--output", out, "--method", "umap", "--pca_dims", "8", *RUNNER])
    assert (manifest["rows"], manifest["rows_dropped_non_finite"], manifest["fit_rows"]) == (63, 3, 63)
    assert manifest["non_finite_examples"] == sorted(bad)
    rows = read_projection(out)
    assert len(rows) == 63
    assert all(np.isfinite([r["x"], r["y"]]).all() for r in rows)


@pytest.mark.slow
def test_pca_job_on_two_rows_its_minimum(tmp_path):
    folder = tmp_path / "ds=2026-11-20"
    folder.mkdir()
    write_rows(
        folder / "embeddings-00000-of-00001.parquet",
        ["/a.jpg", "/b.jpg"],
        [[0.0, 1.0, 2.0], [1.0, 0.5, 2.5]],
        ["m"] * 2,
    )
    out = str(tmp_path / "out")
    manifest = run(["--input", str(folder), "--output", out, "--method", "pca", "--no-thumbnails", *RUNNER])
    assert (manifest["rows"], manifest["rows_dropped_non_finite"], manifest["non_finite_examples"]) == (2, 0, [])
    assert manifest["trustworthiness"] is None  # too few rows for a neighbourhood
    assert len(read_projection(out)) == 2
    assert Path(out, "map.png").exists()


def assert_refused(proc, message: str, out: str) -> None:
    """Exit 2, one clear line, no traceback, nothing written."""
    assert proc.returncode == 2, proc.stderr[-3000:]
    assert message in proc.stderr
    assert "Traceback" not in proc.stderr
    assert not os.path.exists(out)


@pytest.mark.slow  # one launch of the job (the process-level contract); the other refusals in process
def test_cli_refuses_truncated_parquet_and_too_few_rows_up_front(tmp_path, clustered, caplog):
    _root, x, _, _ = clustered
    truncated = tmp_path / "trunc" / "ds=2026-11-20"
    paths = write_embeddings(str(truncated), x[:40], "synthetic/a", files=2)
    size = os.path.getsize(paths[1])
    with open(paths[1], "r+b") as handle:
        handle.truncate(size // 2)
    out = str(tmp_path / "out")
    proc = run_cli(MODULE, "--input", str(truncated), "--output", out, "--method", "pca", *RUNNER)
    assert_refused(proc, f"{paths[1]} cannot be read as Parquet (truncated, corrupt or unreadable)", out)

    one = tmp_path / "one" / "ds=2026-11-20"
    write_embeddings(str(one), x[:1], "synthetic/a", files=1)
    text = refused_in_process(["--input", str(one), "--output", out, "--method", "pca"], caplog)
    assert "too few rows for pca: the input holds 1 row(s) of model 'synthetic/a'" in text

    two = tmp_path / "two" / "ds=2026-11-20"
    write_embeddings(str(two), x[:2], "synthetic/a", files=2)
    text = refused_in_process(["--input", str(two), "--output", out, "--method", "umap"], caplog)
    assert "umap needs at least 4" in text
    assert not os.path.exists(out)


@pytest.mark.slow  # a whole run, in this process (runtime.main: what `python -m` runs)
def test_job_fails_with_the_counts_when_every_row_is_nan(tmp_path, caplog):
    folder = tmp_path / "ds=2026-11-20"
    folder.mkdir()
    nan = float("nan")
    write_rows(folder / "embeddings-00000-of-00001.parquet", ["/a", "/b", "/c"], [[nan, 1.0]] * 3, ["m"] * 3)
    out = str(tmp_path / "out")
    refused_in_process(["--input", str(folder), "--output", out, "--method", "pca"], caplog)
    # Only reading every row tells: the fit stage refuses, with the counts (Beam logs its own trace first);
    # the job's last word is that one line.
    last = [r for r in caplog.records if r.levelname == "ERROR"][-1].getMessage()
    assert "no rows left to fit pca: all 3 input row(s) of the model have NaN or inf values" in last
    assert not os.path.exists(out)
    assert os.listdir(tmp_path) == ["ds=2026-11-20"]  # the failed run removed its staging folder
