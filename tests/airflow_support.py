"""Helpers the Airflow-side test modules share: load the DAG, stage a night's images, run the DAG."""

from __future__ import annotations

import contextlib
import glob
import json
import os
import shutil
import socket
import threading
import time
from datetime import UTC, datetime
from pathlib import Path

import pytest

from tests.conftest import ROOT

DAG_FILE = os.path.join(ROOT, "dags", "image_embeddings.py")


def load_dagbag():
    from airflow.dag_processing.dagbag import DagBag

    return DagBag(dag_folder=os.path.join(ROOT, "dags"))


def stage_images(sample_dir: str, root: Path, ds: str, count: int, broken: bool = False) -> list[str]:
    folder = root / "images" / f"ds={ds}"
    folder.mkdir(parents=True, exist_ok=True)
    files = sorted(glob.glob(os.path.join(sample_dir, "*")))[:count]
    for path in files:
        shutil.copy(path, folder)
    if broken:
        (folder / "broken.jpg").write_bytes(b"\xff\xd8\xff\xe0 not really a jpeg")
    return sorted(str(folder / os.path.basename(path)) for path in files)


def conf_for(root: Path, **overrides) -> dict:
    return {
        "input": str(root / "images" / "ds={{ ds }}" / "*"),
        "output_root": str(root / "out"),
        "weights": "random",
        "methods": ["pca"],
        "max_failure_rate": 0.5,
        "input_wait_minutes": 0,
        # The images are staged just before the run: they have not settled (test_input_ready waits for that).
        "input_ready": "any",
        # The index job adds a Beam run per night: on only where a test asks (test_dag's first night).
        "index": False,
        **overrides,
    }


def run_dag(dag, ds: str, conf: dict):
    return dag.test(logical_date=datetime.fromisoformat(ds).replace(tzinfo=UTC), run_conf=conf)


def task_states(dagrun) -> dict[str, str]:
    return {ti.task_id: str(ti.state) for ti in dagrun.get_task_instances()}


class Webhook:
    """A real HTTP server on loopback standing in for the team's chat webhook; ``received`` holds the bodies."""

    def __init__(self) -> None:
        import threading
        from http.server import BaseHTTPRequestHandler, HTTPServer

        received: list[dict] = []

        class Handler(BaseHTTPRequestHandler):
            def do_POST(self):
                received.append(json.loads(self.rfile.read(int(self.headers["Content-Length"]))))
                self.send_response(200)
                self.end_headers()

            def log_message(self, *args):
                pass

        self.received = received
        self.server = HTTPServer(("127.0.0.1", 0), Handler)
        self.url = f"http://127.0.0.1:{self.server.server_port}/hooks/team"
        threading.Thread(target=self.server.serve_forever, daemon=True).start()

    def close(self) -> None:
        self.server.shutdown()


@contextlib.contextmanager
def serve_router(events: list[dict]):
    """The "Embedding maps" router on 127.0.0.1 as the plugin mounts it (minus Airflow's access check), with
    ``events`` standing in for the metadata DB's publish events; yields the base URL."""
    import uvicorn
    from fastapi import FastAPI

    from image_embeddings_airflow import ui

    app = FastAPI()
    app.include_router(ui.router)
    with socket.socket() as probe:
        probe.bind(("127.0.0.1", 0))
        port = probe.getsockname()[1]
    server = uvicorn.Server(uvicorn.Config(app, host="127.0.0.1", port=port, log_level="warning"))
    with pytest.MonkeyPatch.context() as patch:
        patch.setattr(ui, "load_events", lambda event_id=None: [e for e in events if event_id in (None, e["id"])])
        thread = threading.Thread(target=server.run, daemon=True)
        thread.start()
        while not server.started:
            time.sleep(0.05)
        try:
            yield f"http://127.0.0.1:{port}"
        finally:
            server.should_exit = True
            thread.join(10)
