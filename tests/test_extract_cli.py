"""End-to-end: `python -m beam_jobs.extract_embeddings` on real images mixed with bad files."""

from __future__ import annotations

import glob
import json
import os
import shutil
from pathlib import Path

import numpy as np
import pyarrow.parquet as pq
import pytest

from beam_jobs.extract_embeddings.outputs import npy_name
from tests.conftest import run_cli

MODULE = "beam_jobs.extract_embeddings"


def read_outputs(out: str) -> tuple[dict, list[dict], list[dict]]:
    manifest = json.loads(Path(out, "manifest.json").read_text())
    rows = []
    for f in sorted(glob.glob(os.path.join(out, "embeddings-*.parquet"))):
        rows += pq.read_table(f).to_pylist()
    failures = []
    for f in sorted(glob.glob(os.path.join(out, "failures-*.jsonl"))):
        failures += [json.loads(line) for line in Path(f).read_text().splitlines() if line.strip()]
    return manifest, rows, failures


@pytest.fixture(scope="module")
def mixed_inputs(sample_dir, edge_dir, tmp_path_factory):
    """Sample photos + every awkward file, in one folder, and a manifest that adds a missing path."""
    folder = str(tmp_path_factory.mktemp("mixed") / "ds=2026-11-20")
    os.makedirs(folder)
    for f in glob.glob(os.path.join(sample_dir, "*")):
        shutil.copy(f, folder)
    _edge_folder, expected = edge_dir
    for f in expected:
        shutil.copy(f, folder)
    expected = {os.path.join(folder, os.path.basename(k)): v for k, v in expected.items()}
    for f in glob.glob(os.path.join(folder, "img_*")):
        expected[f] = "ok"
    missing = os.path.join(folder, "deleted_before_the_run.jpg")
    manifest = os.path.join(os.path.dirname(folder), "manifest.txt")
    with open(manifest, "w") as handle:
        handle.write("\n".join([*sorted(expected), missing, sorted(expected)[0]]) + "\n")  # one duplicate
    return folder, manifest, {**expected, missing: "read/not_found"}


@pytest.fixture(scope="module")
def manifest_run(mixed_inputs, weights_file, tmp_path_factory):
    _, manifest, expected = mixed_inputs
    out = str(tmp_path_factory.mktemp("out") / "embeddings" / "ds=2026-11-20")
    proc = run_cli(
        MODULE,
        "--input_manifest",
        manifest,
        "--output",
        out,
        "--weights",
        weights_file,
        "--run_id",
        "scheduled__2026-11-20",
        "--batch_size",
        "4",
        "--output_format",
        "npy",
    )
    assert proc.returncode == 0, proc.stderr[-3000:]
    return out, expected, proc


@pytest.mark.slow
def test_every_input_is_accounted_exactly_once(manifest_run):
    out, expected, _ = manifest_run
    manifest, rows, failures = read_outputs(out)
    embedded = {r["image_uri"] for r in rows}
    failed = {f["image_uri"]: f"{f['stage']}/{f['error']}" for f in failures}
    assert len(rows) == len(embedded)  # no duplicate rows despite the duplicated manifest line
    assert not embedded & set(failed)
    assert embedded | set(failed) == set(expected)
    assert embedded == {u for u, outcome in expected.items() if outcome == "ok"}
    assert failed == {u: o for u, o in expected.items() if o != "ok"}
    assert manifest["inputs"] == len(expected)
    assert manifest["embedded"] + manifest["failed"] == manifest["inputs"]
    assert manifest["duplicate_inputs"] == 1


@pytest.mark.slow
def test_rows_follow_the_contract(manifest_run, weights_file):
    out, _, _ = manifest_run
    manifest, rows, failures = read_outputs(out)
    assert manifest["model_id"].startswith("resnet50/pool=avg/in=224x224/weights=file-sha256:")
    assert manifest["embedding_dim"] == 2048
    assert manifest["seconds"] > 0
    assert manifest["images_per_second"] > 0
    for row in rows:
        assert len(row["embedding"]) == 2048
        assert np.isfinite(row["embedding"]).all()
        assert row["model_id"] == manifest["model_id"]
        assert row["run_id"] == "scheduled__2026-11-20"
        assert len(row["content_sha256"]) == 64
        assert row["width"] > 0
        assert row["height"] > 0
    rotated = next(r for r in rows if r["image_uri"].endswith("exif_rotated.jpg"))
    assert (rotated["width"], rotated["height"]) == (427, 640)
    for rec in failures:
        assert set(rec) >= {"image_uri", "stage", "error", "message"}
        assert rec["message"]


@pytest.mark.slow
def test_metrics_are_counted(manifest_run):
    out, expected, proc = manifest_run
    metrics = read_outputs(out)[0]["metrics"]
    n_ok = sum(1 for o in expected.values() if o == "ok")
    assert metrics["embedded"] == n_ok
    assert metrics["decoded"] == n_ok
    assert metrics["failed"] == len(expected) - n_ok
    assert metrics["failed_decode_truncated"] == 1
    assert metrics["failed_read_not_found"] == 1
    assert metrics["batch_size"]["max"] <= 4
    assert metrics["decode_ms"]["count"] == n_ok
    assert "extract_embeddings done" in proc.stderr


@pytest.mark.slow
def test_npy_output_one_file_per_image(manifest_run):
    out, _, _ = manifest_run
    _, rows, _ = read_outputs(out)
    npys = glob.glob(os.path.join(out, "npy", "*.npy"))
    assert len(npys) == len(rows)
    first = rows[0]
    vec = np.load(os.path.join(out, "npy", npy_name(first["image_uri"])))
    np.testing.assert_array_equal(vec, np.asarray(first["embedding"], dtype=np.float32))


@pytest.mark.slow
def test_rerun_replaces_the_output_whole(mixed_inputs, weights_file, tmp_path):
    folder, _, _ = mixed_inputs
    out = str(tmp_path / "ds=2026-11-20")
    common = ["--output", out, "--weights", weights_file, "--batch_size", "8"]
    first = run_cli(MODULE, "--input", os.path.join(folder, "*"), "--run_id", "first", "--num_shards", "3", *common)
    assert first.returncode == 0, first.stderr[-3000:]
    assert len(glob.glob(os.path.join(out, "embeddings-*.parquet"))) == 3
    second = run_cli(MODULE, "--input", os.path.join(folder, "img_*.jpg"), "--run_id", "second", *common)
    assert second.returncode == 0, second.stderr[-3000:]
    manifest, rows, failures = read_outputs(out)
    assert {r["run_id"] for r in rows} == {"second"}
    assert manifest["run_id"] == "second"
    assert len(rows) == len(glob.glob(os.path.join(folder, "img_*.jpg")))
    assert failures == []
    assert sorted(os.listdir(out)) == sorted(
        manifest["files"]["embeddings"] + manifest["files"]["failures"] + ["manifest.json"]
    )
    # No staging or trash directories left beside the partition.
    assert os.listdir(tmp_path) == ["ds=2026-11-20"]


@pytest.mark.slow
@pytest.mark.parametrize(
    ("args", "message"),
    [
        (["--input", "/nonexistent/ds=2026-11-20/*.jpg"], "matches no files"),
        (["--input_manifest", "/nonexistent/manifest.txt"], "does not exist"),
        (["--input", "/x/*", "--batch_size", "0"], "--batch_size must be between"),
        (["--input", "/x/*", "--weights", "/nonexistent/w.weights.h5"], "does not exist"),
    ],
)
def test_bad_runs_fail_fast_with_a_clear_message(args, message, tmp_path):
    out = str(tmp_path / "out")
    proc = run_cli(MODULE, "--output", out, "--weights", "random", *args)
    assert proc.returncode == 2
    assert message in proc.stderr
    assert "Traceback" not in proc.stderr
    assert not os.path.exists(out)


@pytest.mark.parametrize(
    ("args", "message"),
    [
        (["--input", "/nonexistent/ds=2026-11-20/*.jpg"], "matches no files"),
        (["--input", "/x/*", "--batch_size", "0"], "--batch_size must be between"),
        (["--input", "/x/*", "--runner", "FnApiRunner", "--detach"], "--detach needs a remote runner"),
    ],
)
def test_usage_problems_exit_2_in_process(args, message, tmp_path, caplog):
    """The fast twin of the CLI test above: runtime.main turns a usage problem into one line and exit 2."""
    from beam_jobs import runtime
    from beam_jobs.extract_embeddings.pipeline import run

    out = str(tmp_path / "out")
    assert runtime.main(run, ["--output", out, "--weights", "random", *args]) == 2
    assert message in caplog.text
    assert not os.path.exists(out)
