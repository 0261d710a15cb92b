"""Airflow's real components on loopback: api-server, scheduler and dag-processor.

One night triggered through the REST API v2, then one backfill of five nights
run side by side (``max_active_runs=5``) with one fixed 2D frame: the four
nights before it (new) and that night again (reprocessed, a late image having
arrived), all run by the scheduler. Every night must end in the same frame,
and each night's index must hold the nights a sequential run's would.

On PostgreSQL, the production metadata database (docker-compose.yaml): a server
the test starts itself from Debian's binaries (initdb into a temporary folder,
loopback port). Where those binaries are missing it runs on SQLite, Airflow's
default, rather than not at all (it ran on both until the suite needed the
minutes; the dag.test() tests run on SQLite); under CI=true it fails instead.

Triggers the nightly DAG through the REST API v2 with a conf, waits for the run
to succeed through the LocalExecutor, checks the outputs and the "Embedding
maps" UI plugin (served by that api-server), then stops every component by its
process group, so nothing outlives the test.
"""

from __future__ import annotations

import contextlib
import glob
import json
import os
import pwd
import shutil
import signal
import socket
import subprocess
import sys
import tempfile
import time
import urllib.error
import urllib.request
import warnings
from datetime import UTC, datetime, timedelta
from pathlib import Path

import pyarrow.parquet as pq
import pytest

from tests.airflow_support import conf_for
from tests.conftest import ROOT
from tests.support.ci import fail_in_ci

DAG_ID = "image_embeddings"
COMPONENTS = ("api-server", "scheduler", "dag-processor")
PASSWORD = "integration-test-only"
SLOTS = 2  # the LocalExecutor's parallelism, and the default pool's size that makes it hold


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


class Airflow:
    """Starts the components in their own process groups; ``stop`` ends each group."""

    def __init__(self, home: Path, env: dict[str, str], port: int):
        self.home, self.env, self.port = home, env, port
        self.base = f"http://127.0.0.1:{port}"
        self.procs: dict[str, subprocess.Popen] = {}
        self.token: str | None = None

    def start(self) -> None:
        airflow = os.path.join(os.path.dirname(sys.executable), "airflow")
        migrate = subprocess.run([airflow, "db", "migrate"], env=self.env, capture_output=True, text=True, timeout=600)
        assert migrate.returncode == 0, migrate.stdout[-3000:] + migrate.stderr[-3000:]
        for name in COMPONENTS:
            args = [airflow, name] + (["--port", str(self.port), "--host", "127.0.0.1"] if name == "api-server" else [])
            log = open(self.home / f"{name}.log", "wb")  # noqa: SIM115 - closed with the process
            self.procs[name] = subprocess.Popen(
                args, env=self.env, stdout=log, stderr=subprocess.STDOUT, cwd=ROOT, start_new_session=True
            )

    def stop(self) -> dict[str, int | None]:
        for proc in self.procs.values():
            if proc.poll() is None:
                os.killpg(proc.pid, signal.SIGTERM)
        deadline = time.monotonic() + 30
        for proc in self.procs.values():
            try:
                proc.wait(timeout=max(deadline - time.monotonic(), 0.1))
            except subprocess.TimeoutExpired:
                os.killpg(proc.pid, signal.SIGKILL)
                proc.wait(timeout=10)
        return {name: p.returncode for name, p in self.procs.items()}

    def group_alive(self, pgid: int) -> bool:
        try:
            os.killpg(pgid, 0)
        except ProcessLookupError:
            return False
        return True

    def logs(self) -> str:
        return "\n".join(f"--- {n}\n" + (self.home / f"{n}.log").read_text()[-3000:] for n in self.procs)

    def request(self, method: str, path: str, body: dict | None = None, auth: bool = True):
        headers = {"Content-Type": "application/json"}
        if auth:
            headers["Authorization"] = f"Bearer {self.token}"
        data = json.dumps(body).encode() if body is not None else None
        req = urllib.request.Request(self.base + path, data=data, method=method, headers=headers)
        with urllib.request.urlopen(req, timeout=30) as resp:
            return resp.status, dict(resp.headers), resp.read()

    def api(self, method: str, path: str, body: dict | None = None) -> dict:
        return json.loads(self.request(method, path, body)[2])

    def wait_until(self, what: str, check, timeout: float, every: float = 2.0):
        deadline = time.monotonic() + timeout
        while time.monotonic() < deadline:
            for name, proc in self.procs.items():
                alive = proc.poll() is None
                assert alive, f"{name} exited with {proc.returncode} while waiting for {what}\n{self.logs()}"
            try:
                result = check()
            except (urllib.error.URLError, ConnectionError, KeyError):
                result = None
            if result:
                return result
            time.sleep(every)
        raise AssertionError(f"timed out after {timeout:.0f}s waiting for {what}\n{self.logs()}")


def postgres_bindir() -> str | None:
    found = shutil.which("initdb") or next(iter(sorted(glob.glob("/usr/lib/postgresql/*/bin/initdb"))[::-1]), None)
    return os.path.dirname(os.path.realpath(found)) if found else None


def postgres_unavailable() -> str | None:
    """Why this machine cannot start a PostgreSQL server for the test, or None."""
    if not postgres_bindir():
        return "PostgreSQL is not installed: apt-get install postgresql"
    if os.geteuid() == 0:
        try:
            pwd.getpwnam("postgres")
        except KeyError:
            return "running as root and there is no 'postgres' user to run the server as (apt-get install postgresql)"
    return None


@contextlib.contextmanager
def postgres_server():
    """A throwaway PostgreSQL on loopback; yields its SQLAlchemy URL, stops it (fast shutdown) after.

    Only where ``postgres_unavailable()`` found no reason against it.
    """
    bindir = postgres_bindir()
    base = tempfile.mkdtemp(prefix="airflow-pg-")
    run_as: list[str] = []
    if os.geteuid() == 0:  # initdb and postgres refuse to run as root
        user = pwd.getpwnam("postgres")
        os.chown(base, user.pw_uid, user.pw_gid)
        run_as = ["runuser", "-u", "postgres", "--"]
    data, port = os.path.join(base, "data"), free_port()
    subprocess.run(
        [*run_as, f"{bindir}/initdb", "-D", data, "-U", "airflow", "-A", "trust", "-E", "UTF8", "--no-sync"],
        check=True,
        capture_output=True,
        timeout=120,
    )
    log = open(os.path.join(base, "postgres.log"), "wb")  # noqa: SIM115 - closed below
    server = subprocess.Popen(
        [*run_as, f"{bindir}/postgres", "-D", data, "-h", "127.0.0.1", "-p", str(port), "-k", base, "-c", "fsync=off"],
        stdout=log,
        stderr=subprocess.STDOUT,
        start_new_session=True,
    )
    try:
        import psycopg2

        deadline = time.monotonic() + 60
        while True:
            try:
                psycopg2.connect(host="127.0.0.1", port=port, user="airflow", dbname="postgres").close()
                break
            except psycopg2.OperationalError:
                assert server.poll() is None, Path(base, "postgres.log").read_text()
                assert time.monotonic() < deadline, "PostgreSQL did not accept connections in 60 s"
                time.sleep(0.5)
        yield f"postgresql+psycopg2://airflow@127.0.0.1:{port}/postgres"
    finally:
        os.killpg(server.pid, signal.SIGINT)  # fast shutdown: ends sessions left open
        server.wait(timeout=60)
        log.close()
        shutil.rmtree(base, ignore_errors=True)


@pytest.fixture
def metadata_db():
    why = postgres_unavailable()
    if why:
        fail_in_ci(why)  # CI tests the production database; a machine without it is a failure there
        warnings.warn(f"live scheduler test on SQLite: {why}", stacklevel=1)
        yield None  # Airflow's default: airflow.db in AIRFLOW_HOME
        return
    with postgres_server() as url:
        yield url


def airflow_env(home: Path, port: int, data: Path, db_url: str | None) -> dict[str, str]:
    """The components' environment (the fixture below and scripts/bench_backfill.py): LocalExecutor with two
    slots, real logins, the API server on ``port``, the deployment's data folder ``data``."""
    env = {
        **os.environ,
        "AIRFLOW_HOME": str(home),
        "AIRFLOW__CORE__DAGS_FOLDER": os.path.join(ROOT, "dags"),
        "AIRFLOW__CORE__PLUGINS_FOLDER": os.path.join(ROOT, "plugins"),
        "AIRFLOW__CORE__LOAD_EXAMPLES": "False",
        "AIRFLOW__CORE__EXECUTOR": "LocalExecutor",
        "AIRFLOW__CORE__PARALLELISM": str(SLOTS),
        # Airflow 3.3's LocalExecutor holds no slot for a task it has taken (apache/airflow#71914), so it runs what
        # the scheduler queued first come, first served; the default pool, which the scheduler enforces, sized to
        # the parallelism is the cap that holds and lets priority weights apply (docs/dag.md, "Backfills").
        "AIRFLOW__CORE__DEFAULT_POOL_TASK_SLOT_COUNT": str(SLOTS),
        # Real logins (not "all admins"), so the test also sees that unauthenticated calls are refused.
        "AIRFLOW__CORE__SIMPLE_AUTH_MANAGER_USERS": "ops:admin",
        "AIRFLOW__CORE__SIMPLE_AUTH_MANAGER_PASSWORDS_FILE": str(home / "passwords.json"),
        "AIRFLOW__API__BASE_URL": f"http://127.0.0.1:{port}",
        "AIRFLOW__API__WORKERS": "1",
        "AIRFLOW__CORE__EXECUTION_API_SERVER_URL": f"http://127.0.0.1:{port}/execution/",
        "AIRFLOW__DAG_PROCESSOR__REFRESH_INTERVAL": "5",
        "AIRFLOW__SCHEDULER__SCHEDULER_HEARTBEAT_SEC": "2",
        "IMAGE_EMBEDDINGS_DATA": str(data),
        "IMAGE_EMBEDDINGS_WEIGHTS": "random",
        "PATH": os.path.dirname(sys.executable) + os.pathsep + os.environ.get("PATH", ""),
    }
    if db_url:
        env["AIRFLOW__DATABASE__SQL_ALCHEMY_CONN"] = db_url
    return env


@pytest.fixture
def airflow(tmp_path, sample_dir, metadata_db):
    home = tmp_path / "airflow"
    home.mkdir()
    (home / "passwords.json").write_text(json.dumps({"ops": PASSWORD}))
    port = free_port()
    env = airflow_env(home, port, tmp_path / "data", metadata_db)
    af = Airflow(home, env, port)
    af.start()
    try:
        yield af
    finally:
        codes = af.stop()
        # Nothing survives: every component's whole process group is gone.
        leftovers = [n for n, p in af.procs.items() if af.group_alive(p.pid)]
        assert not leftovers, f"still running after stop: {leftovers} ({codes})"


def stage(sample_dir: str, root: Path, ds: str, first: int, count: int) -> list[str]:
    folder = root / "images" / f"ds={ds}"
    folder.mkdir(parents=True, exist_ok=True)
    return [shutil.copy(f, folder) for f in sorted(Path(sample_dir).iterdir())[first : first + count]]


def embedded_uris(out: Path, ds: str) -> list[str]:
    folder = out / "embeddings" / f"ds={ds}"
    return sorted(r["image_uri"] for f in folder.glob("embeddings-*.parquet") for r in pq.read_table(f).to_pylist())


def latest_night(now: datetime) -> datetime:
    """The logical date of the run the scheduler creates on unpausing the catchup=False DAG: the start of the
    latest whole '0 3 * * *' data interval (the day that ended before the latest 03:00)."""
    tick = now.replace(hour=3, minute=0, second=0, microsecond=0)
    return (tick if tick <= now else tick - timedelta(days=1)) - timedelta(days=1)


@pytest.mark.slow
def test_trigger_through_rest_api_runs_the_night_on_real_components(airflow, metadata_db, sample_dir, tmp_path):
    af = airflow
    af.wait_until("the API server", lambda: af.request("GET", "/api/v2/monitor/health", auth=False)[0] == 200, 180)
    _, _, body = af.request("POST", "/auth/token", {"username": "ops", "password": PASSWORD}, auth=False)
    af.token = json.loads(body)["access_token"]
    af.wait_until("the DAG to be parsed", lambda: af.api("GET", f"/api/v2/dags/{DAG_ID}")["dag_id"], 180)

    # The run the scheduler itself would start on unpausing gets our conf instead (same logical
    # date), so no second run with default params competes for max_active_runs=1.
    logical = latest_night(datetime.now(UTC))
    ds = logical.strftime("%Y-%m-%d")
    images = tmp_path / "images" / f"ds={ds}"
    images.mkdir(parents=True)
    staged = sorted(shutil.copy(f, images) for f in sorted(Path(sample_dir).iterdir())[:6])
    (images / "broken.jpg").write_bytes(b"not an image at all")
    out = tmp_path / "out"
    # Random weights, PCA, no wait, input "any" (staged just now: test_input_ready covers settling), and no
    # index (test_dag's night covers the index job; this test is about the scheduler).
    conf = conf_for(tmp_path)
    run = af.api(
        "POST",
        f"/api/v2/dags/{DAG_ID}/dagRuns",
        {"logical_date": logical.isoformat(), "conf": conf, "note": "integration test"},
    )
    run_id = run["dag_run_id"]
    af.api("PATCH", f"/api/v2/dags/{DAG_ID}", {"is_paused": False})

    def finished():
        state = af.api("GET", f"/api/v2/dags/{DAG_ID}/dagRuns/{run_id}")["state"]
        return state if state in ("success", "failed") else None

    state = af.wait_until("the run to finish", finished, 480, every=3)
    tis = af.api("GET", f"/api/v2/dags/{DAG_ID}/dagRuns/{run_id}/taskInstances")["task_instances"]
    states = {t["task_id"]: t["state"] for t in tis}
    assert state == "success", f"{states}\n{af.logs()}"
    assert states["reduce"] == states["reduce_done"] == states["publish"] == "success"
    # One (model, method) pair: the scheduler expanded the mapped reduce into one instance.
    assert sorted(t["map_index"] for t in tis if t["task_id"] == "reduce") == [0]
    assert states["compare_models"] == "skipped"  # one model
    runs = af.api("GET", f"/api/v2/dags/{DAG_ID}/dagRuns")["dag_runs"]
    assert [r["dag_run_id"] for r in runs] == [run_id]  # no competing scheduled run

    # Outputs: every staged image embedded and projected; the corrupt one recorded as failed.
    emb = out / "embeddings" / f"ds={ds}"
    rows = [r for f in sorted(emb.glob("embeddings-*.parquet")) for r in pq.read_table(f).to_pylist()]
    assert sorted(r["image_uri"] for r in rows) == staged
    assert {r["run_id"] for r in rows} == {run_id}
    manifest = json.loads((emb / "manifest.json").read_text())
    assert (manifest["inputs"], manifest["embedded"], manifest["failed"]) == (7, 6, 1)
    proj = out / "projections" / "method=pca" / f"ds={ds}"
    projected = [r for f in sorted(proj.glob("projection-*.parquet")) for r in pq.read_table(f).to_pylist()]
    assert sorted(r["image_uri"] for r in projected) == staged
    record = json.loads((out / "runs" / f"ds={ds}" / "run.json").read_text())
    assert record["run_id"] == run_id
    assert record["embeddings"]["embedded"] == 6

    # The published run reached the Asset, and the UI plugin on this api-server shows it.
    events = af.api("GET", "/api/v2/assets/events?limit=10")["asset_events"]
    assert [e["extra"]["run_id"] for e in events if e["source_run_id"] == run_id] == [run_id]
    latest = af.api("GET", "/image-embeddings/api/latest")
    assert [(r["ds"], r["run_id"]) for r in latest] == [(ds, run_id)]
    event = latest[0]["event_id"]
    _, headers, png = af.request("GET", f"/image-embeddings/map.png?event={event}&method=pca")
    assert png.startswith(b"\x89PNG")
    assert png == (proj / "map.png").read_bytes()
    _, headers, page = af.request("GET", f"/image-embeddings/map.html?event={event}&method=pca")
    assert page == (proj / "map.html").read_bytes()
    assert "sandbox" in headers["content-security-policy"]
    _, _, index = af.request("GET", "/image-embeddings/")
    assert ds.encode() in index
    assert f"map.png?event={event}&amp;method=pca".encode() in index
    with pytest.raises(urllib.error.HTTPError) as denied:
        af.request("GET", "/image-embeddings/api/latest", auth=False)
    assert denied.value.code in (401, 403)
    with pytest.raises(urllib.error.HTTPError) as missing:
        af.request("GET", f"/image-embeddings/map.png?event={event}&method=umap")
    assert missing.value.code == 404

    # An asset event made by hand (REST API) naming any file is neither listed nor served.
    (asset,) = af.api("GET", "/api/v2/assets?name_pattern=image_embeddings_maps")["assets"]
    forged_record = {**latest[0], "ds": "2099-01-01", "projections": {"pca": {"map_png": "/etc/passwd"}}}
    forged = af.api("POST", "/api/v2/assets/events", {"asset_id": asset["id"], "extra": forged_record})
    assert [r["ds"] for r in af.api("GET", "/image-embeddings/api/latest")] == [ds]
    with pytest.raises(urllib.error.HTTPError) as refused:
        af.request("GET", f"/image-embeddings/map.png?event={forged['id']}&method=pca")
    assert refused.value.code == 404

    # One backfill of five nights, as `airflow backfill create --reprocess-behavior completed
    # --max-active-runs 5` does (same REST endpoint): the four nights before this one are new; this night
    # already succeeded and a late image has arrived since, so the backfill clears its run and runs it again,
    # which replaces its partition whole. The nights run side by side, with one fixed 2D frame that none of
    # them has yet: the first night fits it, every other one must load it (reduce waits for the night before).
    nights = [logical - timedelta(days=back) for back in (4, 3, 2, 1, 0)]
    days = [n.strftime("%Y-%m-%d") for n in nights]
    expected = {day: sorted(stage(sample_dir, tmp_path, day, 2 * i, 3)) for i, day in enumerate(days[:-1])}
    expected[ds] = sorted(staged + stage(sample_dir, tmp_path, ds, 6, 1))
    frame = {"reference_policy": "fixed", "index": True, "index_window_days": 7}
    started = time.monotonic()
    created = af.api(
        "POST",
        "/api/v2/backfills",
        {"dag_id": DAG_ID, "from_date": nights[0].isoformat(), "to_date": logical.isoformat()}
        | {"dag_run_conf": conf | frame, "max_active_runs": 5, "reprocess_behavior": "completed"},
    )
    af.wait_until("the backfill", lambda: af.api("GET", f"/api/v2/backfills/{created['id']}")["completed_at"], 1500, 3)
    print(f"backfill of 5 nights, max_active_runs=5: {time.monotonic() - started:.0f} s")
    runs = af.api("GET", f"/api/v2/dags/{DAG_ID}/dagRuns?limit=50")["dag_runs"]
    assert {r["logical_date"][:10]: (r["state"], r["run_type"]) for r in runs} == dict.fromkeys(
        expected, ("success", "backfill")
    ), runs
    assert [r["dag_run_id"] for r in runs if r["logical_date"][:10] == ds] == [run_id]  # cleared and re-run
    for night, uris in expected.items():
        assert embedded_uris(out, night) == uris  # one copy of every row, the late image included
    manifest = json.loads((emb / "manifest.json").read_text())
    assert (manifest["inputs"], manifest["embedded"], manifest["failed"]) == (8, 7, 1)
    # One frame: the reference the first night fitted (on itself: no earlier night existed then), and every
    # night's maps name it.
    saved = json.loads((out / "references" / "method=pca" / "fixed" / "reference.json").read_text())
    assert saved["partitions"] == [days[0]]
    for night in days:
        used = json.loads((out / "projections" / "method=pca" / f"ds={night}" / "manifest.json").read_text())
        assert {k: used["reference"][k] for k in ("run_id", "created_at", "partitions")} == {
            k: saved[k] for k in ("run_id", "created_at", "partitions")
        }, night
    # Each night's index holds the nights up to it, as a sequential run's would.
    for i, night in enumerate(days):
        index = json.loads((out / "index" / f"ds={night}" / "manifest.json").read_text())
        assert index["partitions"] == days[: i + 1], night
        record = json.loads((out / "runs" / f"ds={night}" / "run.json").read_text())
        assert record["index"]["partitions"] == index["partitions"]
    # The UI lists the newest published run of each night: the re-run for this one.
    latest = af.api("GET", "/image-embeddings/api/latest")
    assert [r["ds"] for r in latest] == sorted(days, reverse=True)
    assert latest[0]["embeddings"]["embedded"] == 7
    assert latest[0]["event_id"] > event
