"""The nearest-neighbour index itself: faiss, cosine similarity, pure functions around it.

Vectors are L2-normalised, so inner product is cosine similarity. Two index kinds:

* ``flat``: exact search (``IndexIDMap2(IndexFlatIP)``), for windows under ``exact_below`` rows:
  a few thousand rows are searched exhaustively in well under a millisecond per query, and an
  IVF index needs ~40 training rows per list to train at all.
* ``ivf``: ``IndexIVFScalarQuantizer`` with fp16 codes (half the memory of float32, recall
  unaffected at 2048-d) and ``nlist`` ~ 4 sqrt(rows) inverted lists, ``nprobe`` of them scanned per
  query. Chosen over HNSW (faiss or usearch) because at 2048-d an HNSW graph takes minutes per 100k
  rows to build on 2 cores while IVF's cost is one k-means on a sample plus one assignment pass,
  and because IVF lists accept new rows and drop old ones without retraining: a window of nights
  is extended, not rebuilt (README, "The similarity index", has the measurements).

Ids are ``(day ordinal << 32) | row``: a night's rows form one id range, so the rows of a night
that falls out of the window are removed with one range selector.
"""

from __future__ import annotations

import datetime as _dt
import math
import os
import tempfile
from collections.abc import Iterable
from dataclasses import asdict, dataclass, fields

import numpy as np

KIND_FLAT = "flat"
KIND_IVF = "ivf"
DAY_SHIFT = 32
_EPOCH = _dt.date(2000, 1, 1).toordinal()


def day_of(ds: str | None) -> int:
    """The id prefix of a partition date (0 for rows outside any ``ds=`` folder)."""
    if not ds:
        return 0
    return _dt.date.fromisoformat(ds).toordinal() - _EPOCH + 1


def id_range(ds: str | None) -> tuple[int, int]:
    day = day_of(ds)
    return day << DAY_SHIFT, (day + 1) << DAY_SHIFT


@dataclass(frozen=True)
class IndexParams:
    """How an index was (or will be) built; stored in the manifest and compared before extending."""

    kind: str
    dim: int
    nlist: int = 0
    nprobe: int = 0
    train_rows: int = 0
    storage: str = "float32"

    def as_dict(self) -> dict:
        return asdict(self)

    @classmethod
    def from_manifest(cls, parameters: dict) -> IndexParams:
        return cls(**{f.name: parameters[f.name] for f in fields(cls) if f.name in parameters})


def choose_params(rows: int, dim: int, exact_below: int, nlist: int = 0, nprobe: int = 0) -> IndexParams:
    """Index kind and sizes for ``rows`` vectors (``nlist``/``nprobe`` 0: chosen from the row count)."""
    if rows < exact_below:
        return IndexParams(KIND_FLAT, dim)
    # ~2 sqrt(rows) lists (a power of two): 512 at 100k, 2048 at 1M rows. k-means on 2048-d rows costs
    # nlist x sample x dim per iteration, so more lists would cost minutes per night on 2 cores.
    lists = nlist or int(min(65536, max(64, 2 ** round(math.log2(2 * math.sqrt(rows))))))
    # Scanning 1/64 of the lists (8 at 100k, 32 at 1M): recall@10 0.999 at 100k and 1M rows
    # (scripts/bench_index.py), 0.989 on the fast tier's harder 64-d clusters; 1/32 doubled the p99 at 1M
    # (60 ms against 15 ms, same recall) and bought no recall there.
    probe = nprobe or max(8, lists // 64)
    # k-means needs >= 39 points per centroid (faiss warns below); more costs time and buys little.
    return IndexParams(KIND_IVF, dim, lists, min(probe, lists), min(rows, 40 * lists), "float16")


def normalise(x: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
    """(unit-length float32 rows, mask of the rows kept): all-zero rows have no direction and are left out."""
    x = np.asarray(x, dtype=np.float32)
    norms = np.linalg.norm(x, axis=1)
    keep = norms > 0
    return (x[keep] / norms[keep, None]).astype(np.float32, copy=False), keep


def new_index(params: IndexParams):
    import faiss

    if params.kind == KIND_FLAT:
        return faiss.IndexIDMap2(faiss.IndexFlatIP(params.dim))
    quantizer = faiss.IndexFlatIP(params.dim)
    index = faiss.IndexIVFScalarQuantizer(
        quantizer, params.dim, params.nlist, faiss.ScalarQuantizer.QT_fp16, faiss.METRIC_INNER_PRODUCT
    )
    index.nprobe = params.nprobe
    return index


def train(index, params: IndexParams, sample: np.ndarray, seed: int = 0) -> None:
    """Train an IVF index's centroids on ``sample`` (unit rows); a flat index needs nothing."""
    if params.kind != KIND_IVF:
        return
    # The IVF's own k-means, seeded: the same sample gives the same centroids.
    index.cp.seed = seed
    index.cp.niter = 10
    index.train(np.ascontiguousarray(sample, dtype=np.float32))


def add(index, ids: np.ndarray, x: np.ndarray) -> None:
    index.add_with_ids(np.ascontiguousarray(x, dtype=np.float32), np.ascontiguousarray(ids, dtype=np.int64))


def remove_days(index, days: Iterable[str | None]) -> int:
    """Drop every row of these partitions; returns how many were removed."""
    import faiss

    removed = 0
    for ds in days:
        low, high = id_range(ds)
        removed += int(index.remove_ids(faiss.IDSelectorRange(low, high)))
    return removed


def search(index, queries: np.ndarray, k: int, nprobe: int = 0, only_ids: np.ndarray | None = None):
    """(scores, ids) of the ``k`` nearest rows per query; ids -1 where fewer exist.

    ``only_ids`` restricts the search to those rows (recall of one night inside a longer window).
    """
    import faiss

    q = np.ascontiguousarray(queries, dtype=np.float32)
    sel = faiss.IDSelectorBatch(np.ascontiguousarray(only_ids, dtype=np.int64)) if only_ids is not None else None
    if hasattr(index, "nprobe"):
        params = faiss.SearchParametersIVF(nprobe=nprobe or index.nprobe, sel=sel)
    else:
        params = faiss.SearchParameters(sel=sel) if sel is not None else None
    k = max(1, min(k, index.ntotal))
    return index.search(q, k, params=params) if params is not None else index.search(q, k)


def exact_top_k(queries: np.ndarray, chunks: Iterable[tuple[np.ndarray, np.ndarray]], k: int):
    """Exact (scores, ids) of the ``k`` most similar rows over ``(ids, vectors)`` chunks (brute force)."""
    q = np.ascontiguousarray(queries, dtype=np.float32)
    best_s = np.full((len(q), k), -np.inf, dtype=np.float32)
    best_i = np.full((len(q), k), -1, dtype=np.int64)
    for ids, x in chunks:
        s = q @ np.asarray(x, dtype=np.float32).T
        if s.shape[1] > k:
            # Each chunk's own top k first: the merge then sorts 2k columns, not the chunk's width.
            top = np.argpartition(-s, k - 1, axis=1)[:, :k]
            s, chunk_ids = np.take_along_axis(s, top, axis=1), np.asarray(ids)[top]
        else:
            chunk_ids = np.broadcast_to(np.asarray(ids), s.shape)
        s_all = np.concatenate([best_s, s], axis=1)
        i_all = np.concatenate([best_i, chunk_ids], axis=1)
        top = np.argsort(-s_all, axis=1, kind="stable")[:, :k]
        best_s, best_i = np.take_along_axis(s_all, top, axis=1), np.take_along_axis(i_all, top, axis=1)
    return best_s, best_i


def recall_at_k(found: np.ndarray, truth: np.ndarray, k: int) -> float:
    """Mean share of each query's exact top ``k`` (ids >= 0) that the index returned in its top ``k``."""
    hits = total = 0
    for got, want in zip(found[:, :k], truth[:, :k], strict=True):
        want_set = {int(i) for i in want if i >= 0}
        hits += len(want_set & {int(i) for i in got if i >= 0})
        total += len(want_set)
    return hits / total if total else 1.0


def without_self(ids: np.ndarray, scores: np.ndarray, own: np.ndarray, k: int) -> tuple[np.ndarray, np.ndarray]:
    """Each row's results minus the query's own id, cut to ``k`` (pad -1 / -inf)."""
    out_i = np.full((len(ids), k), -1, dtype=np.int64)
    out_s = np.full((len(ids), k), -np.inf, dtype=np.float32)
    for row, (found, score, me) in enumerate(zip(ids, scores, own, strict=True)):
        keep = found != me
        kept_i, kept_s = found[keep][:k], score[keep][:k]
        out_i[row, : len(kept_i)] = kept_i
        out_s[row, : len(kept_s)] = kept_s
    return out_i, out_s


def write_index(index, path: str) -> None:
    """faiss writes local files only: write to a temp file, then copy it through Beam's FileSystems."""
    import faiss

    from beam_jobs import storage

    if storage.is_local(path):
        faiss.write_index(index, path)
        return
    fd, local = tempfile.mkstemp(suffix=".faiss")
    os.close(fd)
    try:
        faiss.write_index(index, local)
        with open(local, "rb") as handle:
            storage.write_bytes(path, handle.read())
    finally:
        os.unlink(local)


def read_index(path: str):
    import faiss

    from beam_jobs import storage

    if storage.is_local(path):
        return faiss.read_index(path)
    from apache_beam.io.filesystems import FileSystems

    with FileSystems.open(path, compression_type="uncompressed") as handle:
        data = handle.read()
    return faiss.deserialize_index(np.frombuffer(data, dtype=np.uint8))


def deserialize(data: bytes):
    """An index from the bytes of an ``index.faiss`` file."""
    import faiss

    return faiss.deserialize_index(np.frombuffer(data, dtype=np.uint8))


def reconstruct(index, row_id: int) -> np.ndarray:
    """The stored vector of one row (fp16-decoded for IVF)."""
    import faiss

    if isinstance(index, faiss.IndexIVF) and index.direct_map.type == faiss.DirectMap.NoMap:
        # Ids are not 0..n-1: a hash table from id to list position, built once per loaded index.
        index.set_direct_map_type(faiss.DirectMap.Hashtable)
    return index.reconstruct(int(row_id))


def library_version() -> str:
    import faiss

    return f"faiss-cpu {faiss.__version__}"
