"""Confined paths at the front door: a run triggered through the REST API v2 with a path outside
IMAGE_EMBEDDINGS_ALLOWED_ROOTS is refused before it exists (the DAG's Param schemas), naming the roots.

Airflow's own FastAPI app in process, on the session's migrated SQLite database with the DAG synced
into it as the dag-processor would; build_plan's checks (symlinks too) are in test_runs.
"""

from __future__ import annotations

import os
import tempfile

import pytest

from tests.airflow_support import load_dagbag

DAG_ID = "image_embeddings"
# Airflow's whole API app with the DAG synced into the database: ~17 s to set up.
pytestmark = pytest.mark.slow


@pytest.fixture(scope="module")
def api(airflow_db):
    from airflow.api_fastapi.app import create_app
    from airflow.dag_processing.bundles.manager import DagBundlesManager
    from airflow.dag_processing.dagbag import sync_bag_to_db
    from fastapi.testclient import TestClient

    with pytest.MonkeyPatch.context() as mp:
        mp.setenv("AIRFLOW__CORE__SIMPLE_AUTH_MANAGER_ALL_ADMINS", "True")
        DagBundlesManager().sync_bundles_to_db()
        sync_bag_to_db(load_dagbag(), "dags-folder", None)
        client = TestClient(create_app())
        token = client.get("/auth/token").json()["access_token"]
        client.headers["Authorization"] = f"Bearer {token}"
        yield client


@pytest.mark.parametrize(
    ("conf", "refused"),
    [
        ({"input": "/etc/*"}, "input"),
        ({"output_root": os.path.join(tempfile.gettempdir(), "..", "etc")}, "output_root"),
        ({"input": "images/ds={{ ds }}/*"}, "input"),  # relative
        ({"output_root": os.path.join(tempfile.gettempdir(), "out\nX")}, "output_root"),
        ({"weights": "/root/model.h5"}, "weights"),
    ],
)
def test_rest_trigger_refuses_paths_outside_the_allowed_roots(api, tmp_path, conf, refused):
    ok = {"input": str(tmp_path / "images" / "*"), "output_root": str(tmp_path / "out"), "weights": "random"}
    response = api.post(f"/api/v2/dags/{DAG_ID}/dagRuns", json={"logical_date": None, "conf": {**ok, **conf}})
    assert response.status_code == 400, response.text
    detail = response.json()["detail"]
    assert f"param {refused}" in detail
    assert tempfile.gettempdir() in detail  # the pattern names the allowed roots
    runs = api.get(f"/api/v2/dags/{DAG_ID}/dagRuns").json()["dag_runs"]
    assert not [r for r in runs if (r["conf"] or {}).get(refused) == conf[refused]]  # no run was created


def test_rest_trigger_takes_paths_under_the_allowed_roots(api, tmp_path):
    conf = {"input": str(tmp_path / "images" / "ds={{ ds }}" / "*"), "output_root": str(tmp_path / "out")}
    response = api.post(f"/api/v2/dags/{DAG_ID}/dagRuns", json={"logical_date": None, "conf": conf})
    assert response.status_code == 200, response.text
    assert response.json()["conf"]["output_root"] == conf["output_root"]
