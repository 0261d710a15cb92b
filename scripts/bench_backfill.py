"""Wall time of a 5-night backfill through the live Airflow scheduler: side by side vs one night at a time.

    python scripts/bench_backfill.py                     # modes 1, 5 and 5/capped (~20 min on 2 cores)
    timeout 4400 python scripts/bench_backfill.py --modes 1 5 --timeline 2>&1 | tee /tmp/bench_backfill.log

Modes: ``N`` is ``max_active_runs=N``; ``N/capped`` also sizes Airflow's default pool to the executor's
parallelism, the cap Airflow 3.3's LocalExecutor does not hold itself (apache/airflow#71914), so that the
scheduler hands a free slot to the task with the highest priority weight (the DAG's ``weight_rule="upstream"``:
the night furthest along) instead of the executor running whatever was queued first.

Runs what tests/test_scheduler.py's backfill does, once per mode: a throwaway
PostgreSQL metadata DB (its helpers; SQLite where initdb is missing), then Airflow's api-server, scheduler
and dag-processor (LocalExecutor, core.parallelism=2), and one backfill of the five nights up to the latest
whole night through the REST API v2, with the test's conf (random weights, pca, one fixed 2D frame, the
index on, so reduce and build_index wait for the night before) and the test's nights (3 sample images on
each of the first four nights, 7 and a broken file on the last). Each mode gets a fresh metadata DB and its
own output root over the same staged images, so nothing is reused or short-circuited as completed.

Measured: seconds from the backfill's creation to its ``completed_at`` (polled every 3 s), each DAG run's
queued/start/end and each task's run and queue time from the REST API, and the share of the machine's CPU
busy meanwhile (/proc/stat). Printed with the CPU model and flags (avx2, avx512*, amx*), the
core count and the load average before and after each backfill, since the figures depend on what else the
machine runs. Exits 1 (with the task states) if any night did not succeed.
"""

from __future__ import annotations

import argparse
import contextlib
import json
import os
import re
import shutil
import signal
import sys
import tempfile
import time
from datetime import UTC, datetime, timedelta
from pathlib import Path

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
sys.path.insert(0, ROOT)

# tests.conftest (imported by tests.test_scheduler) points Airflow at a throwaway home and allows the temp folder.
from tests.airflow_support import conf_for  # noqa: E402
from tests.test_scheduler import (  # noqa: E402
    DAG_ID,
    PASSWORD,
    Airflow,
    airflow_env,
    free_port,
    latest_night,
    postgres_server,
    postgres_unavailable,
    stage,
)


def cpu_line() -> str:
    """CPU model, the avx2 / avx512* / amx* flags of /proc/cpuinfo, and the core count."""
    model, flags = "unknown", set()
    with open("/proc/cpuinfo", encoding="utf-8") as handle:
        for line in handle:
            if line.startswith("model name"):
                model = line.split(":", 1)[1].strip()
            elif line.startswith("flags"):
                flags = {f for f in line.split(":", 1)[1].split() if re.fullmatch(r"avx2|avx512\w*|amx\w*", f)}
    return f"{model}; {os.cpu_count()} cores; flags: {' '.join(sorted(flags)) or 'none of avx2/avx512*/amx*'}"


def load() -> str:
    return "/".join(f"{x:.2f}" for x in os.getloadavg())


def cpu_jiffies() -> tuple[int, int]:
    """(busy, total) jiffies of all cores since boot, from /proc/stat: the backfill's CPU use is their delta."""
    with open("/proc/stat", encoding="utf-8") as handle:
        fields = [int(x) for x in handle.readline().split()[1:]]
    idle = fields[3] + fields[4]  # idle + iowait
    return sum(fields) - idle, sum(fields)


def stage_nights(sample_dir: str, images_root: Path, days: list[str]) -> None:
    """The test's nights: 3 images on each of the first four, 6 + a broken file + 1 late image on the last."""
    for i, day in enumerate(days[:-1]):
        stage(sample_dir, images_root, day, 2 * i, 3)
    stage(sample_dir, images_root, days[-1], 0, 7)
    (images_root / "images" / f"ds={days[-1]}" / "broken.jpg").write_bytes(b"not an image at all")


def when(stamp: str | None) -> datetime | None:
    return datetime.fromisoformat(stamp.replace("Z", "+00:00")) if stamp else None


def run_backfill(work: Path, images_root: Path, nights: list[datetime], mode_name: str, timeout: float) -> dict:
    """One backfill of ``nights`` in mode ``N`` (max_active_runs=N) or ``N/capped`` (the same, with the default
    pool sized to the executor's parallelism), on fresh components and a fresh metadata DB."""
    mar, _, capped = mode_name.partition("/")
    mar = int(mar)
    mode = work / mode_name.replace("/", "-")
    home = mode / "airflow"
    home.mkdir(parents=True)
    (home / "passwords.json").write_text(json.dumps({"ops": PASSWORD}))
    out = mode / "out"
    # test_scheduler's backfill conf: its night's (conf_for) with the fixed frame and the index.
    conf = conf_for(images_root, output_root=str(out), reference_policy="fixed", index=True, index_window_days=7)
    why = postgres_unavailable()
    if why:
        print(f"warning: SQLite metadata DB ({why})", flush=True)
    with contextlib.nullcontext(None) if why else postgres_server() as db_url:
        port = free_port()
        env = airflow_env(home, port, mode / "data", db_url)  # the test's, with the pool capped (see the docstring)
        if not capped:
            del env["AIRFLOW__CORE__DEFAULT_POOL_TASK_SLOT_COUNT"]  # Airflow's default pool, 128 slots
        af = Airflow(home, env, port)
        af.start()
        try:
            af.wait_until("the API server", lambda: af.request("GET", "/api/v2/monitor/health", auth=False)[0], 300)
            _, _, body = af.request("POST", "/auth/token", {"username": "ops", "password": PASSWORD}, auth=False)
            af.token = json.loads(body)["access_token"]
            af.wait_until("the DAG to be parsed", lambda: af.api("GET", f"/api/v2/dags/{DAG_ID}")["dag_id"], 300)
            before = load()
            busy0, total0 = cpu_jiffies()
            started = time.monotonic()
            # Created while the DAG is still paused and covering the latest night, so unpausing it (which the
            # scheduler needs to start backfill runs) schedules no competing run of its own.
            created = af.api(
                "POST",
                "/api/v2/backfills",
                {"dag_id": DAG_ID, "from_date": nights[0].isoformat(), "to_date": nights[-1].isoformat()}
                | {"dag_run_conf": conf, "max_active_runs": mar, "reprocess_behavior": "completed"},
            )
            af.api("PATCH", f"/api/v2/dags/{DAG_ID}", {"is_paused": False})
            path = f"/api/v2/backfills/{created['id']}"
            af.wait_until(
                f"the backfill (max_active_runs={mar})", lambda: af.api("GET", path)["completed_at"], timeout, 3
            )
            wall = time.monotonic() - started
            busy1, total1 = cpu_jiffies()
            after = load()
            runs = af.api("GET", f"/api/v2/dags/{DAG_ID}/dagRuns?limit=50&order_by=logical_date")["dag_runs"]
            failed, tasks = {}, []
            for r in runs:
                tis = af.api("GET", f"/api/v2/dags/{DAG_ID}/dagRuns/{r['dag_run_id']}/taskInstances")
                tasks += [{**t, "night": r["logical_date"][:10]} for t in tis["task_instances"]]
                if r["state"] != "success":
                    failed[r["dag_run_id"]] = {t["task_id"]: t["state"] for t in tis["task_instances"]}
        finally:
            af.stop()
    cpu = (busy1 - busy0) / max(1, total1 - total0)  # share of all cores busy during the backfill
    return {"mode": mode_name, "mar": mar, "wall": wall, "before": before, "after": after, "runs": runs} | {
        "failed": failed,
        "out": out,
        "tasks": tasks,
        "cpu": cpu,
    }


def print_runs(result: dict) -> None:
    print(f"\nmode {result['mode']}: per-run (UTC, seconds)")
    print(f"  {'night':<10}  {'state':<8} {'run_type':<9} {'queued':>8} {'start':>8} {'end':>8} {'run s':>6}")
    for r in result["runs"]:
        queued, start, end = when(r.get("queued_at")), when(r.get("start_date")), when(r.get("end_date"))
        dur = f"{(end - start).total_seconds():6.0f}" if start and end else "     -"
        clock = [f"{t:%H:%M:%S}" if t else "-" for t in (queued, start, end)]
        row = f"{r['logical_date'][:10]}  {r['state']:<8} {r['run_type']:<9} {clock[0]:>8} {clock[1]:>8} {clock[2]:>8}"
        print(f"  {row} {dur}")
    starts = [when(r["start_date"]) for r in result["runs"] if r.get("start_date")]
    ends = [when(r["end_date"]) for r in result["runs"] if r.get("end_date")]
    if starts and ends:
        print(f"  first start -> last end: {(max(ends) - min(starts)).total_seconds():.0f} s", flush=True)


def print_tasks(result: dict) -> None:
    """Per task: its mean run time and queue wait over the nights, and what all task runs add up to."""
    by_task: dict[str, list[dict]] = {}
    for t in result["tasks"]:
        if t.get("start_date") and t.get("end_date") and t["state"] == "success":
            by_task.setdefault(t["task_id"], []).append(t)
    print(f"  {'task (successful runs)':<26} {'n':>3} {'mean run s':>10} {'mean queued s':>13}")
    total = 0.0
    for task_id, runs in sorted(by_task.items(), key=lambda kv: min(when(t["start_date"]) for t in kv[1])):
        spans = [(when(t["end_date"]) - when(t["start_date"])).total_seconds() for t in runs]
        waits = [(when(t["start_date"]) - when(t["queued_when"])).total_seconds() for t in runs if t.get("queued_when")]
        total += sum(spans)
        wait = f"{sum(waits) / len(waits):13.1f}" if waits else f"{'-':>13}"
        print(f"  {task_id:<26} {len(runs):>3} {sum(spans) / len(spans):>10.1f} {wait}")
    print(
        f"  task run time, all tasks: {total:.0f} s = {total / result['wall']:.2f} slots busy on average; "
        f"CPU busy {100 * result['cpu']:.0f}% of {os.cpu_count()} cores",
        flush=True,
    )


def print_timeline(result: dict) -> None:
    """Every task run in the order it started: seconds from the first start, night, task, priority weight."""
    runs = [t for t in result["tasks"] if t.get("start_date") and t.get("end_date")]
    if not runs:
        return
    zero = min(when(t["start_date"]) for t in runs)
    print(f"  {'queued':>7} {'start':>7} {'end':>7}  {'night':<10} {'task':<26} {'weight':>6}")
    for t in sorted(runs, key=lambda t: when(t["start_date"])):
        queued = f"{(when(t['queued_when']) - zero).total_seconds():7.0f}" if t.get("queued_when") else f"{'-':>7}"
        start, end = ((when(t[k]) - zero).total_seconds() for k in ("start_date", "end_date"))
        print(f"  {queued} {start:7.0f} {end:7.0f}  {t['night']:<10} {t['task_id']:<26} {t['priority_weight']:>6}")


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument(
        "--modes",
        nargs="+",
        default=["1", "5", "5/capped"],
        help="max_active_runs values, in order; N/capped: also size the default pool to the executor's parallelism",
    )
    parser.add_argument("--timeout", type=float, default=2400, help="seconds to wait for each backfill")
    parser.add_argument("--keep", action="store_true", help="keep the work folder (logs, outputs)")
    parser.add_argument("--timeline", action="store_true", help="print every task run in the order it started")
    args = parser.parse_args()
    # `timeout` sends SIGTERM: end the components and PostgreSQL (the finally blocks) rather than orphan them.
    signal.signal(signal.SIGTERM, lambda *_: sys.exit(143))

    from devtools.samples import SampleSpec, build_sample_images

    work = Path(tempfile.mkdtemp(prefix="bench-backfill-"))
    print(f"CPU: {cpu_line()}")
    print(f"load average (1/5/15 min) at start: {load()}; work folder: {work}", flush=True)
    results = []
    try:
        sample_dir = str(work / "samples" / "images")
        build_sample_images(sample_dir, SampleSpec(n=12, seed=3, min_mp=0.2, max_mp=3.0))  # conftest's sample_dir
        latest = latest_night(datetime.now(UTC))
        nights = [latest - timedelta(days=back) for back in (4, 3, 2, 1, 0)]
        stage_nights(sample_dir, work, [n.strftime("%Y-%m-%d") for n in nights])
        for mode in args.modes:
            print(f"\nbackfill of 5 nights ({nights[0]:%Y-%m-%d}..{latest:%Y-%m-%d}), mode {mode} ...")
            result = run_backfill(work, work, nights, mode, args.timeout)
            results.append(result)
            print(f"backfill of 5 nights, mode {mode}: {result['wall']:.0f} s", flush=True)
            print_runs(result)
            print_tasks(result)
            if args.timeline:
                print_timeline(result)
            if result["failed"] or len(result["runs"]) != len(nights):
                print(f"FAILED: {len(result['runs'])} runs; task states of the failed ones:")
                print(json.dumps(result["failed"], indent=2))
                print(f"logs: {result['out'].parent / 'airflow'}")
                args.keep = True
                return 1
    except BaseException:
        args.keep = True  # the components' logs, for whoever reads the traceback
        print(f"logs kept in {work}", flush=True)
        raise
    finally:
        if not args.keep:
            shutil.rmtree(work, ignore_errors=True)

    print(f"\nCPU: {cpu_line()}")
    sequential = next((r["wall"] for r in results if r["mode"] == "1"), None)
    header = f"{'mode':>10} {'wall s':>7} {'vs 1':>6} {'nights done at (s)':<27} {'CPU busy':>8}"
    print(f"{header} {'load before/after':>30}")
    for r in results:
        ratio = f"{r['wall'] / sequential:6.2f}" if sequential else f"{'-':>6}"
        starts = [when(x["start_date"]) for x in r["runs"] if x.get("start_date")]
        done = sorted((when(x["end_date"]) - min(starts)).total_seconds() for x in r["runs"] if x.get("end_date"))
        nights = " ".join(f"{d:.0f}" for d in done)
        print(
            f"{r['mode']:>10} {r['wall']:>7.0f} {ratio} {nights:<27} {100 * r['cpu']:>7.0f}% "
            f"{r['before'] + ' / ' + r['after']:>30}"
        )
    return 0


if __name__ == "__main__":
    sys.exit(main())
