"""The similarity index: faiss wrapper, the build_index job (window, extension, duplicates) and the search CLI.

Fast tier: recall of the index kinds against exact search (100k synthetic vectors at 64-d: the
2048-d figures are in scripts/bench_index.py), exact top-k, ids per night. Slow tier: the job
on synthetic nights (rebuild, then extend), and on real sample photos embedded by the extraction
job (conftest ``manifest_run``), queried with a re-encoded copy through ``python -m beam_jobs.search``.
"""

from __future__ import annotations

import glob
import io
import json
import os

import numpy as np
import pyarrow as pa
import pyarrow.parquet as pq
import pytest

from beam_jobs.build_index import ann
from beam_jobs.contract import DUPLICATES_FILE, INDEX_FILE, INDEX_ROWS, MANIFEST
from devtools.synthetic import clustered_embeddings, write_embeddings
from tests.conftest import run_cli

# --------------------------------------------------------------------------- fast: the index itself


def blocks(n: int, size: int) -> list[slice]:
    """Row blocks of ``size`` (the last may be short), as the build step hands exact_top_k its blocks."""
    return [slice(start, min(n, start + size)) for start in range(0, n, size)]


@pytest.fixture(scope="module")
def vectors_100k():
    """100k rows + 500 queries: 2,000 Gaussian clusters at 64-d whose spread makes neighbours span
    several clusters (one probed list finds ~93% of them, so the recall measurement can fail)."""
    rng = np.random.default_rng(5)
    centres = rng.normal(size=(2000, 64)).astype(np.float32)
    x = centres[rng.integers(0, 2000, size=100_500)] + 0.5 * rng.normal(size=(100_500, 64)).astype(np.float32)
    unit, keep = ann.normalise(x)
    assert keep.all()
    return unit[:100_000], unit[100_000:]


def test_ivf_recall_at_10_against_exact_search_on_100k_vectors(vectors_100k):
    x, queries = vectors_100k
    params = ann.choose_params(len(x), x.shape[1], exact_below=20_000)
    assert params.kind == ann.KIND_IVF
    assert params.nlist >= 256
    index = ann.new_index(params)
    ann.train(index, params, x[np.random.default_rng(0).choice(len(x), params.train_rows, replace=False)])
    ids = np.arange(len(x), dtype=np.int64) + (7 << ann.DAY_SHIFT)
    ann.add(index, ids, x)
    _, found = ann.search(index, queries, 10)
    _, truth = ann.exact_top_k(queries, [(ids[s], x[s]) for s in blocks(len(x), 25_000)], 10)
    recall = ann.recall_at_k(found, truth, 10)
    assert recall >= 0.95, recall
    # Not trivially 1: a single probed list misses neighbours (the measurement can fail).
    _, few = ann.search(index, queries, 10, nprobe=1)
    assert ann.recall_at_k(few, truth, 10) < recall


def test_exact_top_k_matches_a_full_sort():
    rng = np.random.default_rng(1)
    x, _ = ann.normalise(rng.normal(size=(500, 16)))
    q = x[:7]
    ids = np.arange(500, dtype=np.int64) * 3
    scores, found = ann.exact_top_k(q, [(ids[s], x[s]) for s in blocks(500, 64)], 5)
    want = np.argsort(-(q @ x.T), axis=1)[:, :5] * 3
    assert (found == want).all()
    assert np.allclose(scores[:, 0], 1.0, atol=1e-5)  # each query is its own nearest row


def test_small_windows_get_an_exact_index_and_nights_are_id_ranges():
    assert ann.choose_params(19_999, 2048, exact_below=20_000).kind == ann.KIND_FLAT
    big = ann.choose_params(1_000_000, 2048, exact_below=20_000)
    assert big.kind == ann.KIND_IVF
    assert big.storage == "float16"
    assert 1 <= big.nprobe < big.nlist
    low, high = ann.id_range("2026-11-20")
    assert high - low == 1 << 32
    assert ann.id_range("2026-11-21")[0] == high
    index = ann.new_index(ann.choose_params(10, 4, exact_below=100))
    x, _ = ann.normalise(np.eye(4, dtype=np.float32)[[0, 1, 2, 3, 0]] + 0.01)
    ann.add(index, np.array([low, low + 1, high, high + 1, high + 2]), x)
    assert ann.remove_days(index, ["2026-11-21"]) == 3
    assert index.ntotal == 2


# --------------------------------------------------------------------------- slow: the job on synthetic nights


def _night(root: str, ds: str, x: np.ndarray, sha: list[str] | None = None) -> str:
    folder = f"{root}/embeddings/ds={ds}"
    write_embeddings(folder, x, "synthetic/dim=32", files=2, prefix=ds, run_id=f"run-{ds}")
    for path in sorted(glob.glob(f"{folder}/*.parquet")):
        table = pq.read_table(path)
        uris = table.column("image_uri").to_pylist()
        digests = [f"sha-{u}" for u in uris]
        if sha:
            digests = [sha.pop(0) if sha and i == 0 else d for i, d in enumerate(digests)]
        table = table.set_column(table.schema.get_field_index("content_sha256"), "content_sha256", pa.array(digests))
        pq.write_table(table, path)
    with open(f"{folder}/{MANIFEST}", "w") as handle:
        json.dump({"run_id": f"run-{ds}"}, handle)
    return folder


@pytest.fixture(scope="module")
def nights(tmp_path_factory):
    """Three nights of 2,000 synthetic rows; the last night repeats one file of the first (same bytes)
    and holds a near-copy of one of the second night's vectors."""
    root = str(tmp_path_factory.mktemp("index-nights"))
    x, _ = clustered_embeddings(6000, dim=32, clusters=20, seed=11, rank=16)
    x[4000] = x[2500] * 1.0005  # a near-duplicate of night 2's row 500 in night 3
    _night(root, "2026-11-18", x[:2000])
    _night(root, "2026-11-19", x[2000:4000])
    _night(root, "2026-11-20", x[4000:], sha=["sha-/synthetic/2026-11-18/img_0000000.jpg"])
    return root


def _build(root: str, ds: str, *extra: str) -> dict:
    from beam_jobs.build_index.pipeline import run

    return run(
        [
            "--input",
            f"{root}/embeddings/ds={ds}",
            "--output",
            f"{root}/index/ds={ds}",
            "--exact_below",
            "1000",
            "--duplicate_threshold",
            "0.9999",
            "--direct_num_workers",
            "1",
            *extra,
        ]
    )


@pytest.mark.slow
def test_window_rebuild_then_extend(nights):
    first = _build(nights, "2026-11-19", "--window_days", "2")
    assert first["mode"] == "rebuilt"
    assert first["partitions_read"] == ["2026-11-18", "2026-11-19"]
    assert first["rows"] == 4000
    assert first["parameters"]["kind"] == "ivf"
    assert first["recall_at_10"] >= 0.95
    # The next night with a 2-night window: the earlier index is extended, only the new night is read.
    second = _build(nights, "2026-11-20", "--window_days", "2")
    assert second["mode"] == "extended"
    assert second["extended_from"].endswith("index/ds=2026-11-19")
    assert second["partitions_read"] == ["2026-11-20"]
    assert second["rows_read"] == 2000
    assert second["partitions"] == ["2026-11-19", "2026-11-20"]
    assert second["rows"] == 4000
    assert second["recall_at_10"] >= 0.95
    out = f"{nights}/index/ds=2026-11-20"
    rows = pq.read_table(f"{out}/{INDEX_ROWS}")
    assert set(rows.column("ds").to_pylist()) == {"2026-11-19", "2026-11-20"}  # 11-18 left the window
    assert os.path.getsize(f"{out}/{INDEX_FILE}") > 0
    assert not os.path.exists(f"{out}/_parts")
    dups = pq.read_table(f"{out}/{DUPLICATES_FILE}").to_pylist()
    near = [d for d in dups if d["kind"] == "near"]
    assert {(d["image_uri"], d["other_uri"]) for d in near} >= {
        ("/synthetic/2026-11-20/img_0000000.jpg", "/synthetic/2026-11-19/img_0000500.jpg")
    }
    assert second["near_duplicate_pairs"] == len(near)
    # The repeated file's twin (night 11-18) has left the window: no exact duplicate is reported ...
    assert second["exact_duplicate_rows"] == 0
    # ... but a 3-night window holds it (and cannot extend: 11-18 was dropped from the earlier index).
    third = _build(nights, "2026-11-20", "--window_days", "3", "--no-extend")
    assert third["mode"] == "rebuilt"
    assert third["rows"] == 6000
    assert third["exact_duplicate_rows"] == 1
    assert third["exact_duplicate_groups"] == 1
    exact = [d for d in pq.read_table(f"{out}/{DUPLICATES_FILE}").to_pylist() if d["kind"] == "exact"]
    assert exact == [
        {
            "kind": "exact",
            "image_uri": "/synthetic/2026-11-20/img_0000000.jpg",
            "other_uri": "/synthetic/2026-11-18/img_0000000.jpg",
            "other_ds": "2026-11-18",
            "score": 1.0,
        }
    ]


@pytest.mark.slow
def test_bad_input_is_refused_before_any_work(nights, tmp_path):
    from beam_jobs.build_index.pipeline import run
    from beam_jobs.runtime import InputError

    with pytest.raises(InputError, match="not a partition folder"):
        run(["--input", str(tmp_path), "--output", str(tmp_path / "out")])
    with pytest.raises(InputError, match="has no rows"):
        run(["--input", f"{nights}/embeddings/ds=2026-11-18", "--output", str(tmp_path / "o"), "--model_id", "x"])
    assert not os.path.exists(tmp_path / "o")


# --------------------------------------------------------------------------- slow: real photos, the search CLI


def _reencoded(path: str, out: str) -> str:
    from PIL import Image

    with Image.open(path) as img:
        img = img.convert("RGB")
        img = img.resize((max(32, img.width * 3 // 5), max(32, img.height * 3 // 5)), Image.Resampling.BILINEAR)
        buffer = io.BytesIO()
        img.save(buffer, "JPEG", quality=35)
    with open(out, "wb") as handle:
        handle.write(buffer.getvalue())
    return out


@pytest.mark.slow
def test_a_reencoded_photo_finds_its_source(photo_index, mixed_inputs, weights_file, tmp_path):
    out, manifest = photo_index
    assert manifest["parameters"]["kind"] == "flat"
    assert manifest["recall_at_10"] == 1.0
    assert manifest["model_id"].endswith(manifest["model_id"].split("weights=")[1])
    source = sorted(glob.glob(os.path.join(mixed_inputs[0], "img_*")))[3]
    query = _reencoded(source, str(tmp_path / "query.jpg"))
    proc = run_cli("beam_jobs.search", "--index", out, "--image", query, "--weights", weights_file, "-k", "5", "--json")
    assert proc.returncode == 0, proc.stderr[-3000:]
    result = json.loads(proc.stdout)
    uris = [n["image_uri"] for n in result["neighbours"]]
    assert len(uris) == 5
    assert source in uris, (source, result)
    scores = [n["score"] for n in result["neighbours"]]
    assert scores == sorted(scores, reverse=True)
    assert -1.0 <= scores[-1] <= scores[0] <= 1.0
    # An indexed row as the query: itself is left out, its neighbours come back in the table format.
    table = run_cli("beam_jobs.search", "--index", out, "--uri", source, "-k", "3")
    assert table.returncode == 0
    lines = table.stdout.splitlines()
    assert len(lines) == 4  # a header, then one line per neighbour
    assert source not in "\n".join(lines[1:])


@pytest.mark.slow
def test_a_query_with_another_model_is_refused(photo_index, tmp_path):
    out, manifest = photo_index
    query = str(tmp_path / "q.jpg")
    with open(query, "wb") as handle:
        handle.write(b"not even read")
    proc = run_cli("beam_jobs.search", "--index", out, "--image", query, "--weights", "random")
    assert proc.returncode == 2
    assert "model_id mismatch" in proc.stderr
    assert manifest["model_id"] in proc.stderr
    assert "Traceback" not in proc.stderr
    missing = run_cli("beam_jobs.search", "--index", out, "--uri", "/nowhere.jpg")
    assert missing.returncode == 2
    assert "not an indexed image" in missing.stderr
