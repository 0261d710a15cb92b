"""End-to-end: `python -m beam_jobs.extract_embeddings` on real images mixed with bad files."""

from __future__ import annotations

import glob
import json
import os
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


@pytest.mark.slow  # one launch: the process-level contract; each refusal's message is checked in process below
def test_a_bad_run_fails_fast_with_exit_2_and_one_line(tmp_path):
    out = str(tmp_path / "out")
    proc = run_cli(MODULE, "--output", out, "--weights", "random", "--input", "/nonexistent/ds=2026-11-20/*.jpg")
    assert proc.returncode == 2
    assert "matches no files" in proc.stderr
    assert "Traceback" not in proc.stderr
    assert not os.path.exists(out)


@pytest.mark.parametrize(
    ("args", "message"),
    [
        (["--input", "/nonexistent/ds=2026-11-20/*.jpg"], "matches no files"),
        (["--input_manifest", "/nonexistent/manifest.txt"], "does not exist"),
        (["--input", "/x/*", "--batch_size", "0"], "--batch_size must be between"),
        (["--input", "/x/*", "--weights", "/nonexistent/w.weights.h5"], "does not exist"),
        (["--input", "/x/*", "--runner", "FnApiRunner", "--detach"], "--detach needs a remote runner"),
    ],
)
def test_usage_problems_exit_2_in_process(args, message, tmp_path, caplog):
    """runtime.main (what `python -m` runs) turns a usage problem into one logged line and exit 2."""
    from beam_jobs import runtime
    from beam_jobs.extract_embeddings.pipeline import run

    out = str(tmp_path / "out")
    assert runtime.main(run, ["--output", out, "--weights", "random", *args]) == 2
    assert message in caplog.text
    assert "Traceback" not in caplog.text
    assert not os.path.exists(out)
