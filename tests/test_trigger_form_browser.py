"""The trigger form of a live ``make airflow`` (airflow standalone), in headless Chromium, every default untouched.

Airflow 3.3's form counts a param whose type does not allow null as required, and a required param whose
value is '' or None as missing: its Trigger button is then disabled. The REST API accepts the same defaults,
so only a browser shows it. This test starts Airflow as ``make airflow`` does (the Makefile target itself,
on a free port, in a temporary home), opens the DAG page, presses Trigger, checks the form's sections and
that its Trigger button is enabled, presses it, and checks through the REST API that a run was created with
the table's defaults. The network is off (loopback only).
"""

from __future__ import annotations

import json
import os
import signal
import socket
import subprocess
import time
import urllib.request
from datetime import datetime, timedelta
from pathlib import Path

import pytest

from beam_jobs.nightly import params as table
from tests.conftest import ROOT
from tests.support.browser import Browser
from tests.support.ci import requires_chromium

pytestmark = [pytest.mark.slow, requires_chromium]

DAG_ID = "image_embeddings"
SCREENSHOT_ENV = "TRIGGER_FORM_SCREENSHOT"  # where to keep the form's screenshot (docs/screenshots/...)


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def get(base: str, path: str):
    with urllib.request.urlopen(base + path, timeout=30) as response:
        return json.loads(response.read())


@pytest.fixture
def standalone(tmp_path):
    """``make airflow`` with its home and data in tmp_path and its ports free; stopped with its process group."""
    port = free_port()
    home, data = tmp_path / "home", tmp_path / "data"
    env = {
        **os.environ,
        # Every server standalone starts gets a free port (the defaults collide with a second Airflow here).
        "AIRFLOW__API__PORT": str(port),
        "AIRFLOW__API__BASE_URL": f"http://127.0.0.1:{port}",
        "AIRFLOW__CORE__EXECUTION_API_SERVER_URL": f"http://127.0.0.1:{port}/execution/",
        "AIRFLOW__LOGGING__WORKER_LOG_SERVER_PORT": str(free_port()),
        "AIRFLOW__LOGGING__TRIGGER_LOG_SERVER_PORT": str(free_port()),
    }
    log = open(tmp_path / "standalone.log", "wb")  # noqa: SIM115 - closed below
    make = ["make", "--no-print-directory", "airflow", f"AIRFLOW_HOME={home}", f"DATA={data}", "N=4"]
    proc = subprocess.Popen(make, cwd=ROOT, env=env, stdout=log, stderr=subprocess.STDOUT, start_new_session=True)
    base = f"http://127.0.0.1:{port}"
    try:
        deadline = time.monotonic() + 300
        while True:
            assert proc.poll() is None, (tmp_path / "standalone.log").read_text()[-4000:]
            try:
                if get(base, f"/api/v2/dags/{DAG_ID}")["dag_id"] == DAG_ID:
                    break
            except (OSError, KeyError, ValueError):
                pass
            assert time.monotonic() < deadline, (tmp_path / "standalone.log").read_text()[-4000:]
            time.sleep(2)
        yield base, data
    finally:
        os.killpg(proc.pid, signal.SIGTERM)
        try:
            proc.wait(timeout=60)
        except subprocess.TimeoutExpired:
            os.killpg(proc.pid, signal.SIGKILL)
            proc.wait(timeout=10)
        log.close()


def click_text(browser: Browser, selector: str, text: str) -> None:
    """A real mouse click on the element of ``selector`` whose text is ``text`` (the form's React handlers)."""
    where = browser.wait_for(
        f"""(() => {{
          const all = [...document.querySelectorAll({json.dumps(selector)})];
          const e = all.find(x => x.innerText.trim() === {json.dumps(text)});
          if (!e) return null;
          const r = e.getBoundingClientRect();
          return [r.x + r.width / 2, r.y + r.height / 2];
        }})()""",
        timeout=60,
    )
    browser.click(*where)


DIALOG_TRIGGER = "[...document.querySelectorAll('[role=dialog] button')].find(x => x.innerText.trim() === 'Trigger')"


def test_the_trigger_form_triggers_with_every_default_untouched(standalone, tmp_path):
    base, data = standalone
    deployment = table.Deployment(data=str(data), weights="random", roots=[str(data)])
    rows = table.table(deployment)
    with Browser(loopback=True, width=1300, height=1700) as browser:
        browser.open(f"{base}/dags/{DAG_ID}")
        click_text(browser, "button", "Trigger")
        browser.wait_for(f"!!{DIALOG_TRIGGER}", timeout=60)
        # The params come in the table's sections, in its order.
        shown = browser.evaluate("[...document.querySelectorAll('[role=dialog] button')].map(x => x.innerText.trim())")
        assert [s for s in shown if s in table.SECTIONS] == list(table.SECTIONS)
        click_text(browser, "[role=dialog] button", table.NIGHT)
        browser.wait_for(
            "[...document.querySelectorAll('[role=dialog] label')].some(x => x.innerText.includes('Input images'))"
        )
        time.sleep(1)  # the section's opening animation, for the screenshot
        png = browser.screenshot()
        (tmp_path / "trigger-form.png").write_bytes(png)
        if os.environ.get(SCREENSHOT_ENV):
            Path(os.environ[SCREENSHOT_ENV]).write_bytes(png)
        labels = browser.evaluate("[...document.querySelectorAll('[role=dialog] label')].map(x => x.innerText)")
        for param in rows.values():
            assert any(label.startswith(param.title) for label in labels), param.title
        # Nothing is marked invalid, and the form's own Trigger button is enabled.
        invalid = "document.querySelectorAll('[role=dialog] [data-invalid], [role=dialog] [aria-invalid=true]').length"
        assert browser.evaluate(invalid) == 0
        assert browser.evaluate(f"{DIALOG_TRIGGER}.disabled") is False
        before = get(base, f"/api/v2/dags/{DAG_ID}/dagRuns")["dag_runs"]
        click_text(browser, "[role=dialog] button", "Trigger")
        deadline = time.monotonic() + 60
        while not (runs := get(base, f"/api/v2/dags/{DAG_ID}/dagRuns")["dag_runs"])[len(before) :]:
            assert time.monotonic() < deadline, "pressing Trigger created no run"
            time.sleep(1)
    new = [r for r in runs if r["dag_run_id"] not in {b["dag_run_id"] for b in before}]
    (run,) = [r for r in new if r["run_type"] == "manual"]
    # The form sent the defaults it showed: the table's, the deployment's paths filled in.
    conf = run["conf"]
    for name, param in rows.items():
        assert conf[name] == param.default, name
    assert conf["reference"] is None
    assert conf["flexrs_goal"] is None

    # "Unpause on trigger" (ticked by default) also let the scheduler start the latest scheduled night: the
    # one whose day has ended. Its plan reads that day's folder, not the folder of the day it fires on.
    deadline = time.monotonic() + 120
    while not (
        scheduled := [
            r for r in get(base, f"/api/v2/dags/{DAG_ID}/dagRuns")["dag_runs"] if r["run_type"] == "scheduled"
        ]
    ):
        assert time.monotonic() < deadline, "unpausing started no scheduled run"
        time.sleep(2)
    (scheduled,) = scheduled
    fired = datetime.fromisoformat(scheduled["data_interval_end"])
    ds = scheduled["logical_date"][:10]
    assert ds == (fired - timedelta(days=1)).strftime("%Y-%m-%d")
    path = f"/api/v2/dags/{DAG_ID}/dagRuns/{scheduled['dag_run_id']}/taskInstances/plan/xcomEntries/input"
    deadline = time.monotonic() + 180
    while True:
        try:
            read = get(base, path)["value"]
            break
        except OSError:
            assert time.monotonic() < deadline, "the scheduled run's plan task did not run"
            time.sleep(2)
    assert read == f"{data}/images/ds={ds}/*"
