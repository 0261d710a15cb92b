"""beam_jobs.nightly.store: the store params as the plan checks them, before any job runs, and the Lance step
(run for real on a night's Parquet; the whole DAG publishing to Lance is test_dag's)."""

from __future__ import annotations

import os

import pytest

from beam_jobs.nightly.paths import PlanError
from beam_jobs.nightly.plan import build_plan

DS = "2026-11-20"
OK = {"methods": ["pca"], "runner": "FnApiRunner", "batch_size": 32, "max_failure_rate": 0.1, "weights": "random"}


def plan_for(tmp_path, output_root=None, dataflow=None, **params):
    root = output_root or str(tmp_path / "out")
    return build_plan(
        {**OK, "output_root": root, **params}, DS, "r", str(tmp_path / f"images/ds={DS}/*"), dataflow, roots=None
    )


def test_no_store_by_default_and_lance_defaults_under_the_output_root(tmp_path, monkeypatch):
    monkeypatch.setenv("IMAGE_EMBEDDINGS_ALLOWED_ROOTS", str(tmp_path))
    plan = plan_for(tmp_path)
    assert (plan["store"], plan["store_uri"]) == ("none", None)
    lance = plan_for(tmp_path, store="lance")
    assert lance["store_uri"] == str(tmp_path / "out" / "store")
    elsewhere = plan_for(tmp_path, store="lance", store_uri=str(tmp_path / "shared" / "store") + "/")
    assert elsewhere["store_uri"] == str(tmp_path / "shared" / "store")


def test_a_store_outside_the_allowed_roots_is_refused_with_the_other_problems(tmp_path, monkeypatch):
    monkeypatch.setenv("IMAGE_EMBEDDINGS_ALLOWED_ROOTS", str(tmp_path))
    with pytest.raises(PlanError) as err:
        plan_for(tmp_path, store="lance", store_uri="/etc/store", weights=str(tmp_path / "missing.h5"))
    assert "store_uri '/etc/store'" in str(err.value)
    assert "weights file" in str(err.value)  # every problem at once


def test_bigquery_needs_a_dataset_a_project_and_a_gs_output_root(tmp_path, monkeypatch):
    monkeypatch.setenv("IMAGE_EMBEDDINGS_ALLOWED_ROOTS", f"{tmp_path},gs://acme-out")
    with pytest.raises(PlanError) as err:
        plan_for(tmp_path, store="bigquery")
    text = str(err.value)
    assert "store bigquery needs store_uri 'project.dataset'" in text
    assert "loads the night's Parquet from gs://" in text
    with pytest.raises(PlanError, match="names no project"):
        plan_for(tmp_path, output_root="gs://acme-out/nightly", store="bigquery", store_uri="embeddings_store")
    with pytest.raises(PlanError, match="BigQuery names"):
        plan_for(tmp_path, output_root="gs://acme-out/nightly", store="bigquery", store_uri="acme images.x-y")
    named = plan_for(
        tmp_path, output_root="gs://acme-out/nightly", store="bigquery", store_uri="acme-images.embeddings_store"
    )
    assert (named["bigquery_project"], named["bigquery_dataset"]) == ("acme-images", "embeddings_store")
    assert named["bigquery_index"] == "IVF"
    # A dataset alone belongs to the run's project (the param, or the Dataflow settings the DAG resolved).
    of_project = plan_for(
        tmp_path,
        output_root="gs://acme-out/nightly",
        store="bigquery",
        store_uri="embeddings_store",
        project="acme-batch",
        bigquery_index="TREE_AH",
    )
    assert (of_project["bigquery_project"], of_project["bigquery_index"]) == ("acme-batch", "TREE_AH")


def test_kubeflow_refuses_bigquery_before_anything_runs(tmp_path, monkeypatch):
    """The Kubeflow plan step (plan_step) has no BigQuery operators: it says where that store is published."""
    from beam_jobs.nightly import params as trigger_params
    from beam_jobs.nightly.steps import plan_step

    monkeypatch.setenv("IMAGE_EMBEDDINGS_ALLOWED_ROOTS", f"{tmp_path},gs://acme-out")
    params = {
        **trigger_params.defaults(),
        "input": f"{tmp_path}/images/ds={{{{ ds }}}}/*",
        "output_root": "gs://acme-out/nightly",
        "weights": "random",
        "store": "bigquery",
        "store_uri": "acme-images.embeddings_store",
    }
    with pytest.raises(PlanError, match=r"store 'bigquery' is published by the Airflow DAG .* none, lance"):
        plan_step(params, DS, "kfp-run")
    assert (
        plan_step({**params, "store": "lance", "store_uri": "gs://acme-out/store"}, DS, "kfp-run")["store"] == "lance"
    )


def test_store_night_publishes_every_model_with_its_own_coordinates(tmp_path, monkeypatch):
    """A two-model night (real Parquet, as the jobs write it) into a real Lance store, each model's rows with
    its own map's x; published twice, each date is there once."""
    import lancedb
    import numpy as np
    import pyarrow as pa
    import pyarrow.parquet as pq

    from beam_jobs.contract import PROJECTION_COLUMNS, embeddings_dir
    from beam_jobs.nightly.store import store_night
    from beam_jobs.publish_store.config import table_name
    from beam_jobs.storage import arrow_schema
    from devtools.synthetic import clustered_embeddings, write_embeddings

    monkeypatch.setenv("IMAGE_EMBEDDINGS_ALLOWED_ROOTS", str(tmp_path))
    plan = plan_for(tmp_path, store="lance", models=["resnet50", "mobilenet_v3_large"])
    ids = {"resnet50": "resnet50/test", "mobilenet_v3_large": "mobilenet/test"}
    for i, (name, mid) in enumerate(ids.items()):
        vectors, _ = clustered_embeddings(30, 64 + 32 * i, clusters=3, seed=i)
        (path,) = write_embeddings(str(tmp_path / name), vectors, mid, files=1, prefix=name)
        os.makedirs(embeddings_dir(plan["output_root"], DS), exist_ok=True)
        os.rename(path, os.path.join(embeddings_dir(plan["output_root"], DS), f"embeddings-0000{i}-of-00002.parquet"))
        (folder,) = [r["dir"] for r in plan["reductions"] if r["model"] == name]
        n = np.arange(30, dtype=np.float32) + 100 * i  # each model's own x
        columns = [[f"/synthetic/{name}/img_{j:07d}.jpg" for j in range(30)], n, -n, ["pca"] * 30, [mid] * 30]
        columns += [[DS] * 30, ["reduce"] * 30]
        table = pa.Table.from_arrays([pa.array(c) for c in columns], schema=arrow_schema(PROJECTION_COLUMNS))
        os.makedirs(folder)
        pq.write_table(table, os.path.join(folder, "projection-00000-of-00001.parquet"))

    for _ in range(2):
        result = store_night(plan)
    assert result["store_uri"] == str(tmp_path / "out" / "store")
    db = lancedb.connect(result["store_uri"])
    for i, (name, mid) in enumerate(ids.items()):
        rows = db.open_table(table_name(mid)).to_arrow().to_pylist()
        assert len(rows) == 30  # once, after two publishes
        assert {r["image_uri"]: r["pca_x"] for r in rows} == {
            f"/synthetic/{name}/img_{j:07d}.jpg": j + 100.0 * i for j in range(30)
        }
    assert store_night({**plan, "store": "none"}) == {"store": "none"}
