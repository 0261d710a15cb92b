"""The BigQuery store (``store = bigquery``): the Google provider's operators that publish a night, as builders.

NOT RUN AGAINST BIGQUERY: this machine has no Google Cloud access. What is tested (tests/test_bigquery.py) is
what these functions render: the job configurations, the schema, the partition decorator of each date and the
SQL text (against reviewed golden files in tests/fixtures/). docs/store.md says the same.

Per night, in this order (the DAG wires them; nothing here knows the DAG):

1. ``create_table_job``: ``CREATE TABLE IF NOT EXISTS`` of the embeddings table, partitioned by ``ds`` (DATE) and
   clustered by ``model_id``: every model's rows, for SQL joins with catalogue tables.
2. ``load_job``: a load job of the night's Parquet files (``<root>/embeddings/ds=YYYY-MM-DD/embeddings-*.parquet``)
   into ``table$YYYYMMDD`` with ``WRITE_TRUNCATE``: the date's partition is replaced whole, atomically, so a
   re-run or a backfill leaves one copy of the date. ``ds`` comes from the folder name (hive partitioning).
3. ``model_table_job`` per model: the date's rows of one model_id into that model's table (``table$YYYYMMDD``,
   ``WRITE_TRUNCATE`` again): a vector index needs vectors of one length, so each model gets its table, named as
   the Lance store names it (``beam_jobs.publish_store.config.table_name``).
4. ``vector_index_job`` per model table: ``CREATE VECTOR INDEX IF NOT EXISTS`` (IVF or TreeAH, cosine), inside an
   ``IF`` that skips it until the table holds ``min_rows`` (BigQuery leaves an index on a small table unpopulated
   and searches it exactly; 5,000 rows is the floor its client libraries use). BigQuery refreshes the index as
   partitions are replaced.

``vector_search_sql`` is the documented query: the nearest images of a stored one, through ``VECTOR_SEARCH``.

Each ``*_job`` returns ``BigQueryInsertJobOperator`` keyword arguments (``insert_job_operator`` builds one).
``ds`` is a date (``2026-11-20``) or a Jinja expression (``{{ ds }}``): ``configuration`` is a templated field of
the operator, so the decorator then renders at run time (``{{ ds | replace('-', '') }}``). Standard library only
at import (DAG-parse time); the provider is imported when an operator is built.
"""

from __future__ import annotations

import json
import re
from typing import Any

from beam_jobs.publish_store.config import BIGQUERY_INDEX_TYPES, table_name

INDEX_TYPES = BIGQUERY_INDEX_TYPES
INDEX_IVF, INDEX_TREE_AH = INDEX_TYPES
MIN_INDEX_ROWS = 5000
DEFAULT_TABLE = "embeddings"
DEFAULT_CONN_ID = "google_cloud_default"

# The embeddings table's columns (BigQuery schema fields), in the Parquet files' order; ``ds`` comes from the path.
SCHEMA_FIELDS: list[dict[str, str]] = [
    {"name": "image_uri", "type": "STRING", "mode": "REQUIRED"},
    {"name": "embedding", "type": "FLOAT", "mode": "REPEATED"},
    {"name": "model_id", "type": "STRING", "mode": "REQUIRED"},
    {"name": "content_sha256", "type": "STRING", "mode": "NULLABLE"},
    {"name": "width", "type": "INTEGER", "mode": "NULLABLE"},
    {"name": "height", "type": "INTEGER", "mode": "NULLABLE"},
    {"name": "run_id", "type": "STRING", "mode": "NULLABLE"},
]
DS_FIELD = {"name": "ds", "type": "DATE", "mode": "REQUIRED"}
_SQL_TYPES = {"STRING": "STRING", "FLOAT": "FLOAT64", "INTEGER": "INT64", "DATE": "DATE"}
_NAME = re.compile(r"^[A-Za-z_][A-Za-z0-9_]{0,1023}$")
_PROJECT = re.compile(r"^[a-z][a-z0-9-]{4,28}[a-z0-9]$")
_DATE = re.compile(r"^\d{4}-\d{2}-\d{2}$")


def _check(project: str, dataset: str, *tables: str) -> None:
    if not _PROJECT.match(project):
        raise ValueError(f"BigQuery project {project!r} is not a project id")
    for name in (dataset, *tables):
        if not _NAME.match(name):
            raise ValueError(f"BigQuery name {name!r} may hold only letters, digits and _")


def is_template(ds: str) -> bool:
    return "{{" in ds


def _check_ds(ds: str) -> None:
    if not (is_template(ds) or _DATE.match(ds)):
        raise ValueError(f"ds must be YYYY-MM-DD or a Jinja expression, got {ds!r}")


def partition_decorator(ds: str) -> str:
    """``2026-11-20`` -> ``20261120``; ``{{ ds }}`` -> ``{{ ds | replace('-', '') }}`` (rendered at run time)."""
    _check_ds(ds)
    if is_template(ds):
        expression = ds.strip().removeprefix("{{").removesuffix("}}").strip()
        return "{{ " + expression + " | replace('-', '') }}"
    return ds.replace("-", "")


def _date_literal(ds: str) -> str:
    _check_ds(ds)
    return f"DATE '{ds}'"


def _string_literal(value: str) -> str:
    return "'" + value.replace("\\", "\\\\").replace("'", "\\'") + "'"


def _table_ref(project: str, dataset: str, table: str) -> str:
    return f"`{project}.{dataset}.{table}`"


def _kwargs(task_id: str, configuration: dict[str, Any], location: str | None, gcp_conn_id: str) -> dict[str, Any]:
    kwargs: dict[str, Any] = {"task_id": task_id, "configuration": configuration, "gcp_conn_id": gcp_conn_id}
    if location:
        kwargs["location"] = location
    return kwargs


def _into_partition(project: str, dataset: str, table: str, ds: str) -> dict[str, Any]:
    """A job's destination: the date's partition of a table partitioned by day on ``ds`` (``table$YYYYMMDD``)."""
    return {
        "destinationTable": {
            "projectId": project,
            "datasetId": dataset,
            "tableId": f"{table}${partition_decorator(ds)}",
        },
        "timePartitioning": {"type": "DAY", "field": "ds"},
    }


def _query(sql: str, **extra: Any) -> dict[str, Any]:
    return {"query": {"query": sql, "useLegacySql": False, **extra}}


# --------------------------------------------------------------------------- SQL


def create_table_sql(project: str, dataset: str, table: str = DEFAULT_TABLE) -> str:
    _check(project, dataset, table)
    columns = []
    for f in [*SCHEMA_FIELDS, DS_FIELD]:
        kind = _SQL_TYPES[f["type"]]
        kind = f"ARRAY<{kind}>" if f["mode"] == "REPEATED" else kind
        columns.append(f"  {f['name']} {kind}{' NOT NULL' if f['mode'] == 'REQUIRED' else ''}")
    return (
        f"CREATE TABLE IF NOT EXISTS {_table_ref(project, dataset, table)} (\n"
        + ",\n".join(columns)
        + "\n)\nPARTITION BY ds\nCLUSTER BY model_id\n"
        + "OPTIONS (description = 'Nightly image embeddings, one partition per ds (image-embeddings-pipeline)');\n"
    )


def model_table_sql(project: str, dataset: str, source_table: str, model_id: str, ds: str) -> str:
    """The date's rows of one model_id (its vectors, one length), for the model table's partition."""
    _check(project, dataset, source_table)
    return (
        "SELECT image_uri, ds, content_sha256, embedding, width, height, run_id\n"
        f"FROM {_table_ref(project, dataset, source_table)}\n"
        f"WHERE ds = {_date_literal(ds)} AND model_id = {_string_literal(model_id)};\n"
    )


def vector_index_sql(
    project: str,
    dataset: str,
    table: str,
    index_type: str = INDEX_IVF,
    min_rows: int = MIN_INDEX_ROWS,
    num_lists: int | None = None,
) -> str:
    """``CREATE VECTOR INDEX IF NOT EXISTS`` on ``embedding`` (cosine), run once the table holds ``min_rows``."""
    _check(project, dataset, table)
    if index_type not in INDEX_TYPES:
        raise ValueError(f"index_type must be one of {', '.join(INDEX_TYPES)}, got {index_type!r}")
    # IVF: num_lists when given (BigQuery picks one from the table's size otherwise); TreeAH: BigQuery's defaults.
    extra = ""
    if index_type == INDEX_IVF and num_lists:
        extra = f",\n      ivf_options = '{json.dumps({'num_lists': int(num_lists)})}'"
    ref = _table_ref(project, dataset, table)
    return (
        f"IF (SELECT COUNT(*) FROM {ref}) >= {int(min_rows)} THEN\n"
        f"  CREATE VECTOR INDEX IF NOT EXISTS {table}_embedding_index\n"
        f"  ON {ref}(embedding)\n"
        f"  OPTIONS(index_type = '{index_type}',\n"
        f"      distance_type = 'COSINE'{extra});\n"
        "END IF;\n"
    )


def vector_search_sql(project: str, dataset: str, table: str, top_k: int = 10, fraction: float = 0.05) -> str:
    """The nearest images of a stored one (query parameters ``@image_uri`` and ``@ds``), itself left out."""
    _check(project, dataset, table)
    ref = _table_ref(project, dataset, table)
    return (
        "SELECT base.image_uri, base.ds, 1 - distance AS cosine_similarity\n"
        "FROM VECTOR_SEARCH(\n"
        f"  TABLE {ref}, 'embedding',\n"
        f"  (SELECT image_uri AS query_uri, embedding FROM {ref} WHERE image_uri = @image_uri AND ds = @ds),\n"
        f"  top_k => {int(top_k) + 1},\n"
        "  distance_type => 'COSINE',\n"
        f"  options => '{{\"fraction_lists_to_search\": {fraction}}}')\n"
        "WHERE NOT (base.image_uri = query.query_uri AND base.ds = @ds)\n"
        "ORDER BY distance\n"
        f"LIMIT {int(top_k)};\n"
    )


# --------------------------------------------------------------------------- operator kwargs


def create_table_job(
    project: str, dataset: str, table: str = DEFAULT_TABLE, location: str | None = None, gcp_conn_id=DEFAULT_CONN_ID
) -> dict[str, Any]:
    return _kwargs("bigquery_create_table", _query(create_table_sql(project, dataset, table)), location, gcp_conn_id)


def load_job(
    project: str,
    dataset: str,
    output_root: str,
    ds: str,
    table: str = DEFAULT_TABLE,
    location: str | None = None,
    gcp_conn_id: str = DEFAULT_CONN_ID,
) -> dict[str, Any]:
    """The night's Parquet partition into ``table$YYYYMMDD``, replacing that partition (``WRITE_TRUNCATE``)."""
    _check(project, dataset, table)
    _check_ds(ds)
    root = output_root.rstrip("/")
    if not root.startswith("gs://"):
        raise ValueError(f"BigQuery loads from gs:// only, the output root is {output_root!r}")
    configuration = {
        "load": {
            "sourceUris": [f"{root}/embeddings/ds={ds}/embeddings-*.parquet"],
            "sourceFormat": "PARQUET",
            # A Parquet LIST as ARRAY<FLOAT64> (without it: a RECORD of list.element)
            "parquetOptions": {"enableListInference": True},
            # ds is the folder's name (ds=YYYY-MM-DD), not a column of the files.
            "hivePartitioningOptions": {"mode": "CUSTOM", "sourceUriPrefix": f"{root}/embeddings/{{ds:DATE}}"},
            **_into_partition(project, dataset, table, ds),
            "schema": {"fields": [dict(f) for f in SCHEMA_FIELDS]},
            "clustering": {"fields": ["model_id"]},
            "writeDisposition": "WRITE_TRUNCATE",
            "createDisposition": "CREATE_IF_NEEDED",
        }
    }
    return _kwargs("bigquery_load_night", configuration, location, gcp_conn_id)


def model_table_job(
    project: str,
    dataset: str,
    model_id: str,
    ds: str,
    source_table: str = DEFAULT_TABLE,
    location: str | None = None,
    gcp_conn_id: str = DEFAULT_CONN_ID,
) -> dict[str, Any]:
    """One model's rows of the date into its own table's partition (``WRITE_TRUNCATE`` on ``table$YYYYMMDD``)."""
    target = table_name(model_id)
    configuration = _query(
        model_table_sql(project, dataset, source_table, model_id, ds),
        **_into_partition(project, dataset, target, ds),
        writeDisposition="WRITE_TRUNCATE",
        createDisposition="CREATE_IF_NEEDED",
    )
    return _kwargs(f"bigquery_model_table_{target}"[:250], configuration, location, gcp_conn_id)


def vector_index_job(
    project: str,
    dataset: str,
    model_id: str,
    index_type: str = INDEX_IVF,
    min_rows: int = MIN_INDEX_ROWS,
    location: str | None = None,
    gcp_conn_id: str = DEFAULT_CONN_ID,
) -> dict[str, Any]:
    target = table_name(model_id)
    sql = vector_index_sql(project, dataset, target, index_type, min_rows)
    return _kwargs(f"bigquery_vector_index_{target}"[:250], _query(sql), location, gcp_conn_id)


def insert_job_operator(**kwargs: Any):
    """A ``BigQueryInsertJobOperator`` from one of the builders' kwargs (the provider is imported here)."""
    from airflow.providers.google.cloud.operators.bigquery import BigQueryInsertJobOperator

    return BigQueryInsertJobOperator(**kwargs)


# --------------------------------------------------------------------------- one night


def night_jobs(plan: dict[str, Any], model_ids: list[str], gcp_conn_id: str = DEFAULT_CONN_ID) -> list[dict[str, Any]]:
    """The night's jobs in order (create the table, load the date, each model's table, each model's index), as
    operator kwargs, from the plan's ``bigquery_project``, ``bigquery_dataset``, ``bigquery_index``,
    ``output_root`` and ``ds``. Every job is idempotent: a retry runs them all again."""
    project, dataset, ds = plan["bigquery_project"], plan["bigquery_dataset"], plan["ds"]
    jobs = [
        create_table_job(project, dataset, gcp_conn_id=gcp_conn_id),
        load_job(project, dataset, plan["output_root"], ds, gcp_conn_id=gcp_conn_id),
    ]
    jobs += [model_table_job(project, dataset, m, ds, gcp_conn_id=gcp_conn_id) for m in model_ids]
    jobs += [vector_index_job(project, dataset, m, plan["bigquery_index"], gcp_conn_id=gcp_conn_id) for m in model_ids]
    # The jobs bill to the store's project (the dataset's); BigQuery infers the location from the dataset.
    return [{**job, "project_id": project} for job in jobs]


def publish_night(plan: dict[str, Any], model_ids: list[str], context: Any) -> list[str]:
    """Run the night's jobs one after the other with the provider's ``BigQueryInsertJobOperator``, inside the
    calling task (a nested operator: Airflow logs a warning and allows it). Returns the job ids.

    One task rather than four mapped ones: the jobs must run in order, a retry must redo them in order, and the
    provider's operators module imports pandas (~3 s), too heavy for DAG parsing."""
    done = []
    for kwargs in night_jobs(plan, model_ids):
        job_id = insert_job_operator(**kwargs).execute(context)
        done.append(job_id)
    return done
