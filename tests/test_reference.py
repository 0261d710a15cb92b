"""A saved reference reducer (one 2D frame across nights) and drift against it.

Fast: the saved form (round trip, refusals), the drift statistics on synthetic embeddings (a planted
new cluster is flagged; over 20 seeds without a shift the false alarms stay within the nominal level),
and the reduce job in process on small synthetic nights: fit and save on night 1, only transform
night 2, a re-run (backfill) gives the same coordinates.
"""

from __future__ import annotations

import glob
import json
import os
import subprocess
import sys
import time

import numpy as np
import pyarrow.parquet as pq
import pytest

from beam_jobs import publish
from beam_jobs.config import ConfigError, ReduceConfig
from beam_jobs.nightly.frame import drift_alerts
from beam_jobs.reduce_dim import reference
from beam_jobs.reduce_dim.drift import Moments, build_drift_space, drift_stats, mmd_test
from beam_jobs.reduce_dim.reduction import GramStats, fit_pca
from beam_jobs.reduce_dim.reference import check_reference, load_reference, read_info, save_reference
from beam_jobs.runtime import InputError
from devtools.synthetic import clustered_embeddings, write_embeddings

MODEL = "synthetic/a"
ALPHA = 0.05  # the nominal level the false-alarm test holds the alert rule to


def _pca_reference(folder: str, x: np.ndarray, **provenance):
    model = fit_pca(GramStats().add_block(x), 2)
    space = build_drift_space(x, Moments().add(x))
    info = {
        "method": "pca",
        "parameters": {"seed": 0},
        "model_id": MODEL,
        "embedding_dim": x.shape[1],
        "partitions": ["2026-11-19"],
        "seed": 0,
        "run_id": "r1",
        **provenance,
    }
    return model, save_reference(folder, model, space, model.transform(x), info)


def test_reference_round_trip_and_refusals(tmp_path):
    x, _ = clustered_embeddings(300, 64, clusters=4, seed=1)
    folder = str(tmp_path / "ref")
    model, info = _pca_reference(folder, x)
    assert info["version"] == 1
    assert info["partitions"] == ["2026-11-19"]
    assert set(info["files"]) >= {"pca.npz"}
    loaded = load_reference(folder)
    np.testing.assert_array_equal(loaded.model.transform(x), model.transform(x))
    assert loaded.cloud.shape == (300, 2)
    check_reference(loaded.info, folder, "pca", MODEL, 64)
    with pytest.raises(InputError, match=r"model_id 'synthetic/a'.*input holds 'resnet50/x'"):
        check_reference(loaded.info, folder, "pca", "resnet50/x", 64)
    with pytest.raises(InputError, match="length 64; the input's are 2048"):
        check_reference(loaded.info, folder, "pca", MODEL, 2048)
    with pytest.raises(InputError, match="is a pca reducer, not umap"):
        check_reference(loaded.info, folder, "umap", MODEL, 64)
    with pytest.raises(InputError, match="holds no saved reducer"):
        read_info(str(tmp_path / "nothing"))
    record = os.path.join(folder, "reference.json")
    future = {**info, "version": 99}
    with open(record, "w") as handle:
        json.dump(future, handle)
    with pytest.raises(InputError, match=r"format version 99.*reads version 1 only"):
        read_info(folder)
    with open(record, "w") as handle:
        json.dump(info, handle)
    with open(os.path.join(folder, "pca.npz"), "ab") as handle:
        handle.write(b"tampered")
    with pytest.raises(InputError, match=r"pca\.npz has sha256 .* refusing to load it"):
        load_reference(folder)


def _parts(x: np.ndarray, run_id: str):
    model = fit_pca(GramStats().add_block(x), 2)
    provenance = {"method": "pca", "model_id": MODEL, "embedding_dim": x.shape[1], "partitions": [], "run_id": run_id}
    return model, build_drift_space(x, Moments().add(x)), model.transform(x), provenance


@pytest.fixture
def store():
    from tests.support.objectstore import MemObjectStore

    MemObjectStore.reset()
    yield MemObjectStore
    MemObjectStore.reset()


def test_create_reference_locally_first_writer_wins_and_the_loser_leaves_nothing(tmp_path):
    x, _ = clustered_embeddings(200, 64, clusters=3, seed=1)
    folder = str(tmp_path / "references" / "fixed")
    first, created = reference.create_reference(folder, *_parts(x[:100], "night-1"))
    assert created
    assert first["run_id"] == "night-1"
    assert "data" not in first
    before = {name: (tmp_path / "references" / "fixed" / name).read_bytes() for name in os.listdir(folder)}
    second, created = reference.create_reference(folder, *_parts(x[100:], "night-2"))
    assert not created
    assert second == first == read_info(folder)
    assert {name: (tmp_path / "references" / "fixed" / name).read_bytes() for name in os.listdir(folder)} == before
    assert os.listdir(tmp_path / "references") == ["fixed"]  # the loser's staging folder went


def test_create_reference_takes_over_an_empty_folder_and_refuses_a_folder_of_other_files(tmp_path):
    x, _ = clustered_embeddings(100, 64, clusters=3, seed=1)
    empty = tmp_path / "empty"
    empty.mkdir()
    assert reference.create_reference(str(empty), *_parts(x, "r"))[1]
    other = tmp_path / "other"
    other.mkdir()
    (other / "notes.txt").write_text("mine")
    with pytest.raises(InputError, match=r"holds files but no reference\.json"):
        reference.create_reference(str(other), *_parts(x, "r"))
    assert sorted(os.listdir(tmp_path)) == ["empty", "other"]
    assert os.listdir(other) == ["notes.txt"]


def test_create_reference_on_the_object_store_writes_the_record_last_only_if_absent(store):
    x, _ = clustered_embeddings(200, 64, clusters=3, seed=1)
    folder = "memgs://bucket/references/method=pca/fixed"
    first, created = reference.create_reference(folder, *_parts(x[:100], "night-1"))
    assert created
    assert first["data"].startswith("fit-")
    writes = [path for _, path in store.log]
    assert writes[-1] == f"{folder}/reference.json"
    assert store.log[-1][0] == "create"
    assert sorted(writes[:-1]) == sorted(f"{folder}/{first['data']}/{name}" for name in first["files"])
    winner = store.names(folder)
    second, created = reference.create_reference(folder, *_parts(x[100:], "night-2"))
    assert (second, created) == (first, False)
    assert store.names(folder) == winner  # the loser's prefix went, the winner's files are untouched
    np.testing.assert_array_equal(load_reference(folder).model.components, _parts(x[:100], "")[0].components)


def test_a_retried_upload_that_had_landed_counts_as_published(store, monkeypatch):
    """GCS retries a conditional upload; when the first try landed the retry gets 412 on its own object."""
    x, _ = clustered_embeddings(100, 64, clusters=3, seed=1)
    folder = "memgs://bucket/ref"
    real = publish.create_if_absent
    monkeypatch.setattr(publish, "create_if_absent", lambda path, data: real(path, data) and False)
    info, created = reference.create_reference(folder, *_parts(x, "r"))
    assert created
    assert read_info(folder) == info
    assert load_reference(folder).info == info  # its files were kept


def test_save_reference_on_the_object_store_replaces_prefix_record_then_old_files(store):
    x, _ = clustered_embeddings(200, 64, clusters=3, seed=1)
    folder = "memgs://bucket/ref"
    old = save_reference(folder, *_parts(x[:100], "old"))
    store.log.clear()
    new = save_reference(folder, *_parts(x[100:], "new"))
    assert new["data"] != old["data"]
    kinds = [(kind, path.removeprefix(folder + "/").split("/")[0]) for kind, path in store.log]
    record = kinds.index(("put", "reference.json"))
    assert {k for k in kinds[:record]} == {("put", new["data"])}
    assert {k for k in kinds[record + 1 :]} == {("delete", old["data"])}
    assert read_info(folder)["run_id"] == "new"
    assert load_reference(folder).info == new


def test_sweep_removes_what_gone_writers_left_and_keeps_the_published_and_young(store, tmp_path):
    x, _ = clustered_embeddings(100, 64, clusters=3, seed=1)
    folder = "memgs://bucket/ref"
    info, _ = reference.create_reference(folder, *_parts(x, "r"))
    for prefix, age in (("fit-killed", 7 * 3600), ("fit-running", 60)):
        store.put(f"{folder}/{prefix}/pca.npz", b"x")
        data, mime, _ = store.objects[f"{folder}/{prefix}/pca.npz"]
        store.objects[f"{folder}/{prefix}/pca.npz"] = (data, mime, time.time() - age)
    for name in store.names(f"{folder}/{info['data']}/"):  # the published files are old too: kept
        data, mime, _ = store.objects[name]
        store.objects[name] = (data, mime, time.time() - 30 * 3600)
    assert reference.sweep_leftovers(folder) == [f"{folder}/fit-killed"]
    assert [p for p in store.names(folder) if "/fit-running/" in p]
    load_reference(folder)
    # Locally a killed writer's staging folder (its host and pid in the name) goes at once.
    gone = subprocess.Popen([sys.executable, "-c", "pass"])
    gone.wait()
    local = tmp_path / "fixed"
    staging = publish.staging_dir_for(str(local), "k").rsplit("-", 1)[0] + f"-{gone.pid}"
    os.makedirs(staging)
    assert reference.sweep_leftovers(str(local)) == [f"removed {staging}"]
    assert os.listdir(tmp_path) == []


def test_reference_flags_are_checked_together():
    with pytest.raises(ConfigError, match="not both"):
        ReduceConfig(inputs=("/x",), output="/o", method="pca", reference="/r", save_reference="/s").validate()
    with pytest.raises(ConfigError, match="--fit_reference needs --reference"):
        ReduceConfig(inputs=("/x",), output="/o", method="pca", fit_reference=True).validate()


def _null_night(seed: int, rows: int = 300) -> tuple[np.ndarray, np.ndarray]:
    """Reference and tonight drawn from one distribution (one generator, rows shuffled then split)."""
    x, _ = clustered_embeddings(2 * rows, 128, clusters=6, seed=seed)
    order = np.random.default_rng(1000 + seed).permutation(len(x))
    return x[order[:rows]], x[order[rows:]]


def _drift(reference: np.ndarray, tonight: np.ndarray, seed: int) -> dict:
    space = build_drift_space(reference, Moments().add(reference))
    return drift_stats(space, tonight, Moments().add(tonight), seed=seed, permutations=100)


THRESHOLDS = {"drift_p_value": ALPHA, "novelty_rate_alert": 0.1, "mean_shift_alert": 0.5}


def test_a_new_cluster_is_flagged():
    x, labels = clustered_embeddings(900, 128, clusters=7, seed=5)
    old = x[labels != 6]
    old = old[np.random.default_rng(0).permutation(len(old))]
    reference, tonight = old[:300], np.concatenate([old[300:550], x[labels == 6][:80]])
    drift = _drift(reference, tonight, seed=0)
    assert drift["mmd_p_value"] < 0.01
    assert drift["novelty_rate"] > 0.15  # the new cluster's share is 80/330
    assert drift_alerts(drift, THRESHOLDS)


def test_a_drifting_cluster_is_flagged():
    x, labels = clustered_embeddings(600, 128, clusters=6, seed=3)
    order = np.random.default_rng(0).permutation(len(x))
    reference, tonight, tonight_labels = x[order[:300]], x[order[300:]].copy(), labels[order[300:]]
    # One cluster moves a third of the way towards another.
    towards = x[labels == 1].mean(axis=0) - x[labels == 0].mean(axis=0)
    tonight[tonight_labels == 0] += towards / 3
    drift = _drift(reference, tonight, seed=0)
    assert drift["mmd_p_value"] < 0.01
    assert drift_alerts(drift, THRESHOLDS)


def test_false_alarms_over_20_seeds_without_a_shift_stay_within_the_nominal_level():
    alarms = [bool(drift_alerts(_drift(*_null_night(seed), seed=seed), THRESHOLDS)) for seed in range(20)]
    assert sum(alarms) / len(alarms) <= ALPHA, alarms


def test_mmd_p_value_is_a_permutation_p_value():
    rng = np.random.default_rng(0)
    a = rng.normal(size=(50, 3))
    mmd2, p = mmd_test(a, a + 3.0, permutations=99, seed=0)
    assert mmd2 > 0
    assert p == pytest.approx(1 / 100)
    assert mmd_test(a[:1], a, permutations=10)[1] == 1.0


# --------------------------------------------------------------------------- the job, in process


def _projection(out: str) -> dict[str, tuple[float, float]]:
    files = sorted(glob.glob(os.path.join(out, "projection-*.parquet")))
    rows = [r for f in files for r in pq.read_table(f).to_pylist()]
    return {r["image_uri"]: (r["x"], r["y"]) for r in rows}


@pytest.mark.slow  # two in-process reduce runs, 19-31 s under load
def test_nights_share_the_saved_frame_and_backfills_repeat_it(tmp_path):
    from beam_jobs.reduce_dim.pipeline import run

    x, _ = clustered_embeddings(600, 64, clusters=4, seed=2)
    root = tmp_path / "embeddings"
    write_embeddings(str(root / "ds=2026-11-19"), x[:300], MODEL, files=1, prefix="a")
    write_embeddings(str(root / "ds=2026-11-20"), x[300:], MODEL, files=1, prefix="b")
    ref = str(tmp_path / "references" / "method=pca" / "fixed")
    common = ["--method", "pca", "--runner=FnApiRunner", "--no-thumbnails", "--mosaic_grid", "0"]
    night = ["--input", str(root / "ds=2026-11-20"), "--output", str(tmp_path / "p" / "ds=2026-11-20")]
    # Night 2 fits the reference on itself and night 1 (a window of 2 days), then only transforms.
    first = run([*night, "--reference", ref, "--fit_reference", "--fit_window_days", "2", *common])
    assert first["reference"]["mode"] == "fitted"
    assert first["reference"]["partitions"] == ["2026-11-19", "2026-11-20"]
    assert read_info(ref)["fit_rows"] == 600
    coords = _projection(str(tmp_path / "p" / "ds=2026-11-20"))
    again = run([*night, "--reference", ref, "--fit_reference", *common])
    assert again["reference"]["mode"] == "loaded"
    assert again["reference"]["run_id"] == first["run_id"]
    assert _projection(str(tmp_path / "p" / "ds=2026-11-20")) == coords  # a backfill: the same coordinates
    model = load_reference(ref).model
    np.testing.assert_allclose(
        np.array([coords[f"/synthetic/b/img_{j:07d}.jpg"] for j in range(300)]),
        model.transform(x[300:]),
        rtol=1e-5,
        atol=1e-5,
    )
    drift = again["drift"]
    assert drift["rows"] == 300
    assert 0 <= drift["novelty_rate"] <= 1
    assert drift["mmd_p_value"] > 0
    page = (tmp_path / "p" / "ds=2026-11-20" / "map.html").read_text()
    assert "reference (2026-11-19 .. 2026-11-20)" in page
    # Another model's embeddings are refused before any work.
    write_embeddings(str(root / "ds=2026-11-21"), x[:50], "other/model", files=1, prefix="c")
    other = ["--input", str(root / "ds=2026-11-21"), "--output", str(tmp_path / "p" / "x")]
    with pytest.raises(InputError, match="fitted on embeddings of model_id 'synthetic/a'"):
        run([*other, "--reference", ref, *common])


# --------------------------------------------------------------------------- the nightly decisions


def test_plan_resolves_each_policys_reference_folder(tmp_path):
    from beam_jobs.nightly.frame import rolling_anchor
    from beam_jobs.nightly.plan import build_plan, reference_key

    base = {
        "input": "/i/in/*",
        "output_root": str(tmp_path),
        "methods": ["pca", "umap"],
        "runner": "FnApiRunner",
        "weights": "random",
        "model": "resnet50",
        "batch_size": 8,
        "max_failure_rate": 0.1,
    }
    refit = build_plan(base, "2026-11-20", "r", "/i/in/*")
    assert refit["references"] == {"pca": "", "umap": ""}
    assert refit["fit_reference"] is False
    fixed = build_plan({**base, "reference_policy": "fixed"}, "2026-11-20", "r", "/i/in/*")
    assert fixed[reference_key("pca")] == f"{tmp_path}/references/method=pca/fixed"
    assert fixed["fit_reference"] is True
    chosen = build_plan({**base, "reference_policy": "fixed", "reference": "gs://b/ref/"}, "2026-11-20", "r", "/i/in/*")
    assert chosen["references"]["umap"] == "gs://b/ref/method=umap"
    rolling = {**base, "reference_policy": "rolling", "reference_every_days": 7, "reference_window_days": 14}
    nights = [f"2026-11-{day:02d}" for day in range(12, 26)]  # 2026-11-12 is an anchor (day 20769 = 7 x 2967)
    folders = {ds: build_plan(rolling, ds, "r", "/i/in/*")["references"]["pca"] for ds in nights}
    # A new reference every 7 nights; each night (and a backfill of it) finds the one of its anchor.
    assert len(set(folders.values())) == 2
    assert all(folders[ds].endswith(f"ds={rolling_anchor(ds, 7)}") for ds in nights)
    assert rolling_anchor("2026-11-20", 7) <= "2026-11-20"
    assert build_plan(rolling, "2026-11-20", "r", "/i/in/*")["reference_window_days"] == 14


def test_drift_alerts_name_what_crossed_and_zero_switches_one_off():
    drift = {"mmd_p_value": 0.004, "novelty_rate": 0.3, "mean_shift_relative": 0.9}
    assert len(drift_alerts(drift, THRESHOLDS)) == 3
    off = {"drift_p_value": 0, "novelty_rate_alert": 0, "mean_shift_alert": 0}
    assert drift_alerts(drift, off) == []
    assert drift_alerts(None, THRESHOLDS) == []
    calm = {"mmd_p_value": 0.4, "novelty_rate": 0.01, "mean_shift_relative": 0.05}
    assert drift_alerts(calm, THRESHOLDS) == []
