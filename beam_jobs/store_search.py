"""Search the vector store (``beam_jobs.publish_store``): the ``--store`` path of ``python -m beam_jobs.search``.

    python -m beam_jobs.search --store lance --store_uri /data/out/store --uri /data/images/ds=2026-11-20/cat.jpg
    python -m beam_jobs.search --store lance --store_uri gs://b/store --image query.jpg -k 10 --json

The table is the one of ``--model_id`` (or ``--table``), or the store's only table. ``--uri`` takes that image's
stored vector (its newest night when several nights hold it) and leaves that row out of the answer; ``--image``
embeds a file with the table's model, checked against the model_id in the table's metadata before the model loads.
Scores are cosine similarities, as the night index's. With the ANN index (tables past the publish's
``--index_threshold``), ``NPROBES`` partitions are scanned and ``REFINE_FACTOR`` x k candidates re-ranked on the
full vectors: the setting scripts/bench_store.py measured at recall@10 >= 0.95; below it, the search is exact.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any

import numpy as np

from beam_jobs.search import SearchError

STORE_LANCE = "lance"
STORE_BIGQUERY = "bigquery"
STORES = (STORE_LANCE, STORE_BIGQUERY)
# The setting scripts/bench_store.py measured at recall@10 >= 0.95 on 1M 2048-d rows (IVF-RQ): the 1-bit codes
# only shortlist, so the shortlist is long (x10: recall 0.70 at 1M, x20: 0.89, x50: 1.00; docs/store.md).
NPROBES = 40
REFINE_FACTOR = 50
MIN_CANDIDATES = 100
_COLUMNS = ["image_uri", "ds"]


@dataclass
class StoreTable:
    """An open table of the store: its name, the model_id and vector length its metadata names."""

    store_uri: str
    name: str
    table: Any
    model_id: str
    dim: int

    @property
    def label(self) -> str:
        return f"{self.store_uri} (table {self.name})"

    def vector_of(self, uri: str) -> tuple[tuple[str, str], np.ndarray]:
        """((image_uri, ds), stored vector) of an image, its newest night when several hold it."""
        from beam_jobs.publish_store.lance_store import quote

        found = self.table.search().where(f"image_uri = {quote(uri)}").select(["ds", "embedding"]).to_arrow()
        if found.num_rows == 0:
            raise SearchError(f"{uri!r} is not in {self.label}; embed it with --image instead")
        nights = found.column("ds").to_pylist()
        newest = max(range(len(nights)), key=nights.__getitem__)
        vector = np.asarray(found.column("embedding")[newest].values.to_numpy(), dtype=np.float32)
        return (uri, str(found.column("ds")[newest])), vector

    def neighbours(self, vector: np.ndarray, k: int = 10, exclude: tuple[str, str] | None = None) -> list[dict]:
        """The ``k`` nearest rows: rank, score (cosine similarity), ds, image_uri (``exclude``: one (uri, ds))."""
        query = np.asarray(vector, dtype=np.float32).reshape(-1)
        if not np.any(query) or not np.all(np.isfinite(query)):
            raise SearchError("the query vector is all zeros or not finite: it has no direction to search along")
        if query.shape[0] != self.dim:
            raise SearchError(f"the query has length {query.shape[0]}, {self.label} holds vectors of length {self.dim}")
        hits = search_table(self.table, query, k + (1 if exclude else 0))
        out = []
        for uri, ds, distance in hits:
            if (uri, ds) == exclude or len(out) == k:
                continue
            out.append({"rank": len(out) + 1, "score": round(1.0 - float(distance), 4), "ds": ds, "image_uri": uri})
        return out


def search_table(table, query: np.ndarray, k: int, nprobes: int = NPROBES, refine_factor: int = REFINE_FACTOR):
    """[(image_uri, ds, cosine distance)] of the ``k`` nearest rows (ANN with refine when indexed, else exact).

    At least ``MIN_CANDIDATES`` rows are re-ranked on their full vectors, whatever ``k``: the index's 1-bit codes
    cannot order near-duplicates (at 64 dims, 7% of stored vectors missed themselves with k=3 and 30 candidates).
    """
    found = (
        table.search(query, vector_column_name="embedding")
        .distance_type("cosine")
        .nprobes(nprobes)
        .refine_factor(refine_factor)
        .limit(max(k, MIN_CANDIDATES // refine_factor))
        .select([*_COLUMNS, "_distance"])
        .to_arrow()
    )
    hits = zip(found["image_uri"].to_pylist(), found["ds"].to_pylist(), found["_distance"].to_pylist(), strict=True)
    return list(hits)[:k]


def open_store(store: str, store_uri: str | None, model_id: str | None = None, table: str | None = None):
    """The store's table for ``model_id`` / ``table`` (or its only table); SearchError when there is none."""
    if store == STORE_BIGQUERY:
        raise SearchError(
            "--store bigquery is queried in BigQuery itself with VECTOR_SEARCH (docs/store.md has the query)"
        )
    if store != STORE_LANCE:
        raise SearchError(f"--store must be one of {', '.join(STORES)}, got {store!r}")
    if not store_uri:
        raise SearchError("--store lance needs --store_uri (the folder or gs:// prefix publish_store wrote)")
    from beam_jobs.publish_store import lance_store, rows

    db = lance_store.connect(store_uri)
    if table is None and model_id is not None:
        table = rows.table_name(model_id)
    if table is None:
        names = list(db.list_tables().tables)
        if len(names) != 1:
            listing = ", ".join(names) or "none"
            raise SearchError(f"{store_uri} holds {len(names)} tables ({listing}): pick one with --model_id or --table")
        table = names[0]
    opened = lance_store.open_table(db, table)
    if opened is None:
        raise SearchError(f"{store_uri} has no table {table!r} (python -m beam_jobs.publish_store writes them)")
    theirs, dim = lance_store.table_model(opened)
    if model_id is not None and theirs != model_id:
        raise SearchError(f"table {table!r} of {store_uri} holds vectors of {theirs!r}, not {model_id!r}")
    return StoreTable(store_uri, table, opened, theirs or "", dim)


def search_store(args) -> dict[str, Any]:
    """``python -m beam_jobs.search --store ...``: the same answer as the index path, from the store."""
    from beam_jobs.search import embed_image, query_model, read_image

    if args.vector_from is not None:
        raise SearchError("--vector-from names a row of an index partition; with --store use --uri or --image")
    store = open_store(args.store, args.store_uri, args.model_id, args.table)
    exclude = None
    if args.image:
        spec, resolved = query_model(store.model_id, args.model, args.weights, args.seed)
        vector = embed_image(read_image(args.image), spec, resolved, args.resize_mode)
        query: dict[str, Any] = {"image": args.image}
    else:
        exclude, vector = store.vector_of(args.uri)
        query = {"image_uri": exclude[0], "ds": exclude[1]}
    return {
        "query": query,
        "model_id": store.model_id,
        "index": store.label,
        "store": args.store,
        "table": store.name,
        "neighbours": store.neighbours(vector, args.k, exclude=exclude),
    }
