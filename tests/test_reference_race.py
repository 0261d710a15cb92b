"""Nights started together with one ``--reference DIR --fit_reference``: created once, first writer wins.

What a backfill does with reference_policy=fixed when DIR holds no reducer yet: every night finds none,
fits its own and tries to create DIR. Exactly one publishes; the others take its reducer and project
their night with it, so every night's manifest names the reducer DIR holds afterwards.

Fast: ``create_reference`` from 8 threads at once, locally (the kernel's no-replace rename decides)
and on the in-memory object store (its check-and-write under one lock, as GCS's ifGenerationMatch=0).
Slow: the whole job. Locally 3 ``python -m beam_jobs.reduce_dim`` processes; on the object store 3
in-process runs on threads (``memgs://`` lives in this process's memory, so processes cannot share
it). A gate makes the race certain rather than likely: every run waits for the others before it looks
for the reducer (so all of them fit) and again before it publishes (so all of them race for DIR).
"""

from __future__ import annotations

import glob
import json
import os
import subprocess
import sys
import threading
import time
from concurrent.futures import ThreadPoolExecutor

import numpy as np
import pyarrow.parquet as pq
import pytest

from beam_jobs.reduce_dim import reference
from beam_jobs.reduce_dim.drift import Moments, build_drift_space
from beam_jobs.reduce_dim.reduction import GramStats, fit_pca
from devtools.synthetic import clustered_embeddings, write_embeddings
from tests.conftest import ROOT
from tests.support.objectstore import MemObjectStore

MODEL = "synthetic/a"
NIGHTS = ["2026-11-19", "2026-11-20", "2026-11-21"]
SAME_FRAME = ("run_id", "created_at", "partitions")


@pytest.fixture
def store():
    MemObjectStore.reset()
    yield MemObjectStore
    MemObjectStore.reset()


def _create_at_once(folder: str, writers: int) -> list[tuple[dict, bool]]:
    x, _ = clustered_embeddings(60 * writers, 64, clusters=3, seed=7)
    barrier = threading.Barrier(writers)

    def create(i: int):
        part = x[60 * i : 60 * (i + 1)]
        model = fit_pca(GramStats().add_block(part), 2)
        provenance = {"method": "pca", "model_id": MODEL, "embedding_dim": 64, "partitions": [], "run_id": f"n{i}"}
        barrier.wait()
        return reference.create_reference(folder, model, build_drift_space(part, Moments().add(part)), part, provenance)

    with ThreadPoolExecutor(writers) as pool:
        return list(pool.map(create, range(writers)))


@pytest.mark.parametrize("where", ["local", "object-store"])
def test_writers_at_once_one_publishes_and_all_get_its_record(tmp_path, store, where):
    folder = str(tmp_path / "fixed") if where == "local" else "memgs://bucket/references/fixed"
    results = _create_at_once(folder, 8)
    assert sum(created for _, created in results) == 1
    held = reference.read_info(folder)
    assert all(info == held for info, _ in results)
    assert reference.load_reference(folder).info == held  # every file it names is there, whole
    if where == "local":
        assert os.listdir(tmp_path) == ["fixed"]  # the losers' staging folders went
    else:  # the record and the winner's prefix: the losers removed theirs
        assert {p.removeprefix(folder + "/").split("/")[0] for p in store.names(folder)} == {
            "reference.json",
            held["data"],
        }


# --------------------------------------------------------------------------- the whole job


def _nights(root) -> dict[str, np.ndarray]:
    x, _ = clustered_embeddings(120 * len(NIGHTS), 64, clusters=4, seed=3)
    rows = {}
    for i, ds in enumerate(NIGHTS):
        rows[ds] = x[120 * i : 120 * (i + 1)]
        write_embeddings(str(root / "embeddings" / f"ds={ds}"), rows[ds], MODEL, files=1, prefix=f"n{i}")
    return rows


def _argv(root, ds: str, folder: str) -> list[str]:
    return [
        *("--input", str(root / "embeddings" / f"ds={ds}"), "--output", str(root / "p" / f"ds={ds}")),
        *("--run_id", f"backfill__{ds}", "--method", "pca", "--reference", folder, "--fit_reference"),
        *("--runner", "FnApiRunner", "--no-thumbnails", "--mosaic_grid", "0"),
    ]


def _check_one_frame(root, folder: str, rows: dict[str, np.ndarray], manifests: dict[str, dict]) -> None:
    """Every night names the reducer DIR holds, its coordinates are that reducer's, one run published it."""
    held = reference.load_reference(folder)
    for ds, manifest in manifests.items():
        named = manifest["reference"]
        assert {k: named[k] for k in SAME_FRAME} == {k: held.info[k] for k in SAME_FRAME}, ds
        assert named["dir"] == folder
        files = sorted(glob.glob(str(root / "p" / f"ds={ds}" / "projection-*.parquet")))
        table = pq.read_table(files[0]).to_pylist()
        xy = np.array([[r["x"], r["y"]] for r in sorted(table, key=lambda r: r["image_uri"])])
        np.testing.assert_allclose(xy, held.model.transform(rows[ds]), rtol=1e-4, atol=1e-4)
    modes = sorted(m["reference"]["mode"] for m in manifests.values())
    assert modes == ["fitted"] + ["loaded"] * (len(NIGHTS) - 1)
    # Every run fitted and raced (the gates): one published, the others took its reducer (Beam counters).
    metrics = [m["metrics"] for m in manifests.values()]
    assert sum(m.get("reference_published", 0) for m in metrics) == 1
    assert sum(m.get("reference_taken_from_another_run", 0) for m in metrics) == len(NIGHTS) - 1
    (winner,) = [m for m in manifests.values() if m["reference"]["mode"] == "fitted"]
    assert held.info["run_id"] == winner["run_id"]
    assert held.info["partitions"] == winner["partitions"]


# Runs the job as ``python -m beam_jobs.reduce_dim`` does, with two gates (files in RACE_GATE) that hold
# each run until all RACE_N have reached them: before looking for the reducer, and before publishing.
GATED_JOB = """
import os, runpy, sys, time
from pathlib import Path

gate, n = Path(os.environ["RACE_GATE"]), int(os.environ["RACE_N"])

def wait(step):
    (gate / f"{step}-{os.getpid()}").touch()
    deadline = time.monotonic() + 240
    while len(list(gate.glob(f"{step}-*"))) < n:
        if time.monotonic() > deadline:
            raise SystemExit(f"race gate {step}: fewer than {n} runs arrived")
        time.sleep(0.01)

from beam_jobs.reduce_dim import fit, pipeline

def gated(step, original):
    def call(*args, **kwargs):
        wait(step)
        return original(*args, **kwargs)
    return call

pipeline.plan_frame = gated("plan", pipeline.plan_frame)
fit.create_reference = gated("publish", fit.create_reference)
sys.argv = ["beam_jobs.reduce_dim", *sys.argv[1:]]
runpy.run_module("beam_jobs.reduce_dim", run_name="__main__", alter_sys=True)
"""


@pytest.mark.slow  # 3 reduce_dim processes at once: 40-50 s on 2 cores
def test_three_nights_started_together_locally_end_in_one_frame(tmp_path):
    rows = _nights(tmp_path)
    folder = str(tmp_path / "references" / "method=pca" / "fixed")
    (tmp_path / "gate").mkdir()
    env = {**os.environ, "RACE_GATE": str(tmp_path / "gate"), "RACE_N": str(len(NIGHTS))}
    start = time.monotonic()
    procs = {
        ds: subprocess.Popen(
            [sys.executable, "-c", GATED_JOB, *_argv(tmp_path, ds, folder)],
            cwd=ROOT,
            env=env,
            stdout=subprocess.PIPE,
            stderr=subprocess.STDOUT,
        )
        for ds in NIGHTS
    }
    logs = {ds: proc.communicate(timeout=600)[0].decode(errors="replace") for ds, proc in procs.items()}
    wall = time.monotonic() - start
    for ds, proc in procs.items():
        assert proc.returncode == 0, f"night {ds} exited {proc.returncode}:\n{logs[ds][-3000:]}"
    manifests = {ds: json.loads((tmp_path / "p" / f"ds={ds}" / "manifest.json").read_text()) for ds in NIGHTS}
    _check_one_frame(tmp_path, folder, rows, manifests)
    assert os.listdir(tmp_path / "references" / "method=pca") == ["fixed"]  # no loser's staging left
    print(f"{len(NIGHTS)} processes raced for {folder}: {wall:.1f} s wall")


@pytest.mark.slow  # 3 in-process runs on threads: ~30 s on 2 cores
def test_three_nights_started_together_on_the_object_store_end_in_one_frame(tmp_path, store, monkeypatch):
    from beam_jobs.reduce_dim import fit, pipeline

    rows = _nights(tmp_path)
    folder = "memgs://bucket/references/method=pca/fixed"
    gates = {step: threading.Barrier(len(NIGHTS), timeout=240) for step in ("plan", "publish")}

    def gated(step, original):
        def call(*args, **kwargs):
            gates[step].wait()
            return original(*args, **kwargs)

        return call

    monkeypatch.setattr(pipeline, "plan_frame", gated("plan", pipeline.plan_frame))
    monkeypatch.setattr(fit, "create_reference", gated("publish", fit.create_reference))
    start = time.monotonic()
    with ThreadPoolExecutor(len(NIGHTS)) as pool:
        runs = {ds: pool.submit(pipeline.run, _argv(tmp_path, ds, folder)) for ds in NIGHTS}
        manifests = {ds: run.result(timeout=600) for ds, run in runs.items()}
    wall = time.monotonic() - start
    _check_one_frame(tmp_path, folder, rows, manifests)
    held = reference.read_info(folder)
    assert {p.removeprefix(folder + "/").split("/")[0] for p in store.names(folder)} == {
        "reference.json",
        held["data"],
    }
    assert [path for kind, path in store.log if kind == "create"] == [f"{folder}/reference.json"]
    print(f"{len(NIGHTS)} in-process runs raced for {folder}: {wall:.1f} s wall")
