"""The BigQuery store's operators as rendered (image_embeddings_airflow.bigquery). BigQuery cannot run here: these
tests check what would be sent to it (job configurations, schema, the partition decorator of each date, SQL text).
No BigQuery-dialect parser is in the lock (sqlglot is not), so the SQL is compared with reviewed golden files in
tests/fixtures/bigquery_*.sql; a change to the SQL is a change to those files, reviewed like code.
"""

from __future__ import annotations

import os

import pytest

from beam_jobs.publish_store.config import table_name
from tests.conftest import ROOT

PROJECT, DATASET = "acme-images", "embeddings_store"
MODEL = "resnet50/pool=avg/in=224x224/weights=imagenet"
MODEL_TABLE = "resnet50_pool_avg_in_224x224_weights_imagenet"
FIXTURES = os.path.join(ROOT, "tests", "fixtures")


def bq():
    from image_embeddings_airflow import bigquery

    return bigquery


def golden(name: str) -> str:
    with open(os.path.join(FIXTURES, name)) as handle:
        return handle.read()


def test_the_sql_is_the_reviewed_sql():
    b = bq()
    assert b.create_table_sql(PROJECT, DATASET) == golden("bigquery_create_table.sql")
    assert b.model_table_sql(PROJECT, DATASET, "embeddings", MODEL, "2026-11-20") == golden("bigquery_model_table.sql")
    assert b.vector_index_sql(PROJECT, DATASET, MODEL_TABLE, "IVF", 5000, 1000) == golden(
        "bigquery_vector_index_ivf.sql"
    )
    assert b.vector_index_sql(PROJECT, DATASET, MODEL_TABLE, "TREE_AH") == golden("bigquery_vector_index_tree_ah.sql")
    assert b.vector_search_sql(PROJECT, DATASET, MODEL_TABLE, top_k=10) == golden("bigquery_vector_search.sql")
    # The documented query is the golden one, word for word.
    with open(os.path.join(ROOT, "docs", "store.md")) as handle:
        assert golden("bigquery_vector_search.sql").strip() in handle.read()


def test_the_load_replaces_the_nights_partition_and_the_schema_matches_the_parquet_files():
    from beam_jobs.contract import EMBEDDING_COLUMNS

    b = bq()
    for ds, decorator in (("2026-11-20", "20261120"), ("2026-01-02", "20260102"), ("2024-02-29", "20240229")):
        kwargs = b.load_job(PROJECT, DATASET, "gs://acme-out/nightly/", ds, location="EU")
        load = kwargs["configuration"]["load"]
        assert load["destinationTable"] == {
            "projectId": PROJECT,
            "datasetId": DATASET,
            "tableId": f"embeddings${decorator}",
        }
        assert load["sourceUris"] == [f"gs://acme-out/nightly/embeddings/ds={ds}/embeddings-*.parquet"]
        assert (load["writeDisposition"], load["createDisposition"]) == ("WRITE_TRUNCATE", "CREATE_IF_NEEDED")
        assert (kwargs["location"], kwargs["gcp_conn_id"], kwargs["task_id"]) == (
            "EU",
            "google_cloud_default",
            "bigquery_load_night",
        )
    assert load["sourceFormat"] == "PARQUET"
    assert load["parquetOptions"] == {"enableListInference": True}
    assert load["hivePartitioningOptions"] == {
        "mode": "CUSTOM",
        "sourceUriPrefix": "gs://acme-out/nightly/embeddings/{ds:DATE}",
    }
    assert load["timePartitioning"] == {"type": "DAY", "field": "ds"}
    assert load["clustering"] == {"fields": ["model_id"]}
    # The schema is the extraction's Parquet columns, in order, with BigQuery's types; ds comes from the path.
    fields = load["schema"]["fields"]
    assert [f["name"] for f in fields] == [name for name, _ in EMBEDDING_COLUMNS]
    types = {f["name"]: (f["type"], f["mode"]) for f in fields}
    assert types["embedding"] == ("FLOAT", "REPEATED")
    assert types["width"] == ("INTEGER", "NULLABLE")
    assert types["image_uri"] == ("STRING", "REQUIRED")
    assert types["model_id"] == ("STRING", "REQUIRED")
    assert "ds DATE NOT NULL" in b.create_table_sql(PROJECT, DATASET)

    with pytest.raises(ValueError, match="gs://"):
        b.load_job(PROJECT, DATASET, "/data/out", "2026-11-20")
    with pytest.raises(ValueError, match="YYYY-MM-DD"):
        b.load_job(PROJECT, DATASET, "gs://acme-out", "20261120")
    with pytest.raises(ValueError, match="letters, digits"):
        b.load_job(PROJECT, "my-dataset; DROP", "gs://acme-out", "2026-11-20")


def test_model_table_and_vector_index_jobs():
    b = bq()
    assert table_name(MODEL) == MODEL_TABLE
    kwargs = b.model_table_job(PROJECT, DATASET, MODEL, "2026-11-20")
    query = kwargs["configuration"]["query"]
    assert query["query"] == golden("bigquery_model_table.sql")
    assert query["useLegacySql"] is False
    assert query["destinationTable"]["tableId"] == f"{MODEL_TABLE}$20261120"
    assert (query["writeDisposition"], query["timePartitioning"]) == ("WRITE_TRUNCATE", {"type": "DAY", "field": "ds"})
    index = b.vector_index_job(PROJECT, DATASET, MODEL, "TREE_AH")
    assert index["configuration"]["query"]["query"] == golden("bigquery_vector_index_tree_ah.sql")
    assert "num_lists" not in b.vector_index_sql(PROJECT, DATASET, MODEL_TABLE, "IVF")
    with pytest.raises(ValueError, match="IVF, TREE_AH"):
        b.vector_index_sql(PROJECT, DATASET, MODEL_TABLE, "HNSW")
    # A quote in a model_id stays inside its string literal.
    assert "model_id = 'a\\'b'" in b.model_table_sql(PROJECT, DATASET, "embeddings", "a'b", "2026-11-20")


def test_the_providers_operators_take_them_and_render_the_decorator_per_date():
    from airflow.providers.google.cloud.operators.bigquery import BigQueryInsertJobOperator

    b = bq()
    load = b.insert_job_operator(**b.load_job(PROJECT, DATASET, "gs://acme-out/nightly", "{{ ds }}"))
    model = b.insert_job_operator(**b.model_table_job(PROJECT, DATASET, MODEL, "{{ ds }}"))
    create = b.insert_job_operator(**b.create_table_job(PROJECT, DATASET))
    index = b.insert_job_operator(**b.vector_index_job(PROJECT, DATASET, MODEL))
    assert all(isinstance(op, BigQueryInsertJobOperator) for op in (load, model, create, index))
    assert "configuration" in BigQueryInsertJobOperator.template_fields
    for ds in ("2026-11-20", "2026-12-31"):
        rendered = load.render_template(load.configuration, {"ds": ds})["load"]
        assert rendered["destinationTable"]["tableId"] == f"embeddings${ds.replace('-', '')}"
        assert rendered["sourceUris"] == [f"gs://acme-out/nightly/embeddings/ds={ds}/embeddings-*.parquet"]
        query = model.render_template(model.configuration, {"ds": ds})["query"]
        assert query["destinationTable"]["tableId"] == f"{MODEL_TABLE}${ds.replace('-', '')}"
        assert f"WHERE ds = DATE '{ds}' AND" in query["query"]
    assert index.configuration["query"]["query"] == b.vector_index_sql(PROJECT, DATASET, MODEL_TABLE)


def test_the_module_is_light_at_dag_parse_time():
    import subprocess
    import sys

    code = (
        "import sys; sys.path.insert(0, 'plugins'); import image_embeddings_airflow.bigquery; "
        "heavy = [m for m in ('numpy', 'apache_beam', 'lancedb', 'pyarrow', 'tensorflow') if m in sys.modules]; "
        "assert not heavy, heavy"
    )
    subprocess.run([sys.executable, "-c", code], check=True, cwd=ROOT)


def test_a_planned_night_renders_its_jobs_in_order(tmp_path, monkeypatch):
    """What the DAG's publish_store task runs for store=bigquery, from a plan as the plan task builds it: create,
    load the date's partition, then each model's table and index; each takes the provider operator's kwargs."""
    from beam_jobs.nightly.plan import build_plan

    monkeypatch.setenv("IMAGE_EMBEDDINGS_ALLOWED_ROOTS", f"{tmp_path},gs://acme-out")
    params = {
        "methods": ["pca"],
        "runner": "FnApiRunner",
        "batch_size": 32,
        "max_failure_rate": 0.1,
        "weights": "random",
        "output_root": "gs://acme-out/nightly",
        "store": "bigquery",
        "store_uri": f"{PROJECT}.{DATASET}",
        "bigquery_index": "TREE_AH",
    }
    plan = build_plan(params, "2026-11-20", "r", "gs://acme-out/images/ds=2026-11-20/*")
    b = bq()
    jobs = b.night_jobs(plan, [MODEL, "mobilenet_v3_large/pool=avg"])
    assert [j["task_id"] for j in jobs] == [
        "bigquery_create_table",
        "bigquery_load_night",
        f"bigquery_model_table_{MODEL_TABLE}",
        "bigquery_model_table_mobilenet_v3_large_pool_avg",
        f"bigquery_vector_index_{MODEL_TABLE}",
        "bigquery_vector_index_mobilenet_v3_large_pool_avg",
    ]
    assert {j["project_id"] for j in jobs} == {PROJECT}
    load = jobs[1]["configuration"]["load"]
    assert load["destinationTable"]["tableId"] == "embeddings$20261120"
    assert load["sourceUris"] == ["gs://acme-out/nightly/embeddings/ds=2026-11-20/embeddings-*.parquet"]
    assert "index_type = 'TREE_AH'" in jobs[4]["configuration"]["query"]["query"]
    for job in jobs:
        operator = b.insert_job_operator(**job)
        assert operator.project_id == PROJECT
