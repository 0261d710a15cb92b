"""The Lance store: one LanceDB table per model_id at ``store_uri`` (a folder or ``gs://bucket/prefix``).

How a night lands (``replace_date``): one ``merge_insert`` keyed on (image_uri, ds) that updates the rows the
night shares with the table, inserts its new ones and deletes the date's rows the night no longer has
(``when_not_matched_by_source_delete("ds = 'D'")``). That is ONE committed version: a reader opening the table
sees the version before the publish or the one after it, never the date half replaced, and a re-run or a
backfill leaves exactly one copy of each (image_uri, ds). ``delete`` then ``add`` would be two commits, with the
date missing in between.

A process killed before the commit leaves data files no version lists (the previous version is what everyone
reads; Lance's cleanup removes such files once they are old, see ``maintain``); killed after it, the night is
published and the next run repeats the merge (a no-op for the rows, the same count) and the upkeep.

Two publishes at once (two dates, or two models' tables) commit one after the other: Lance detects the conflict
of the second commit and rebases it when the two touched different rows (two dates always do); a conflict it
cannot resolve is retried here from the start (``COMMIT_ATTEMPTS``).

Upkeep after each publish (``maintain``): the ANN index on ``embedding`` (``index_config``) is created once the
table reaches ``index_threshold`` rows and retrained when the table has grown 4x since (the trained row count is in
the index's name; the new index is committed before the old one is dropped); ``optimize`` compacts small
fragments, adds the new rows to the existing index and removes the versions beyond the newest ``retain_versions``.
"""

from __future__ import annotations

import datetime as dt
import logging
import random
import re
import time
from collections.abc import Callable, Iterator
from typing import Any

from beam_jobs.config import UsageError
from beam_jobs.publish_store import rows
from beam_jobs.publish_store.config import INDEX_HNSW_SQ, INDEX_IVF_PQ, INDEX_IVF_RQ, INDEX_IVF_SQ

LOG = logging.getLogger(__name__)

VECTOR_COLUMN = "embedding"
KEY_COLUMNS = ["image_uri", "ds"]
DISTANCE = "cosine"
COMMIT_ATTEMPTS = 8
# merge_insert retries a conflicting commit itself, but only within 30 s after its first attempt unless given a
# timeout (which then bounds every attempt): a night of millions of rows needs longer.
MERGE_TIMEOUT = dt.timedelta(hours=12)
RETRAIN_GROWTH = 4  # retrain the index when the table holds this many times the rows it was trained on
_TRAINED = re.compile(r"_n(\d+)$")


class StoreMismatch(UsageError):
    """The night's vectors do not belong in the table (another model_id or vector length): nothing is written."""


def connect(uri: str):
    import lancedb

    return lancedb.connect(uri)


def quote(value: str) -> str:
    """A SQL string literal for Lance filters."""
    return "'" + value.replace("'", "''") + "'"


def open_table(db, name: str):
    """The table, or None when the store has none of that name."""
    try:
        return db.open_table(name)
    except (ValueError, FileNotFoundError) as exc:
        if (
            "not found" in str(exc).lower()
            or "does not exist" in str(exc).lower()
            or isinstance(exc, FileNotFoundError)
        ):
            return None
        raise


def table_model(table) -> tuple[str | None, int]:
    """(model_id from the table's metadata, its vector length)."""
    meta = table.schema.metadata or {}
    model_id = meta.get(rows.META_MODEL_ID.encode())
    return (model_id.decode() if model_id else None), table.schema.field(VECTOR_COLUMN).type.list_size


def check_table(table, name: str, model_id: str, dim: int) -> None:
    """StoreMismatch naming both when the table holds another model's vectors or another vector length."""
    theirs, their_dim = table_model(table)
    if theirs != model_id:
        raise StoreMismatch(
            f"table {name!r} holds vectors of model_id {theirs!r}, this night's are {model_id!r}: their "
            "similarities mean nothing together; refused, nothing written (another table: --table)"
        )
    if their_dim != dim:
        raise StoreMismatch(
            f"table {name!r} holds vectors of length {their_dim}, this night's {model_id!r} rows have length {dim}: "
            "refused, nothing written"
        )


def open_or_create(db, name: str, model_id: str, dim: int):
    """The model's table, created with the store schema when missing (a concurrent creator's table is reused)."""
    table = open_table(db, name)
    if table is None:
        try:
            table = db.create_table(name, schema=rows.store_schema(model_id, dim), exist_ok=True)
        except Exception:
            table = open_table(db, name)
            if table is None:
                raise
    check_table(table, name, model_id, dim)
    return table


def is_conflict(exc: BaseException) -> bool:
    text = str(exc).lower()
    return "conflict" in text or "concurrent" in text or "retryable" in text


def retry_conflicts(what: str, action: Callable[[], Any], attempts: int = COMMIT_ATTEMPTS) -> Any:
    """``action()``; a commit conflict Lance could not resolve is retried with jittered backoff."""
    for attempt in range(1, attempts + 1):
        try:
            return action()
        except Exception as exc:
            if attempt == attempts or not is_conflict(exc):
                raise
            pause = min(30.0, 0.5 * 2**attempt) * random.uniform(0.5, 1.0)
            LOG.warning("%s: commit conflict (attempt %d of %d), retrying in %.1f s: %s", what, attempt, attempts,
                        pause, exc)  # fmt: skip
            time.sleep(pause)
    raise AssertionError("unreachable")


def replace_date(table, batches: Callable[[], Iterator], ds: str, schema) -> dict[str, int]:
    """Replace the rows of ``ds`` with ``batches()`` in one commit; returns the merge's counts and version."""
    import pyarrow as pa

    def merge():
        table.checkout_latest()
        reader = pa.RecordBatchReader.from_batches(schema, batches())
        return (
            table.merge_insert(KEY_COLUMNS)
            .when_matched_update_all()
            .when_not_matched_insert_all()
            .when_not_matched_by_source_delete(f"ds = {quote(ds)}")
            .execute(reader, timeout=MERGE_TIMEOUT)
        )

    result = retry_conflicts(f"publish {ds} to {table.name}", merge)
    return {
        "version": int(result.version),
        "inserted": int(result.num_inserted_rows),
        "updated": int(result.num_updated_rows),
        "deleted": int(result.num_deleted_rows),
        "attempts": int(getattr(result, "num_attempts", 1) or 1),
    }


# --------------------------------------------------------------------------- upkeep


def vector_indices(table) -> list:
    """The ANN indices on ``embedding`` (lancedb's IndexConfig), the newest (most rows trained on) first."""
    found = [index for index in table.list_indices() if VECTOR_COLUMN in index.columns]
    return sorted(found, key=trained_rows, reverse=True)


def vector_index(table):
    """The table's ANN index on ``embedding``, or None."""
    return next(iter(vector_indices(table)), None)


def trained_rows(index) -> int:
    match = _TRAINED.search(index.name or "")
    return int(match.group(1)) if match else 0


def index_config(index_type: str, rows_now: int, dim: int):
    """The ANN index on ``embedding`` (cosine): IVF with RaBitQ codes (the default), PQ codes, or HNSW over SQ codes.

    sqrt(rows) partitions (Lance's default) but no more than one per 256 rows (Lance trains each on ~256 rows and
    would train fewer, with a warning); k-means of 10 iterations on 64 rows a partition, as the faiss night index
    trains (Lance's 50 x 256 took 5.5x as long at 50,000 rows for the same recall after the refine step;
    docs/store.md). Queries re-rank the candidates on the full vectors (``store_search.REFINE_FACTOR``).
    """
    from lancedb.index import HnswSq, IvfPq, IvfRq, IvfSq

    partitions = max(1, min(int(rows_now**0.5), rows_now // 256))
    kmeans: dict[str, Any] = {"distance_type": DISTANCE, "max_iterations": 10, "sample_rate": 64}
    if index_type == INDEX_IVF_RQ:  # 1 bit a dimension: 256 bytes a 2048-d row
        return IvfRq(num_partitions=partitions, **kmeans)
    if index_type == INDEX_IVF_SQ:  # 8 bits a dimension: 2 KB a 2048-d row
        return IvfSq(num_partitions=partitions, **kmeans)
    if index_type == INDEX_IVF_PQ:  # 16 dims a sub-vector (Lance's default): 128 bytes a 2048-d row
        sub_vectors = dim // 16 if dim % 16 == 0 else (dim // 8 if dim % 8 == 0 else 1)
        return IvfPq(num_partitions=partitions, num_sub_vectors=sub_vectors, **kmeans)
    if index_type == INDEX_HNSW_SQ:  # a graph per partition: fewer, larger partitions
        return HnswSq(num_partitions=max(1, partitions // 8), **kmeans)
    raise ValueError(f"unknown index type {index_type!r}")


def retention_cutoff(versions: list[dict[str, Any]], keep: int) -> dt.timedelta | None:
    """``cleanup_older_than`` that keeps the newest ``keep`` versions (None when there are no more than that).

    lancedb reports version timestamps as naive local times (``datetime.fromtimestamp``), like ``now()``.
    """
    if len(versions) <= keep:
        return None
    stamps = sorted(v["timestamp"] for v in versions)
    oldest_kept = stamps[-keep]
    return max(dt.datetime.now() - oldest_kept, dt.timedelta(milliseconds=1))


def maintain(table, index_threshold: int, index_type: str, retain_versions: int) -> dict[str, Any]:
    """Index creation or retraining, compaction, index refresh and version cleanup; returns what it did."""
    done: dict[str, Any] = {}
    rows_now = table.count_rows()
    dim = table_model(table)[1]
    index = vector_index(table)
    trained = trained_rows(index) if index else 0
    if rows_now >= index_threshold and (index is None or rows_now >= RETRAIN_GROWTH * max(trained, 1)):
        name = f"{VECTOR_COLUMN}_{index_type}_n{rows_now}"
        config = index_config(index_type, rows_now, dim)
        started = time.perf_counter()

        def build():
            table.checkout_latest()
            table.create_index(VECTOR_COLUMN, config=config, name=name, replace=True)

        retry_conflicts(f"index {table.name}", build)
        done["index"] = {"created": name, "rows": rows_now, "seconds": round(time.perf_counter() - started, 2)}
    # The new index is committed before the old one goes (also one a killed run left): never a table without one.
    for stale in vector_indices(table)[1:]:
        retry_conflicts(f"drop {stale.name}", lambda name=stale.name: table.drop_index(name))
        done.setdefault("dropped", []).append(stale.name)
    cutoff = retention_cutoff(table.list_versions(), retain_versions)
    started = time.perf_counter()

    def optimize():
        table.checkout_latest()
        table.optimize(cleanup_older_than=cutoff)

    retry_conflicts(f"optimize {table.name}", optimize)
    done["optimize_seconds"] = round(time.perf_counter() - started, 2)
    stats = table.stats()
    done["fragments"] = int(stats["fragment_stats"]["num_fragments"])
    done["versions"] = len(table.list_versions())
    now = vector_index(table)
    done["index_name"] = now.name if now else None
    if now is not None:
        st = table.index_stats(now.name)
        done["indexed_rows"], done["unindexed_rows"] = int(st.num_indexed_rows), int(st.num_unindexed_rows)
    return done
