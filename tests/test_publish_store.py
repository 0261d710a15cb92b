"""The Lance store (beam_jobs.publish_store, beam_jobs.store_search): real Lance datasets in a temp folder, fed real
Parquet partitions in the extraction's format (devtools.synthetic) and a projections partition in reduce_dim's.

Two nights and a re-run of the first: per date the rows equal the night's, no (image_uri, ds) twice, each publish
one commit, a stored vector's nearest row is itself (through the IVF index past the threshold), and the
search command answers from the store. Refusals (another model_id, another vector length) write nothing. Two
publishes of different dates at once both land, as threads forced to commit together and as two processes.
"""

from __future__ import annotations

import json
import os
import subprocess
import sys
import threading

import numpy as np
import pyarrow as pa
import pyarrow.compute as pc
import pyarrow.parquet as pq
import pytest

from beam_jobs.config import UsageError
from beam_jobs.contract import PROJECTION_COLUMNS
from beam_jobs.publish_store.config import DEFAULT_INDEX_TYPE as INDEX
from beam_jobs.storage import arrow_schema
from devtools.synthetic import clustered_embeddings, write_embeddings
from tests.conftest import ROOT, run_cli

MODEL = "synthetic/dim=64/seed=0"
TABLE = "synthetic_dim_64_seed_0"
DIM = 64


def night(root, ds: str, rows: int, seed: int, prefix: str, model: str = MODEL, dim: int = DIM, files: int = 2):
    """An embeddings partition of ``rows`` rows (image URIs /synthetic/<prefix>/img_N.jpg) under root/embeddings."""
    folder = os.path.join(root, "embeddings", f"ds={ds}")
    x, _ = clustered_embeddings(rows, dim, clusters=4, seed=seed)
    write_embeddings(folder, x, model, files=files, prefix=prefix, run_id=f"run-{ds}-{seed}")
    return folder, x


def projection(root, ds: str, folder_rows: int, prefix: str, method: str = "pca", model: str = MODEL) -> str:
    """A projections partition as reduce_dim writes it: x = the row's number, y = -x (easy to check)."""
    folder = os.path.join(root, "projections", f"method={method}", f"ds={ds}")
    os.makedirs(folder, exist_ok=True)
    n = np.arange(folder_rows)
    table = pa.Table.from_arrays(
        [
            pa.array([f"/synthetic/{prefix}/img_{j:07d}.jpg" for j in n]),
            pa.array(n.astype(np.float32)),
            pa.array(-n.astype(np.float32)),
            pa.array([method] * folder_rows),
            pa.array([model] * folder_rows),
            pa.array([ds] * folder_rows),
            pa.array(["reduce"] * folder_rows),
        ],
        schema=arrow_schema(PROJECTION_COLUMNS),
    )
    pq.write_table(table, os.path.join(folder, "projection-00000-of-00001.parquet"))
    return folder


def publish(*args: str) -> dict:
    from beam_jobs.publish_store.job import run

    return run(list(args))


def table_of(store: str, name: str = TABLE):
    import lancedb

    return lancedb.connect(store).open_table(name)


def keys(table) -> list[tuple[str, str]]:
    rows = table.to_arrow().select(["image_uri", "ds"]).to_pylist()
    return [(r["image_uri"], r["ds"]) for r in rows]


@pytest.mark.slow
def test_two_nights_and_a_rerun_leave_each_date_once_and_search_answers(tmp_path):
    from beam_jobs.store_search import search_table

    root, store = str(tmp_path), str(tmp_path / "store")
    d1, _x1 = night(root, "2026-11-20", 300, seed=1, prefix="a")
    d2, _x2 = night(root, "2026-11-21", 200, seed=2, prefix="b")
    pca = projection(root, "2026-11-20", 300, prefix="a")
    common = ["--store", "lance", "--store_uri", store, "--index_threshold", "450"]

    first = publish("--input", d1, *common, "--projections", pca)
    entry = first["tables"][MODEL]
    assert (entry["table"], entry["rows"], entry["table_rows"], entry["merge"]["inserted"]) == (TABLE, 300, 300, 300)
    assert entry["projections"] == ["pca"]
    assert "index" not in entry["upkeep"]

    # Night 2 as Airflow runs it: the command, in its own process.
    proc = run_cli("beam_jobs.publish_store", "--input", d2, *common)
    assert proc.returncode == 0, proc.stderr[-3000:]
    table = table_of(store)
    assert table.list_indices()[0].name == f"embedding_{INDEX}_n500"  # 500 rows passed the threshold of 450

    # Night 1 again, as a re-run after the images changed: 250 of the 300 (new vectors), the rest gone.
    before = table.version
    write = tmp_path / "rerun"
    d1_again, x1_again = night(str(write), "2026-11-20", 250, seed=11, prefix="a")
    again = publish("--input", d1_again, *common, "--projections", pca, "--run_id", "rerun")
    merge = again["tables"][MODEL]["merge"]
    assert merge["version"] == before + 1  # the whole replacement is one commit
    assert (merge["updated"], merge["inserted"], merge["deleted"]) == (250, 0, 50)

    table.checkout_latest()
    assert table.count_rows("ds = '2026-11-20'") == 250
    assert table.count_rows("ds = '2026-11-21'") == 200
    assert len(set(keys(table))) == table.count_rows() == 450
    rows = table.to_arrow()
    night1 = rows.filter(pc.equal(rows["ds"], "2026-11-20"))
    assert set(night1["run_id"].to_pylist()) == {"rerun"}
    # x = the row's number in the projection, y = -x; umap never published: null
    first_row = night1.to_pylist()[0]
    number = int(first_row["image_uri"][-11:-4])
    assert (first_row["pca_x"], first_row["pca_y"], first_row["umap_x"]) == (number, -number, None)
    stored = {r["image_uri"]: r["embedding"] for r in night1.select(["image_uri", "embedding"]).to_pylist()}
    np.testing.assert_allclose(stored["/synthetic/a/img_0000007.jpg"], x1_again[7], rtol=1e-6)

    # A stored vector's nearest row is itself, through the IVF index (re-ranked on the full vectors).
    assert table.index_stats(table.list_indices()[0].name).num_unindexed_rows == 0
    sample = rows.take(list(range(0, 450, 15))).to_pylist()
    for row in sample:
        (uri, ds, distance), *_ = search_table(table, np.asarray(row["embedding"], np.float32), 3)
        assert (uri, ds) == (row["image_uri"], row["ds"])
        assert distance < 1e-5

    # The search command, from the store: the query row itself left out, scores descending.
    proc = run_cli(
        "beam_jobs.search", "--store", "lance", "--store_uri", store, "--uri", "/synthetic/b/img_0000003.jpg",
        "-k", "5", "--json",
    )  # fmt: skip
    assert proc.returncode == 0, proc.stderr[-3000:]
    answer = json.loads(proc.stdout)
    assert answer["query"] == {"image_uri": "/synthetic/b/img_0000003.jpg", "ds": "2026-11-21"}
    assert (answer["model_id"], answer["table"], len(answer["neighbours"])) == (MODEL, TABLE, 5)
    assert "/synthetic/b/img_0000003.jpg" not in [n["image_uri"] for n in answer["neighbours"]]
    scores = [n["score"] for n in answer["neighbours"]]
    assert scores == sorted(scores, reverse=True)
    assert scores[0] > 0.9


@pytest.mark.slow
def test_another_model_or_vector_length_is_refused_and_nothing_is_written(tmp_path):
    root, store = str(tmp_path), str(tmp_path / "store")
    d1, _ = night(root, "2026-11-20", 120, seed=1, prefix="a")
    publish("--input", d1, "--store_uri", store)
    table = table_of(store)
    version, files = table.version, sorted(os.listdir(os.path.join(store, f"{TABLE}.lance", "data")))

    other = night(str(tmp_path / "other"), "2026-11-21", 50, seed=2, prefix="o", model="synthetic/other")[0]
    proc = run_cli("beam_jobs.publish_store", "--input", other, "--store_uri", store, "--table", TABLE)
    assert proc.returncode == 2
    assert "'synthetic/other'" in proc.stderr
    assert f"'{MODEL}'" in proc.stderr
    assert "Traceback" not in proc.stderr

    shorter = night(str(tmp_path / "short"), "2026-11-21", 50, seed=3, prefix="s", dim=DIM, files=1)[0]
    # Same model_id, vectors of another length: rewrite the partition's vectors to 32 values.
    path = os.path.join(shorter, "embeddings-00000-of-00001.parquet")
    rows = pq.read_table(path)
    cut = pa.array([v[:32] for v in rows["embedding"].to_pylist()], pa.list_(pa.float32()))
    pq.write_table(rows.set_column(1, "embedding", cut), path)
    with pytest.raises(UsageError, match=r"length 64.*length 32"):
        publish("--input", shorter, "--store_uri", store)

    table.checkout_latest()
    assert table.version == version
    assert table.count_rows() == 120
    assert sorted(os.listdir(os.path.join(store, f"{TABLE}.lance", "data"))) == files


@pytest.mark.slow
def test_two_dates_published_at_the_same_moment_both_land(tmp_path, monkeypatch):
    """Threads: each publish waits for the other before its merge streams, so both commit on the same version and
    Lance must resolve (or this module retry) the conflict. Processes: two commands started together on an empty
    store, both creating the table."""
    from beam_jobs.publish_store import job, rows

    root = str(tmp_path)
    folders = [night(root, f"2026-11-{20 + i}", 150 + 10 * i, seed=i + 1, prefix=f"n{i}")[0] for i in range(4)]
    store = str(tmp_path / "threads")
    publish("--input", folders[0], "--store_uri", store)  # the table exists: the race is the commit's

    together = threading.Barrier(2, timeout=60)
    original = rows.source_batches

    def waiting(*args, **kwargs):
        together.wait()
        yield from original(*args, **kwargs)

    monkeypatch.setattr(rows, "source_batches", waiting)
    results, errors = {}, []

    def one(folder):
        try:
            results[folder] = job.run(["--input", folder, "--store_uri", store])
        except Exception as exc:  # noqa: BLE001 - reported by the test below
            errors.append(exc)

    threads = [threading.Thread(target=one, args=(f,)) for f in folders[1:3]]
    for t in threads:
        t.start()
    for t in threads:
        t.join(timeout=300)
    assert not errors, errors
    table = table_of(store)
    assert [table.count_rows(f"ds = '2026-11-{20 + i}'") for i in range(3)] == [150, 160, 170]
    versions = sorted(r["tables"][MODEL]["merge"]["version"] for r in results.values())
    assert len(set(versions)) == 2  # two commits, one after the other
    monkeypatch.setattr(rows, "source_batches", original)

    fresh = str(tmp_path / "processes")
    env = {**os.environ}
    command = [sys.executable, "-m", "beam_jobs.publish_store", "--store_uri", fresh, "--input"]
    procs = [
        subprocess.Popen([*command, f], cwd=ROOT, env=env, stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True)
        for f in (folders[1], folders[3])
    ]
    for p in procs:
        _, err = p.communicate(timeout=300)
        assert p.returncode == 0, err[-3000:]
    table = table_of(fresh)
    assert (table.count_rows("ds = '2026-11-21'"), table.count_rows("ds = '2026-11-23'")) == (160, 180)
    assert len(set(keys(table))) == table.count_rows() == 340


def test_old_versions_are_cleaned_beyond_the_retention(tmp_path):
    root, store = str(tmp_path), str(tmp_path / "store")
    folder = night(root, "2026-11-20", 60, seed=1, prefix="a")[0]
    for _ in range(5):
        result = publish("--input", folder, "--store_uri", store, "--retain_versions", "2")
    table = table_of(store)
    # Kept: the 2 newest before the last upkeep, and what that upkeep committed itself (compaction).
    assert result["tables"][MODEL]["upkeep"]["versions"] <= 4
    assert len(table.list_versions()) <= 4
    assert table.count_rows() == 60
    with pytest.raises(ValueError, match="no longer exists"):
        table.checkout(1)


@pytest.mark.slow
def test_store_none_bigquery_and_bad_arguments(tmp_path):
    from beam_jobs.publish_store import publish_store_step

    folder = night(str(tmp_path), "2026-11-20", 20, seed=1, prefix="a")[0]
    assert publish_store_step(folder, "none", None, None, None, None) == {"store": "none"}
    with pytest.raises(UsageError, match="BigQuery operators"):
        publish_store_step(folder, "bigquery", None, None, None, None)
    store = str(tmp_path / "store")
    pca = projection(str(tmp_path), "2026-11-20", 20, prefix="a")
    result = publish_store_step(folder, "lance", store, [pca], MODEL, "scheduled__2026-11-20")
    entry = result["tables"][MODEL]
    assert (entry["rows"], entry["projections"]) == (20, ["pca"])
    assert set(table_of(store).to_arrow()["run_id"].to_pylist()) == {"scheduled__2026-11-20"}

    for args, words in (
        (["--input", folder], "--store lance needs --store_uri"),
        (["--input", folder, "--store_uri", store, "--model_id", "nope"], "'nope' has no rows"),
        (["--input", str(tmp_path), "--store_uri", store], "is not a ds=YYYY-MM-DD partition folder"),
        (["--input", str(tmp_path / "ds=2026-11-30"), "--store_uri", store], "matches no embeddings files"),
        (["--input", folder, "--store_uri", store, "--projections", str(tmp_path)], "holds no projection"),
    ):
        proc = run_cli("beam_jobs.publish_store", *args)
        assert proc.returncode == 2, (args, proc.stderr[-2000:])
        assert words in proc.stderr, (args, proc.stderr[-2000:])
        assert "Traceback" not in proc.stderr


def test_table_names_are_safe_and_tell_models_apart():
    from beam_jobs.publish_store.config import table_name

    imagenet = "resnet50/pool=avg/in=224x224/weights=imagenet"
    assert table_name(imagenet) == "resnet50_pool_avg_in_224x224_weights_imagenet"
    long_a, long_b = "savedmodel/fingerprint=" + "1" * 60 + "/a", "savedmodel/fingerprint=" + "1" * 60 + "/b"
    assert table_name(long_a) != table_name(long_b)
    assert max(len(table_name(long_a)), len(table_name(long_b))) <= 64
    assert table_name("3d/model").startswith("m_3d")


def test_the_index_is_retrained_when_the_table_has_grown_4x(tmp_path):
    root, store = str(tmp_path), str(tmp_path / "store")
    names = []
    for i, rows in enumerate((300, 400, 500)):
        folder = night(root, f"2026-11-{20 + i}", rows, seed=i + 1, prefix=f"n{i}")[0]
        upkeep = publish("--input", folder, "--store_uri", store, "--index_threshold", "256")["tables"][MODEL]["upkeep"]
        names.append(upkeep["index_name"])
        assert upkeep["unindexed_rows"] == 0
    # 300 rows: trained; 700: the new rows added to that index; 1,200 >= 4 x 300: trained again, the old one dropped.
    assert names == [f"embedding_{INDEX}_n300", f"embedding_{INDEX}_n300", f"embedding_{INDEX}_n1200"]
    assert upkeep["dropped"] == [f"embedding_{INDEX}_n300"]
    assert [i.name for i in table_of(store).list_indices()] == [f"embedding_{INDEX}_n1200"]
