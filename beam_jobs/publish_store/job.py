"""The publish job: one night's embeddings partition into the vector store, idempotent per date.

    python -m beam_jobs.publish_store --input /data/out/embeddings/ds=2026-11-20 \\
        --store lance --store_uri /data/out/store \\
        [--projections /data/out/projections/method=pca/ds=2026-11-20 ...] [--model_id M] [--retain_versions N]

Every model of the partition goes to its own table (``rows.table_name(model_id)``), each in one commit that
replaces that date's rows (``lance_store.replace_date``). All tables are checked before any is written: a night
whose model_id or vector length differs from its table's is refused (exit status 2), naming both, and nothing
is written. ``--store none`` does nothing; ``--store bigquery`` is the DAG's BigQuery operators' job
(``image_embeddings_airflow.bigquery``), not this command's.

Not a Beam job: the night is streamed row group by row group into Lance's writer, which uses every core of the
machine it runs on; docs/store.md says how a Dataflow-sized night is written (per-worker fragments, one commit).
"""

from __future__ import annotations

import json
import logging
import time
from typing import Any

from beam_jobs.config import ConfigError, UsageError
from beam_jobs.publish_store import lance_store, rows
from beam_jobs.publish_store.config import (
    DEFAULT_INDEX_THRESHOLD,
    DEFAULT_INDEX_TYPE,
    DEFAULT_RETAIN_VERSIONS,
    STORE_BIGQUERY,
    STORE_NONE,
    StoreConfig,
)
from beam_jobs.runtime import AccountingError, InputError, utc_stamp

LOG = logging.getLogger(__name__)


def publish(cfg: StoreConfig) -> dict[str, Any]:
    """Publish the night described by ``cfg``; returns what each table received and its upkeep."""
    if cfg.store == STORE_NONE:
        return {"store": STORE_NONE}
    if cfg.store == STORE_BIGQUERY:
        raise UsageError(
            "--store bigquery is loaded by the DAG's BigQuery operators (image_embeddings_airflow.bigquery: a load "
            "job replacing the ds partition); this command publishes to --store lance"
        )
    started = time.time()
    night = rows.inspect_night(cfg.input, cfg.ds, cfg.model_id)
    if cfg.table and len(night.models) > 1:
        raise ConfigError(f"--table names one table but the partition holds {len(night.models)} models: add --model_id")
    db = lance_store.connect(cfg.store_uri)
    # Every table is checked before any is written: one refused model leaves the store as it was.
    names = {mid: cfg.table or rows.table_name(mid) for mid in night.models}
    for mid, (_, dim) in night.models.items():
        existing = lance_store.open_table(db, names[mid])
        if existing is not None:
            lance_store.check_table(existing, names[mid], mid, dim)
    projections = {mid: rows.read_projections(cfg.projections, mid, night.ds) for mid in night.models}
    for folder in cfg.projections:
        if not any(c.folder == folder for by_method in projections.values() for c in by_method.values()):
            raise InputError(f"--projections {folder!r} holds no rows of this night's models for ds={night.ds}")
    tables = {}
    for mid, (expected, dim) in night.models.items():
        tables[mid] = publish_model(cfg, night, db, names[mid], mid, expected, dim, projections[mid])
    return {
        "store": cfg.store,
        "store_uri": cfg.store_uri,
        "ds": night.ds,
        "input": night.folder,
        "run_id": cfg.run_id,
        "tables": tables,
        "started_at": utc_stamp(started),
        "finished_at": utc_stamp(time.time()),
        "seconds": round(time.time() - started, 3),
    }


def publish_model(cfg, night, db, name: str, model_id: str, expected: int, dim: int, coords) -> dict[str, Any]:
    table = lance_store.open_or_create(db, name, model_id, dim)
    schema = rows.store_schema(model_id, dim)
    t0 = time.perf_counter()
    merged = lance_store.replace_date(
        table, lambda: rows.source_batches(night, model_id, cfg.run_id, coords), night.ds, schema
    )
    merge_s = time.perf_counter() - t0
    table.checkout_latest()
    landed = table.count_rows(f"ds = {lance_store.quote(night.ds)}")
    if landed != expected:
        # Only a concurrent publish of the same date and model can do this: say so rather than pass it silently.
        raise AccountingError(
            f"table {name!r} holds {landed} rows of ds={night.ds} after the publish, the partition has {expected} "
            "(another publish of the same date at the same time?)"
        )
    t0 = time.perf_counter()
    upkeep = lance_store.maintain(table, cfg.index_threshold, cfg.index_type, cfg.retain_versions)
    LOG.info("published %d rows of %s to %s (%s) in %.1f s", expected, night.ds, name, model_id, merge_s)
    return {
        "table": name,
        "model_id": model_id,
        "dim": dim,
        "rows": expected,
        "table_rows": table.count_rows(),
        "merge": merged,
        "merge_seconds": round(merge_s, 3),
        "upkeep": upkeep,
        "upkeep_seconds": round(time.perf_counter() - t0, 3),
        "projections": sorted(coords),
    }


def run(argv: list[str] | None = None) -> dict[str, Any]:
    cfg, extra = StoreConfig.parse(argv)
    if extra:
        raise ConfigError(f"unknown arguments: {' '.join(extra)}")
    result = publish(cfg)
    LOG.info("publish_store: %s", json.dumps(result, sort_keys=True, default=str))
    return result


def publish_store_step(
    embeddings_dir: str,
    store: str,
    store_uri: str | None,
    projections: list[str] | None,
    model_id: str | None,
    run_id: str | None,
    *,
    index_threshold: int = DEFAULT_INDEX_THRESHOLD,
    retain_versions: int = DEFAULT_RETAIN_VERSIONS,
    index_type: str = DEFAULT_INDEX_TYPE,
) -> dict[str, Any]:
    """The orchestrators' step (the DAG task and the Kubeflow component call it; they do the wiring).

    ``store``: "none" (returns ``{"store": "none"}`` at once), "lance" (publishes to ``store_uri``) or "bigquery"
    (refused: the DAG runs ``image_embeddings_airflow.bigquery``'s operators instead). ``projections``: the night's
    projections partitions, of any of its models (each model's rows get its own maps' x, y as <method>_x,
    <method>_y). ``model_id``: only
    that model (default: every model of the partition). ``run_id``: recorded in the rows (default: the
    extraction's). Raises UsageError (a refused night: nothing written) or the store's own errors.
    """
    if store == STORE_NONE:
        return {"store": STORE_NONE}
    cfg = StoreConfig(
        input=embeddings_dir,
        store=store,
        store_uri=store_uri,
        model_id=model_id,
        projections=tuple(projections or ()),
        run_id=run_id,
        index_threshold=index_threshold,
        retain_versions=retain_versions,
        index_type=index_type,
    ).validate()
    return publish(cfg)
