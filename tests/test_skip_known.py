"""--skip_known: content embedded before (same bytes, same model_id) gets its stored vector, not a new one.

Fast: the join's stages in TestPipeline (FnApiRunner) on in-memory hashes and real Parquet partitions.
Slow (one): the job run twice as a user runs it, a second night with mostly the same images.
"""

from __future__ import annotations

import glob
import hashlib
import json
import os
import shutil

import apache_beam as beam
import numpy as np
import pyarrow as pa
import pyarrow.parquet as pq
import pytest
from apache_beam.testing.test_pipeline import TestPipeline
from apache_beam.testing.util import assert_that, equal_to

from beam_jobs import storage
from beam_jobs.contract import EMBEDDING_COLUMNS
from beam_jobs.extract_embeddings.decode import FAILURES_TAG, DecodeParams, ReadAndHashFn
from beam_jobs.extract_embeddings.known import (
    COMPUTE_TAG,
    PENDING_TAG,
    REUSED_TAG,
    CopyVectors,
    KnownVectors,
    SplitByKnown,
)
from beam_jobs.partitions import files_beside
from tests.conftest import run_cli

RUNNER_ARGS = ["--runner=FnApiRunner"]
MODEL = "mobilenet_v3_large/avg/224x224/test"


def _write_partition(folder: str, rows: list[dict], row_group_size: int | None = None) -> str:
    os.makedirs(folder, exist_ok=True)
    path = os.path.join(folder, "embeddings-00000-of-00001.parquet")
    table = pa.Table.from_pylist(rows, schema=storage.arrow_schema(EMBEDDING_COLUMNS))
    pq.write_table(table, path, row_group_size=row_group_size)
    return path


def _row(uri: str, sha: str, vector, model_id: str = MODEL) -> dict:
    return {
        "image_uri": uri,
        "embedding": np.asarray(vector, dtype=np.float32).tolist(),
        "model_id": model_id,
        "content_sha256": sha,
        "width": 10,
        "height": 20,
        "run_id": "earlier",
    }


def test_known_vectors_of_this_model_only_as_float32_bytes(tmp_path):
    root = tmp_path / "embeddings"
    _write_partition(
        str(root / "ds=2026-11-19"),
        [_row("/a", "s1", [1.5, 2.25]), _row("/x", "s9", [9, 9], model_id="resnet50/other")],
    )
    _write_partition(str(root / "ds=2026-11-20"), [_row("/a2", "s1", [7, 7]), _row("/b", "s2", [3, 4])])
    files = files_beside(str(root / "ds=2026-11-21"))
    with TestPipeline(argv=RUNNER_ARGS) as p:
        # Tonight holds s1, s2 and s3 (new): only rows with those hashes are read; s9 is the other model's.
        wanted = beam.pvalue.AsSingleton(p | "Tonight" >> beam.Create([{"s1", "s2", "s3", "s9"}]))
        known = p | KnownVectors(files, MODEL, wanted)
        flat = known | beam.MapTuple(lambda sha, v: (sha, v[0], np.frombuffer(v[1], np.float32).tolist(), v[2], v[3]))
        assert_that(
            flat,
            equal_to(
                [
                    ("s1", "ds=2026-11-19", [1.5, 2.25], 10, 20),
                    ("s1", "ds=2026-11-20", [7.0, 7.0], 10, 20),
                    ("s2", "ds=2026-11-20", [3.0, 4.0], 10, 20),
                ]
            ),
        )


def test_only_the_known_rows_tonight_holds_enter_the_join(tmp_path):
    """History grows every night; what the join gets must not: rows whose hash tonight lacks stay on disk."""
    from apache_beam.metrics.metric import MetricsFilter

    from beam_jobs.extract_embeddings.inference import METRICS_NAMESPACE
    from beam_jobs.runtime import pipeline_options

    root = tmp_path / "embeddings"
    rows = [_row(f"/h/{i}", f"old{i}", [i, i]) for i in range(50)] + [_row("/h/match", "s2", [3, 4])]
    _write_partition(str(root / "ds=2026-11-01"), rows, row_group_size=10)  # 6 row groups, one with s2
    _write_partition(str(root / "ds=2026-11-02"), [_row("/h/x", "old0", [0, 0])])
    files = files_beside(str(root / "ds=2026-11-21"))
    p = beam.Pipeline(options=pipeline_options(RUNNER_ARGS))
    wanted = beam.pvalue.AsSingleton(p | "Tonight" >> beam.Create([{"s2", "new"}]))
    known = p | KnownVectors(files, MODEL, wanted) | beam.MapTuple(lambda sha, v: (sha, v[0]))
    assert_that(known, equal_to([("s2", "ds=2026-11-01")]))
    result = p.run()
    result.wait_until_finish()
    found = result.metrics().query(MetricsFilter().with_namespace(METRICS_NAMESPACE))["counters"]
    counters = {c.key.metric.name: c.committed for c in found}
    assert (counters["known_rows_scanned"], counters["known_rows_matched"]) == (52, 1)


def test_split_reuses_known_computes_each_new_content_once_and_copies_it(tmp_path):
    stored = np.array([0.1, 0.2, 0.3], dtype=np.float32)
    tonight = [
        ("known", "/n/a.jpg"),
        ("known", "/n/a-again.jpg"),
        ("new", "/n/b.jpg"),
        ("twice", "/n/c2.jpg"),
        ("twice", "/n/c1.jpg"),
        ("broken", "/n/d1.jpg"),
        ("broken", "/n/d2.jpg"),
    ]
    with TestPipeline(argv=RUNNER_ARGS) as p:
        later = np.array([9, 9, 9], dtype=np.float32).tobytes()
        known = p | "Known" >> beam.Create(
            [("known", ("ds=2026-11-20", later, 4, 5)), ("known", ("ds=2026-11-19", stored.tobytes(), 4, 5))]
        )
        split = {"tonight": p | "Tonight" >> beam.Create(tonight), "known": known} | SplitByKnown(MODEL, "run-2")
        reused = split[REUSED_TAG] | "R" >> beam.Map(
            lambda r: (r["image_uri"], r["embedding"].tobytes(), r["width"], r["run_id"], r["model_id"])
        )
        want = [(u, stored.tobytes(), 4, "run-2", MODEL) for u in ("/n/a.jpg", "/n/a-again.jpg")]
        assert_that(reused, equal_to(want), label="reused")
        assert_that(split[COMPUTE_TAG], equal_to(["/n/b.jpg", "/n/c1.jpg", "/n/d1.jpg"]), label="compute")
        assert_that(split[PENDING_TAG], equal_to([("twice", "/n/c2.jpg"), ("broken", "/n/d2.jpg")]), label="pending")
        # The model computed c1 (d1 failed): c2 gets c1's vector, d2 a record.
        computed = p | "Computed" >> beam.Create(
            [
                {"image_uri": "/n/b.jpg", "content_sha256": "new", "embedding": np.ones(3, np.float32)},
                {"image_uri": "/n/c1.jpg", "content_sha256": "twice", "embedding": np.full(3, 2, np.float32)},
            ]
        )
        copies = {"rows": computed, PENDING_TAG: split[PENDING_TAG]} | CopyVectors("run-2")
        rows = copies["rows"] | "Rows" >> beam.Map(lambda r: (r["image_uri"], r["embedding"].tolist()))
        assert_that(rows, equal_to([("/n/c2.jpg", [2.0, 2.0, 2.0])]), label="copies")
        failed = copies[FAILURES_TAG] | "F" >> beam.Map(lambda r: (r["image_uri"], r["stage"], r["error"]))
        assert_that(failed, equal_to([("/n/d2.jpg", "reuse", "same_content_failed")]), label="failed")


def test_inputs_are_hashed_without_decoding_and_read_failures_recorded(sample_dir, tmp_path):
    good = sorted(glob.glob(os.path.join(sample_dir, "img_*")))[:2]
    missing = str(tmp_path / "gone.jpg")
    params = DecodeParams((224, 224))
    with TestPipeline(argv=RUNNER_ARGS) as p:
        hashed = (
            p
            | beam.Create([*good, missing])
            | beam.ParDo(ReadAndHashFn(params, "r")).with_outputs(FAILURES_TAG, main="hashed")
        )
        sums = hashed.hashed | "Sha" >> beam.MapTuple(lambda sha, uri: (uri, sha))
        want = [(f, hashlib.sha256(open(f, "rb").read()).hexdigest()) for f in good]  # noqa: SIM115
        assert_that(sums, equal_to(want), label="sha")
        bad = hashed[FAILURES_TAG] | "Bad" >> beam.Map(lambda r: (r["image_uri"], r["error"]))
        assert_that(bad, equal_to([(missing, "not_found")]), label="bad")


def _read_rows(folder: str) -> dict[str, dict]:
    table = pq.read_table(glob.glob(os.path.join(folder, "embeddings-*.parquet")))
    return {r["image_uri"]: r for r in table.to_pylist()}


@pytest.mark.slow
def test_second_night_reuses_the_first_nights_vectors_bit_for_bit(sample_dir, tmp_path):
    """Night 1: 6 images. Night 2: 4 of them again under new names, one twice, plus 2 new images."""
    photos = sorted(glob.glob(os.path.join(sample_dir, "img_*")))[:8]
    night1, night2 = tmp_path / "images" / "ds=2026-11-20", tmp_path / "images" / "ds=2026-11-21"
    night1.mkdir(parents=True)
    night2.mkdir(parents=True)
    for f in photos[:6]:
        shutil.copy(f, night1)
    for i, f in enumerate(photos[:4]):
        shutil.copy(f, night2 / f"again_{i}.jpg")
    shutil.copy(photos[0], night2 / "again_0_copy.jpg")
    for f in photos[6:8]:
        shutil.copy(f, night2)
    out = tmp_path / "out" / "embeddings"
    common = ("--model", "mobilenet_v3_large", "--weights", "random", "--batch_size", "4", "--skip_known")
    for night in (night1, night2):
        proc = run_cli(
            "beam_jobs.extract_embeddings",
            "--input",
            str(night / "*"),
            "--output",
            str(out / night.name),
            "--run_id",
            f"scheduled__{night.name}",
            *common,
        )
        assert proc.returncode == 0, proc.stderr[-3000:]
    first = json.loads((out / night1.name / "manifest.json").read_text())
    second = json.loads((out / night2.name / "manifest.json").read_text())
    assert (first["reused"], first["computed"], first["known_partitions"]) == (0, 6, [])
    assert second["inputs"] == second["embedded"] == 7
    assert (second["reused"], second["computed"], second["failed"]) == (5, 2, 0)
    assert second["known_partitions"] == ["ds=2026-11-20"]
    assert second["metrics"]["reused"] == 5
    rows1, rows2 = _read_rows(str(out / night1.name)), _read_rows(str(out / night2.name))
    by_sha = {r["content_sha256"]: r for r in rows1.values()}
    for i in range(4):
        again = rows2[str(night2 / f"again_{i}.jpg")]
        old = by_sha[again["content_sha256"]]
        assert np.array_equal(np.asarray(again["embedding"], np.float32), np.asarray(old["embedding"], np.float32))
        assert again["run_id"] == f"scheduled__{night2.name}"
        assert (again["width"], again["height"]) == (old["width"], old["height"])
    copy = rows2[str(night2 / "again_0_copy.jpg")]
    assert copy["embedding"] == rows2[str(night2 / "again_0.jpg")]["embedding"]
