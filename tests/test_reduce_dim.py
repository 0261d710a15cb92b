"""reduce_dim as a whole: its flags, and real end-to-end runs (PCA against scikit-learn, UMAP determinism, CLI).

The stages are tested one module at a time in test_reduce_inputs, test_reduce_fit,
test_reduce_outputs, test_reduce_records, test_reduction and test_maps.
"""

from __future__ import annotations

import glob
import json
import os
from pathlib import Path

import numpy as np
import pyarrow.parquet as pq
import pytest
from sklearn.decomposition import PCA

from beam_jobs.config import ConfigError, ReduceConfig, parse_reduce_args
from beam_jobs.reduce_dim.pipeline import run
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
    first = run([*base, *both, "--output", out_a, "--num_shards", "3"])
    run([*base, *both, "--output", out_b])
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
    again = run([*base, "--output", out_a, "--input", root + "/ds=2026-11-20", "--fit_sample_size", "5000"])
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
