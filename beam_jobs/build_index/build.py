"""The build step: one worker turns the staged blocks into the index, the duplicate report and the manifest.

Why one worker: a faiss index is one in-memory structure. IVF lists could be
filled on several workers and merged, but adding is the cheap part (one
assignment pass, which faiss spreads over every core of the worker through
OpenMP); the expensive part, k-means on a sample, is inherently one job. Reading,
checking and normalising the files, which grows with the data, runs in parallel
before (``stage.StageVectors``).

Called by ``runtime.Commit`` with the staged blocks' descriptions; writes
``index.faiss``, ``rows.parquet`` and ``duplicates.parquet`` into the staging
directory and returns the manifest's fields (``contract.IndexManifest``).
"""

from __future__ import annotations

import io
import logging
import time
from typing import Any

import numpy as np

from beam_jobs import storage
from beam_jobs.build_index import ann
from beam_jobs.build_index.stage import PARTS_DIR, read_npy
from beam_jobs.build_index.window import Window
from beam_jobs.contract import DUPLICATE_COLUMNS, DUPLICATES_FILE, INDEX_FILE, INDEX_ROWS
from beam_jobs.runtime import AccountingError

LOG = logging.getLogger(__name__)
NEAR_K = 10  # neighbours looked at per row for near-duplicates


def _read_parquet(path: str):
    import pyarrow.parquet as pq
    from apache_beam.io.filesystems import FileSystems

    with FileSystems.open(path, compression_type="uncompressed") as handle:
        return pq.read_table(io.BytesIO(handle.read()))


def _write_parquet(table, path: str) -> None:
    import pyarrow.parquet as pq

    sink = io.BytesIO()
    pq.write_table(table, sink)
    storage.write_bytes(path, sink.getvalue())


def _rows_of(stem: str, parts: Parts) -> int:
    return parts.rows_by_stem[stem]


class Parts:
    """The staged blocks: their metadata in one table, their vectors read back block by block."""

    def __init__(self, parts: list[dict[str, Any]]):
        import pyarrow as pa

        self.rows_by_stem = {p["stem"]: p["rows"] for p in parts if p["rows"]}
        self.stems = sorted(self.rows_by_stem)
        self.meta = (
            pa.concat_tables([_read_parquet(stem + ".parquet") for stem in self.stems])
            if self.stems
            else pa.table({"id": pa.array([], pa.int64())})
        )
        self.rows = self.meta.num_rows
        self.ids = self.meta.column("id").to_numpy()
        self.dropped: dict[str, int] = {}
        for p in parts:
            for reason, count in p["dropped"].items():
                self.dropped[reason] = self.dropped.get(reason, 0) + count

    def blocks(self, night: str | None = None):
        """(ids, vectors) block by block, in the stems' order; ``night``: only that night's blocks."""
        start = 0
        for stem in self.stems:
            rows = _rows_of(stem, self)
            if night is None or stem.rsplit("/", 1)[-1].startswith(f"{night}-"):
                yield self.ids[start : start + rows], read_npy(stem + ".npy")
            start += rows

    def sample(self, n: int, seed: int) -> np.ndarray:
        """``n`` rows chosen with a seeded generator (positions over all blocks), as float32."""
        rng = np.random.default_rng(seed)
        chosen = np.sort(rng.choice(self.rows, size=min(n, self.rows), replace=False))
        out, start = [], 0
        for _, x in self.blocks():
            inside = chosen[(chosen >= start) & (chosen < start + len(x))] - start
            if len(inside):
                out.append(x[inside].astype(np.float32))
            start += len(x)
        return np.concatenate(out)

    def rows_at(self, positions: np.ndarray) -> np.ndarray:
        out, start = [], 0
        wanted = np.sort(positions)
        for _, x in self.blocks():
            inside = wanted[(wanted >= start) & (wanted < start + len(x))] - start
            if len(inside):
                out.append(x[inside].astype(np.float32))
            start += len(x)
        return np.concatenate(out) if out else np.zeros((0, 0), np.float32)


def _exact_duplicates(rows, night: str):
    """Pairs (a row of the night, another row of the window) with the same content_sha256: (pairs, rows, groups)."""
    sha = rows.column("content_sha256").to_numpy(zero_copy_only=False)
    uris = rows.column("image_uri").to_numpy(zero_copy_only=False)
    ds = rows.column("ds").to_numpy(zero_copy_only=False)
    fresh = ds == night
    groups: dict[str, list[int]] = {}
    for position, digest in enumerate(sha):
        if digest:
            groups.setdefault(digest, []).append(position)
    pairs, dup_rows, dup_groups = [], 0, 0
    for members in groups.values():
        if len(members) < 2 or not fresh[members].any():
            continue
        dup_groups += 1
        first = members[0]
        for other in members[1:]:
            if fresh[other] or fresh[first]:
                pairs.append(("exact", uris[other], uris[first], ds[first], 1.0))
        dup_rows += int(fresh[members].sum())
    return pairs, dup_rows, dup_groups


def _near_duplicates(index, parts: Parts, rows, threshold: float, nprobe: int, night: str):
    """Pairs at cosine >= ``threshold`` between the night's rows and the window, each pair once.

    Only the night's rows are queried (10 neighbours each): earlier nights were reported by their own runs.
    """
    if threshold <= 0 or index.ntotal < 2:
        return []
    by_id = {int(i): p for p, i in enumerate(rows.column("id").to_numpy())}
    uris = rows.column("image_uri").to_numpy(zero_copy_only=False)
    ds = rows.column("ds").to_numpy(zero_copy_only=False)
    sha = rows.column("content_sha256").to_numpy(zero_copy_only=False)
    seen: set[tuple[int, int]] = set()
    pairs = []
    for ids, x in parts.blocks(night):
        scores, found = ann.search(index, x.astype(np.float32), NEAR_K + 1, nprobe)
        for me, row_scores, row_ids in zip(ids, scores, found, strict=True):
            for score, other in zip(row_scores, row_ids, strict=True):
                if other < 0 or other == me or score < threshold:
                    continue
                key = (min(int(me), int(other)), max(int(me), int(other)))
                a, b = by_id[int(me)], by_id[int(other)]
                if key in seen or (sha[a] and sha[a] == sha[b]):
                    continue  # reported once; same bytes are exact duplicates
                seen.add(key)
                pairs.append(("near", uris[a], uris[b], ds[b], float(min(score, 1.0))))
    return pairs


def _recall(index, parts: Parts, sample: int, seed: int, nprobe: int, restrict: bool) -> float | None:
    """recall@10 of the index against brute force over the rows read, for ``sample`` of them (self excluded)."""
    if sample <= 0 or parts.rows < 2:
        return None
    rng = np.random.default_rng(seed + 1)
    positions = np.sort(rng.choice(parts.rows, size=min(sample, parts.rows), replace=False))
    queries = parts.rows_at(positions)
    own = parts.ids[positions]
    k = min(10, parts.rows - 1)
    _, truth = ann.exact_top_k(queries, parts.blocks(), k + 1)
    scores, found = ann.search(index, queries, k + 1, nprobe, only_ids=parts.ids if restrict else None)
    truth, _ = ann.without_self(truth, np.zeros(truth.shape, np.float32), own, k)
    found, _ = ann.without_self(found, scores, own, k)
    return round(ann.recall_at_k(found, truth, k), 4)


def finish_index(
    staging: str,
    *,
    seconds: float,
    parts: list[dict[str, Any]],
    window: Window,
    cfg,
) -> dict[str, Any]:
    import pyarrow as pa

    started = time.time()
    staged = Parts(parts)
    dropped = {reason: count for reason, count in staged.dropped.items() if count}
    expected = window.summary.rows
    if staged.rows + sum(dropped.values()) != expected:
        raise AccountingError(
            f"{expected} input rows of {window.summary.model_id!r}, but {staged.rows} staged and "
            f"{sum(dropped.values())} dropped"
        )
    previous_rows = None
    if window.previous:
        index = ann.read_index(storage.join(window.previous, INDEX_FILE))
        removed = ann.remove_days(index, window.drop)
        previous_rows = _read_parquet(storage.join(window.previous, INDEX_ROWS))
        keep = ~np.isin(previous_rows.column("ds").to_numpy(zero_copy_only=False), window.drop)
        previous_rows = previous_rows.filter(pa.array(keep))
        if previous_rows.num_rows != index.ntotal:
            listed = previous_rows.num_rows
            raise AccountingError(f"{window.previous}: {index.ntotal} rows in the index, {listed} listed")
        params = ann.IndexParams.from_manifest(window.previous_manifest["parameters"])
        trained_on = window.previous_manifest["parameters"].get("trained_on", [])
        LOG.info("extending %s: %d rows removed (%s), adding %d", window.previous, removed, window.drop, staged.rows)
        train_seconds = 0.0
    else:
        if staged.rows == 0:
            raise AccountingError("no rows left to index (every row was dropped)")
        params = ann.choose_params(staged.rows, window.summary.dim, cfg.exact_below, cfg.nlist, cfg.nprobe)
        index = ann.new_index(params)
        t = time.perf_counter()
        if params.kind == ann.KIND_IVF:
            ann.train(index, params, staged.sample(params.train_rows, cfg.seed), cfg.seed)
        train_seconds = time.perf_counter() - t
        trained_on = list(window.read)
    t = time.perf_counter()
    for ids, x in staged.blocks():
        ann.add(index, ids, x.astype(np.float32))
    add_seconds = time.perf_counter() - t
    if previous_rows is None:
        all_rows = staged.meta
    else:  # a night whose every row was dropped adds nothing (and its empty table has no columns)
        all_rows = pa.concat_tables([previous_rows, staged.meta]) if staged.rows else previous_rows
    if all_rows.num_rows != index.ntotal:
        raise AccountingError(f"{index.ntotal} rows in the index, {all_rows.num_rows} listed")
    build_seconds = train_seconds + add_seconds

    recall = _recall(index, staged, cfg.recall_sample, cfg.seed, params.nprobe, restrict=window.previous is not None)
    exact_pairs, exact_rows, exact_groups = _exact_duplicates(all_rows, window.ds)
    near_pairs = _near_duplicates(index, staged, all_rows, cfg.duplicate_threshold, params.nprobe, window.ds)
    columns = list(zip(*(exact_pairs + near_pairs), strict=True)) or [[]] * len(DUPLICATE_COLUMNS)
    duplicates = pa.Table.from_arrays(
        [pa.array(list(values), type=schema.type) for values, schema in zip(columns, _dup_schema(), strict=True)],
        schema=_dup_schema(),
    )

    ann.write_index(index, storage.join(staging, INDEX_FILE))
    _write_parquet(all_rows.sort_by("id"), storage.join(staging, INDEX_ROWS))
    _write_parquet(duplicates, storage.join(staging, DUPLICATES_FILE))
    storage.remove_tree(storage.join(staging, PARTS_DIR))
    window_nights = sorted(set(all_rows.column("ds").to_pylist()))
    LOG.info(
        "index: %d rows (%s) in %.1fs, recall@10 %s, %d exact-duplicate rows, %d near-duplicate pairs",
        index.ntotal,
        params.kind,
        build_seconds,
        recall,
        exact_rows,
        len(near_pairs),
    )
    return {
        "library": ann.library_version(),
        "parameters": {**params.as_dict(), "metric": "cosine", "trained_on": trained_on},
        "model_id": window.summary.model_id,
        "embedding_dim": window.summary.dim,
        "rows": int(index.ntotal),
        "window_days": cfg.window_days,
        "partitions": window_nights,
        "partition_run_ids": {night: window.run_ids.get(night, "") for night in window_nights},
        "partitions_read": list(window.read),
        "mode": "extended" if window.previous else "rebuilt",
        "extended_from": window.previous,
        "rows_read": staged.rows,
        "rows_dropped": dropped,
        "train_seconds": round(train_seconds, 3),
        "add_seconds": round(add_seconds, 3),
        "build_seconds": round(build_seconds, 3),
        "finish_seconds": round(time.time() - started, 3),
        "recall_at_10": recall,
        "recall_sample": min(cfg.recall_sample, staged.rows),
        "duplicate_threshold": cfg.duplicate_threshold,
        "exact_duplicate_rows": exact_rows,
        "exact_duplicate_groups": exact_groups,
        "near_duplicate_pairs": len(near_pairs),
        "files": {"index": INDEX_FILE, "rows": INDEX_ROWS, "duplicates": DUPLICATES_FILE},
    }


def _dup_schema():
    return storage.arrow_schema(DUPLICATE_COLUMNS)
