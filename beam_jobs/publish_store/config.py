"""The flags of ``python -m beam_jobs.publish_store``, declared once with ``beam_jobs.config.option``.

Standard library only (like ``beam_jobs.config``): a launcher or an Airflow task validates them cheaply.
"""

from __future__ import annotations

import hashlib
import re
from dataclasses import dataclass
from typing import ClassVar

from beam_jobs.config import BaseConfig, at_least, names_a_root, option

STORE_NONE = "none"
STORE_LANCE = "lance"
STORE_BIGQUERY = "bigquery"
STORES = (STORE_NONE, STORE_LANCE, STORE_BIGQUERY)

INDEX_IVF_PQ = "ivf_pq"
INDEX_IVF_RQ = "ivf_rq"
INDEX_IVF_SQ = "ivf_sq"
INDEX_HNSW_SQ = "hnsw_sq"
INDEX_TYPES = (INDEX_IVF_RQ, INDEX_IVF_SQ, INDEX_IVF_PQ, INDEX_HNSW_SQ)
DEFAULT_INDEX_TYPE = INDEX_IVF_RQ
# BigQuery's vector index kinds (the DAG's store=bigquery; CREATE VECTOR INDEX ... index_type).
BIGQUERY_INDEX_TYPES = ("IVF", "TREE_AH")

# From this many rows a table gets its ANN index; below it is searched exactly (a flat scan). A flat scan of
# 50,000 2048-d rows took 2.6 s a query here (Lance decodes every vector) against ~12 ms through the index, and
# an index on 5,000 rows trains in seconds (docs/store.md, "Index").
DEFAULT_INDEX_THRESHOLD = 5_000
# Versions kept after each publish (each publish commits one data version, plus compaction and index versions).
DEFAULT_RETAIN_VERSIONS = 20


@dataclass(frozen=True, kw_only=True)
class StoreConfig(BaseConfig):
    """``--output`` of the other jobs has no meaning here (the store is written in place, one commit per table):
    it is not a flag, and ``output_problems`` checks ``--input`` instead (``--store_uri`` is checked with the
    other fields)."""

    PROG: ClassVar[str] = "python -m beam_jobs.publish_store"
    DESCRIPTION: ClassVar[str] = (
        "Publish one night's embeddings partition to a queryable vector store (Lance), one table per model_id, "
        "replacing that date's rows in one committed version."
    )

    output: str = ""  # not a flag (no help): BaseConfig's field, unused here
    run_id: str | None = option(None, "recorded in every row (default: the run_id the extraction wrote into each row)")
    input: str = option(help="the night's embeddings partition (…/embeddings/ds=YYYY-MM-DD), local or gs://")
    store: str = option(STORE_LANCE, "where to publish: lance, bigquery (Airflow's operators) or none", choices=STORES)
    store_uri: str | None = option(None, "the Lance store: a folder or gs://bucket/prefix (one table per model_id)")
    ds: str | None = option(None, "the night's date (default: from the input's ds=YYYY-MM-DD folder)")
    model_id: str | None = option(None, "publish only this model's rows (default: every model in the partition)")
    table: str | None = option(
        None, "the table name (default: derived from the model_id); refused when it holds another model's vectors"
    )
    projections: tuple[str, ...] = option(
        (),
        "a projections partition of the night (…/projections/method=pca/ds=YYYY-MM-DD); repeat per method: its "
        "x, y become the <method>_x, <method>_y columns",
        flag="projections",
        kind=tuple,
    )
    retain_versions: int = option(
        DEFAULT_RETAIN_VERSIONS, "table versions kept after the publish (older ones are cleaned)", check=at_least(1)
    )
    index_threshold: int = option(
        DEFAULT_INDEX_THRESHOLD, "rows from which the table gets its ANN index (below: exact search)", check=at_least(1)
    )
    index_type: str = option(
        DEFAULT_INDEX_TYPE,
        "the ANN index: ivf_rq (IVF, RaBitQ codes), ivf_sq (IVF, 8-bit codes), ivf_pq (IVF, PQ codes) or hnsw_sq "
        "(HNSW over 8-bit codes); docs/store.md has the measurements",
        choices=INDEX_TYPES,
    )

    def cross_field_problems(self) -> list[str]:
        problems = []
        if self.store == STORE_LANCE and not self.store_uri:
            problems.append("--store lance needs --store_uri (a folder or gs://bucket/prefix)")
        if self.store_uri and names_a_root(self.store_uri):
            problems.append(f"--store_uri {self.store_uri!r} must name a folder below the root")
        if self.ds is not None and not _is_date(self.ds):
            problems.append(f"--ds must be YYYY-MM-DD, got {self.ds!r}")
        if self.table is not None and not _safe_name(self.table):
            problems.append(f"--table {self.table!r} may hold only letters, digits and _ (64 at most)")
        return problems

    def output_problems(self) -> list[str]:
        # No --output: the store is written in place (--store_uri, checked with the other fields).
        if not (self.input or "").strip():
            return ["--input is required (the night's embeddings partition)"]
        return []


def _is_date(text: str) -> bool:
    import datetime as dt

    try:
        return dt.date.fromisoformat(text).isoformat() == text
    except ValueError:
        return False


def _safe_name(name: str) -> bool:
    return 0 < len(name) <= 64 and all(c.isascii() and (c.isalnum() or c == "_") for c in name)


def table_name(model_id: str) -> str:
    """A table name any store accepts (letters, digits, _; 64 at most), readable, from the model_id.

    ``resnet50/pool=avg/in=224x224/weights=imagenet`` -> ``resnet50_pool_avg_in_224x224_weights_imagenet``. A long
    id keeps its start and gains a hash of the whole. Two ids that map to one name are told apart by the table's
    metadata (the second is refused, naming both).
    """
    name = re.sub(r"[^a-z0-9]+", "_", model_id.lower()).strip("_") or "model"
    if name[0].isdigit():
        name = "m_" + name
    if len(name) > 64:
        name = name[:51].rstrip("_") + "_" + hashlib.sha256(model_id.encode()).hexdigest()[:12]
    return name
