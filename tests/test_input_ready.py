"""When the night's input counts as complete (param input_ready): settled, marker or any.

The sensor's poke and the Kubeflow step on real files; the clock is moved instead of slept through
(the change times are the files' own). test_dag's slow night adds files while the DAG waits.
"""

from __future__ import annotations

import os
import shutil
import time

import pytest

OK = {"methods": ["pca"], "runner": "FnApiRunner", "model": "resnet50", "batch_size": 8, "max_failure_rate": 0.1}


def later(minutes: float):
    return lambda: time.time() + minutes * 60


def sensor(pattern: str, clock, **kwargs):
    from image_embeddings_airflow.operators import InputFilesSensor

    return InputFilesSensor(task_id="wait_for_input", pattern=pattern, clock=clock, **kwargs)


def test_settled_waits_until_files_stop_arriving(sample_dir, tmp_path):
    photos = sorted(os.listdir(sample_dir))
    night = tmp_path / "ds=2026-11-20"
    night.mkdir()
    for name in photos[:2]:
        shutil.copy(os.path.join(sample_dir, name), night)
    pattern = str(night / "*")
    # Fresh files: not settled yet, even though two match.
    assert not sensor(pattern, later(0), settle_minutes=10).poke({}).is_done
    assert sensor(pattern, later(11), settle_minutes=10).poke({}).xcom_value["files"] == 2
    # A third file lands during the wait, keeping its old modification time (cp -p): it still counts as a
    # change (its ctime, the folder's mtime), so 9 minutes later the input has not settled.
    added = shutil.copy2(os.path.join(sample_dir, photos[2]), night)
    os.utime(added, (time.time() - 86400, time.time() - 86400))
    waiting = sensor(pattern, later(9), settle_minutes=10).poke({})
    assert not waiting.is_done
    fired = sensor(pattern, later(10.5), settle_minutes=10).poke({})
    assert fired.is_done
    assert fired.xcom_value["rule"] == "settled"
    assert fired.xcom_value["files"] == 3
    assert fired.xcom_value["bytes"] == sum(os.path.getsize(night / n) for n in photos[:3])
    # A file removed moves the folder: the count changed, the wait starts again.
    os.remove(night / photos[0])
    assert not sensor(pattern, later(9), settle_minutes=10).poke({}).is_done
    # 'any' starts at the first file (today's behaviour); no file is never ready.
    assert sensor(pattern, later(0), rule="any").poke({}).xcom_value["files"] == 2
    assert not sensor(str(tmp_path / "none" / "*"), later(60), settle_minutes=1).poke({}).is_done


def test_marker_waits_for_the_uploaders_marker(sample_dir, tmp_path):
    from beam_jobs.nightly.paths import PlanError
    from beam_jobs.nightly.plan import build_plan

    night = tmp_path / "ds=2026-11-20"
    night.mkdir()
    shutil.copy(os.path.join(sample_dir, sorted(os.listdir(sample_dir))[0]), night / "a.jpg")
    params = {**OK, "output_root": str(tmp_path / "out"), "weights": "random", "input_ready": "marker"}
    plan = build_plan({**params, "input_marker": "_SUCCESS"}, "2026-11-20", "r", str(night / "*.jpg"))
    assert plan["input_marker"] == str(night / "_SUCCESS")
    wait = sensor(plan["input"], later(0), rule="marker", marker=plan["input_marker"])
    assert not wait.poke({}).is_done
    (night / "_SUCCESS").write_bytes(b"")
    fired = wait.poke({}).xcom_value
    assert (fired["rule"], fired["files"], fired["marker"]) == ("marker", 1, str(night / "_SUCCESS"))
    # A glob that would read the marker as an image is refused before anything waits.
    with pytest.raises(PlanError, match=r"input_marker '_SUCCESS' matches the input glob .* narrow the glob"):
        build_plan({**params, "input_marker": "_SUCCESS"}, "2026-11-20", "r", str(night / "*"))
    with pytest.raises(PlanError, match="must be a plain file name"):
        build_plan({**params, "input_marker": "../x"}, "2026-11-20", "r", str(night / "*.jpg"))
    # The other rules carry no marker.
    assert build_plan({**params, "input_ready": "settled"}, "2026-11-20", "r", str(night / "*"))["input_marker"] is None


def test_timeout_says_which_rule_and_why(tmp_path):
    from airflow.sdk.exceptions import AirflowSensorTimeout

    (tmp_path / "a.jpg").write_bytes(b"x")
    wait = sensor(str(tmp_path / "*.jpg"), later(0), settle_minutes=10, wait_minutes=0, mode="poke")
    with pytest.raises(AirflowSensorTimeout, match=r"not ready by rule 'settled'.*1 file\(s\).*last change 0 s ago"):
        wait.execute({})


def test_kubeflow_step_waits_by_the_same_rule(sample_dir, tmp_path):
    from beam_jobs.nightly.steps import wait_for_input

    night = tmp_path / "ds=2026-11-20"
    night.mkdir()
    photos = sorted(os.listdir(sample_dir))
    shutil.copy(os.path.join(sample_dir, photos[0]), night)
    # A real settle time of 1.2 s: the files' change times are real, so time must pass for real.
    plan = {"input": str(night / "*"), "input_ready": "settled", "input_settle_minutes": 0.02, "input_marker": None}
    naps: list[float] = []

    def nap(seconds: float) -> None:  # while the step sleeps, two more files arrive, one per poke
        naps.append(seconds)
        if len(naps) < 3:
            shutil.copy(os.path.join(sample_dir, photos[len(naps)]), night)
        time.sleep(seconds)

    done = wait_for_input(plan, 1, sleep=nap)
    assert (done["rule"], done["files"]) == ("settled", 3)
    assert len(naps) >= 3  # two arrivals, then at least one quiet poke
    assert naps[0] == 1.0  # twice per settle window (at least a second apart)


@pytest.mark.slow  # one night through dag.test: the sensor reschedules while files arrive (~1-2 min)
def test_files_added_while_the_dag_waits_are_all_embedded(airflow_db, sample_dir, tmp_path):
    import contextlib
    import json
    import sqlite3
    import threading

    import pyarrow.parquet as pq

    from tests.airflow_support import conf_for, load_dagbag, run_dag, stage_images

    ds = "2026-11-07"
    staged = stage_images(sample_dir, tmp_path, ds, 2)
    folder = tmp_path / "images" / f"ds={ds}"
    photos = sorted(os.listdir(sample_dir))
    added: list[str] = []
    added_during_wait: list[str] = []

    def rescheduled() -> bool:
        """The sensor has looked and gone back to wait: read from the metadata database directly, on a
        connection of its own (the ORM session is the run's)."""
        with contextlib.closing(sqlite3.connect(os.path.join(airflow_db, "airflow.db"), timeout=5)) as db:
            query = "SELECT 1 FROM task_instance WHERE dag_id = ? AND task_id = ? AND state = ?"
            return bool(db.execute(query, ("image_embeddings", "wait_for_input", "up_for_reschedule")).fetchall())

    def uploader() -> None:
        """Keeps uploading (a photo every 4 s, then touching the last) until the sensor has looked and gone
        back to wait, then lands one more photo: however long the run takes to reach the sensor, the
        night is still arriving when it first looks."""
        late = [os.path.join(sample_dir, name) for name in photos[2:]]
        deadline = time.monotonic() + 300
        while time.monotonic() < deadline:
            try:
                waiting = rescheduled()
            except sqlite3.OperationalError:  # busy with the run's own writes: look again
                waiting = False
            if waiting:
                added_during_wait.append(shutil.copy(late.pop(0), folder))
                return
            if len(late) > 1:
                added.append(shutil.copy(late.pop(0), folder))
            elif added:
                os.utime(added[-1])
            time.sleep(4)

    dag = load_dagbag().dags["image_embeddings"]
    thread = threading.Thread(target=uploader, daemon=True)
    thread.start()
    # 15 s of quiet (the uploader pauses 4 s at most), poked every 7.5 s.
    conf = conf_for(
        tmp_path,
        input_ready="settled",
        input_settle_minutes=0.25,
        input_wait_minutes=5,
        # The registry's smallest model on TensorFlow: this test is about which files, not the vectors.
        model="mobilenet_v3_large",
        engine="tf",
    )
    dr = run_dag(dag, ds, conf)
    thread.join(timeout=10)
    assert str(dr.state) == "success"
    assert added_during_wait, "the uploader never saw the sensor waiting"
    emb = tmp_path / "out" / "embeddings" / f"ds={ds}"
    uris = sorted(r["image_uri"] for f in emb.glob("embeddings-*.parquet") for r in pq.read_table(f).to_pylist())
    assert uris == sorted(staged + added + added_during_wait)  # every file, the late ones included
    record = json.loads((tmp_path / "out" / "runs" / f"ds={ds}" / "run.json").read_text())
    assert record["input_ready"]["rule"] == "settled"
    assert record["input_ready"]["files"] == len(uris)
    # The same night's cost fields on a local runner: each job's CPU seconds and peak memory, measured.
    extract = record["cost"]["jobs"]["extract_embeddings"]
    assert extract["cpu_seconds"] > 1
    # None when an earlier child of this test process peaked higher (test_cost checks the measure itself).
    assert extract["peak_memory_mb"] is None or extract["peak_memory_mb"] > 100
    assert record["cost"]["usd"] is None  # no Dataflow job, no money
    assert record["cost"]["cpu_seconds_per_1000_images"] > 0
