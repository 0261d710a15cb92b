"""The report's reads of extraction output: blocks of one model's rows, seeded samples of nights, and a PCA.

Nothing here holds a night whole. A night is read block by block (``block_rows`` rows of its
Parquet files, file after file); a block's rows of other models, and rows whose embedding holds a
NaN or an infinity, are left out; the rest are L2-normalised (the report compares images by
cosine, as the index does). ``sample_nights`` keeps a seeded uniform sample of the window's rows,
and, apart from it, a few held-out rows per night that calibrate the novelty threshold.
"""

from __future__ import annotations

import datetime as dt
from collections.abc import Iterator, Sequence
from dataclasses import dataclass, field

import numpy as np

from beam_jobs import storage
from beam_jobs.contract import EMBEDDING_FILES

COLUMNS = ("image_uri", "embedding", "model_id")
HELD_OUT_PER_NIGHT = 1000  # rows per earlier night kept apart from the sample (the threshold's calibration)
READ_BUFFER = 8 << 20  # bytes: a row group is read through this buffer, never whole


def _hidden(path: str) -> bool:
    return any(part.startswith(".") and part not in (".", "..") for part in path.split("/"))


def embedding_files(folder: str) -> list[str]:
    """The embeddings files of a partition folder (none when it has none, or does not exist)."""
    from apache_beam.io.filesystems import FileSystems

    try:
        matched = FileSystems.match([storage.join(folder, EMBEDDING_FILES)])[0].metadata_list
    except Exception:  # noqa: BLE001 - a missing folder matches nothing
        return []
    return sorted(m.path for m in matched if not _hidden(m.path) and m.size_in_bytes > 0)


def _open(path: str):
    """A Parquet file that streams. pyarrow 25's ``ParquetFile`` pre-buffers by default: ``iter_batches`` then
    reads every wanted column chunk of the file first (a 4 GB file of 500,000 rows peaked at 4.9 GB RSS);
    without it, row group by row group with a bounded read buffer, the same file peaks at 0.36 GB."""
    import pyarrow.parquet as pq
    from apache_beam.io.filesystems import FileSystems

    handle = FileSystems.open(path, compression_type="uncompressed")
    return handle, pq.ParquetFile(handle, pre_buffer=False, buffer_size=READ_BUFFER)


def model_rows(files: Sequence[str]) -> dict[str, int]:
    """model_id -> rows in ``files`` (reads the model_id column only)."""
    import pyarrow.compute as pc

    counts: dict[str, int] = {}
    for path in files:
        handle, parquet = _open(path)
        with handle:
            if parquet.metadata.num_rows == 0:
                continue
            for entry in pc.value_counts(parquet.read(columns=["model_id"]).column("model_id")).to_pylist():
                counts[entry["values"]] = counts.get(entry["values"], 0) + entry["counts"]
    return counts


def normalise(x: np.ndarray) -> np.ndarray:
    """Rows to unit length in place (all-zero rows stay zero)."""
    norms = np.linalg.norm(x, axis=1, keepdims=True)
    np.divide(x, np.maximum(norms, 1e-12), out=x)
    return x


@dataclass
class Block:
    uris: np.ndarray  # (n,) object
    x: np.ndarray  # (n, dim) float32, unit rows


@dataclass
class ReadStats:
    rows: int = 0
    dropped_non_finite: int = 0
    dropped_other_dim: int = 0


@dataclass
class RawBlock:
    """A block of one model's rows as read: the Arrow batch and a read-only view of its vectors. ``take`` copies
    the rows wanted (a window night keeps a few percent of them: the rest are never copied)."""

    batch: object  # pyarrow.RecordBatch
    x: np.ndarray  # (n, dim) float32, read-only
    stats: ReadStats

    def __len__(self) -> int:
        return len(self.x)

    def take(self, index: np.ndarray | None = None) -> Block:
        """Rows ``index`` (all when None), finite ones only, at unit length."""
        x = np.array(self.x if index is None else self.x[index], dtype=np.float32)
        uris_column = self.batch.column("image_uri")
        if index is not None:
            uris_column = uris_column.take(np.asarray(index, dtype=np.int64))
        uris = uris_column.to_numpy(zero_copy_only=False)
        finite = np.isfinite(x).all(axis=1)
        if not finite.all():
            self.stats.dropped_non_finite += int((~finite).sum())
            x, uris = x[finite], uris[finite]
        return Block(uris, normalise(x))


def iter_raw(
    files: Sequence[str], model_id: str, block_rows: int, dim: int | None = None, stats: ReadStats | None = None
) -> Iterator[RawBlock]:
    """Blocks of ``model_id``'s rows (at most ``block_rows``, within one row group), file after file, row group
    after row group; rows of another length than ``dim`` are skipped (``dim`` None: the first block's length)."""
    import pyarrow.compute as pc

    stats = stats if stats is not None else ReadStats()
    for path in files:
        handle, parquet = _open(path)
        with handle:
            batches = (
                batch
                for group in range(parquet.metadata.num_row_groups)
                for batch in parquet.iter_batches(
                    batch_size=block_rows, row_groups=[group], columns=list(COLUMNS), use_threads=False
                )
            )
            for batch in batches:
                keep = pc.equal(batch.column("model_id"), model_id)
                matching = pc.sum(keep).as_py() or 0
                if matching == 0:
                    continue
                kept = batch if matching == batch.num_rows else batch.filter(keep)
                lengths = pc.list_value_length(kept.column("embedding")).to_numpy(zero_copy_only=False)
                if dim is None:
                    dim = int(lengths[0])
                same = lengths == dim
                if not same.all():
                    stats.dropped_other_dim += int((~same).sum())
                    kept = kept.filter(same)
                if kept.num_rows == 0:
                    continue
                flat = kept.column("embedding").flatten().to_numpy(zero_copy_only=False)
                stats.rows += kept.num_rows
                yield RawBlock(kept, np.asarray(flat, dtype=np.float32).reshape(kept.num_rows, dim), stats)


def vector_length(files: Sequence[str], model_id: str) -> int:
    """The length of ``model_id``'s vectors: that of its first row."""
    for raw in iter_raw(files, model_id, 256):
        return raw.x.shape[1]
    raise ValueError(f"no rows of {model_id!r} in {len(files)} file(s)")


def iter_blocks(
    files: Sequence[str], model_id: str, block_rows: int, dim: int | None = None, stats: ReadStats | None = None
) -> Iterator[Block]:
    """Every finite row of ``model_id``, block by block, at unit length."""
    for raw in iter_raw(files, model_id, block_rows, dim, stats):
        block = raw.take()
        if len(block.uris):
            yield block


def night_seed(seed: int, ds: str) -> np.random.Generator:
    return np.random.default_rng([int(seed) & 0xFFFFFFFF, dt.date.fromisoformat(ds).toordinal()])


@dataclass
class Rows:
    """Rows kept from one or more nights: parallel arrays."""

    uris: np.ndarray = field(default_factory=lambda: np.empty(0, object))
    ds: np.ndarray = field(default_factory=lambda: np.empty(0, object))
    x: np.ndarray = field(default_factory=lambda: np.empty((0, 0), np.float32))

    def __len__(self) -> int:
        return len(self.uris)

    @classmethod
    def concat(cls, parts: list[Rows], dim: int) -> Rows:
        parts = [p for p in parts if len(p)]
        if not parts:
            return cls(x=np.empty((0, dim), np.float32))
        return cls(
            np.concatenate([p.uris for p in parts]),
            np.concatenate([p.ds for p in parts]),
            np.concatenate([p.x for p in parts]),
        )

    def subset(self, mask_or_index) -> Rows:
        return Rows(self.uris[mask_or_index], self.ds[mask_or_index], self.x[mask_or_index])


@dataclass
class WindowSample:
    """The window as the report sees it: a uniform seeded sample and held-out rows per night."""

    sample: Rows
    held: Rows
    rows_by_night: dict[str, int]  # the model's rows in each night read
    stats: ReadStats

    @property
    def rows(self) -> int:
        return sum(self.rows_by_night.values())


def sample_nights(
    nights: dict[str, list[str]],
    model_id: str,
    dim: int,
    rows_by_night: dict[str, int],
    target: int,
    block_rows: int,
    seed: int,
    held_per_night: int = HELD_OUT_PER_NIGHT,
) -> WindowSample:
    """One pass over each night: every row draws u ~ U(0, 1) from the night's seeded stream (files sorted,
    blocks in order, so the same rows every run); u < p_held goes to the held-out rows, the next ``p_sample``
    to the sample, where p_sample = target / (the window's rows): the sample is uniform over the window."""
    total = sum(rows_by_night.values())
    stats = ReadStats()
    samples: list[Rows] = []
    helds: list[Rows] = []
    for night, files in sorted(nights.items()):
        rows = rows_by_night.get(night, 0)
        if rows == 0:
            continue
        p_held = min(held_per_night, rows // 5) / rows
        p_sample = min(1.0 - p_held, target / total)
        rng = night_seed(seed, night)
        for raw in iter_raw(files, model_id, block_rows, dim, stats):
            u = rng.random(len(raw))
            for rows_out, index in (
                (helds, np.flatnonzero(u < p_held)),
                (samples, np.flatnonzero((u >= p_held) & (u < p_held + p_sample))),
            ):
                if len(index):
                    block = raw.take(index)
                    rows_out.append(Rows(block.uris, np.full(len(block.uris), night, dtype=object), block.x))
    return WindowSample(Rows.concat(samples, dim), Rows.concat(helds, dim), dict(rows_by_night), stats)


def sample_rows(files: Sequence[str], model_id: str, dim: int, rows: int, target: int, block_rows: int, seed: int):
    """A seeded uniform sample of about ``target`` of one night's rows (of ``rows``), and the read's stats."""
    stats = ReadStats()
    rng = np.random.default_rng([int(seed) & 0xFFFFFFFF, 1])
    p = min(1.0, target / max(rows, 1))
    parts = []
    for raw in iter_raw(files, model_id, block_rows, dim, stats):
        index = np.flatnonzero(rng.random(len(raw)) < p)
        if len(index):
            block = raw.take(index)
            parts.append(Rows(block.uris, np.full(len(block.uris), "", dtype=object), block.x))
    return Rows.concat(parts, dim), stats


# --------------------------------------------------------------------------- PCA


@dataclass
class Pca:
    """The reduced space: ``dims`` top principal axes of a pooled sample (window and tonight)."""

    mean: np.ndarray  # (dim,) float32
    components: np.ndarray  # (dims, dim) float32
    explained_variance_ratio: np.ndarray  # (dims,)

    def project(self, x: np.ndarray) -> np.ndarray:
        return np.ascontiguousarray((x - self.mean) @ self.components.T, dtype=np.float32)


def fit_pca(x: np.ndarray, dims: int) -> Pca:
    """Top ``dims`` axes of the rows' covariance (one symmetric eigendecomposition)."""
    from scipy.linalg import eigh

    x = np.asarray(x, np.float32)
    n, dim = x.shape
    mean = x.mean(axis=0, dtype=np.float64)
    centred = x - mean.astype(np.float32)
    cov = (centred.T @ centred).astype(np.float64) / max(n - 1, 1)
    kept = max(1, min(dims, dim, n - 1))
    values, vectors = eigh(cov, subset_by_index=[dim - kept, dim - 1])
    order = np.argsort(values)[::-1]
    components = vectors[:, order].T
    signs = np.sign(components[np.arange(kept), np.argmax(np.abs(components), axis=1)])
    signs[signs == 0] = 1.0
    total = float(np.trace(cov))
    ratio = np.clip(values[order], 0, None) / total if total > 0 else np.zeros(kept)
    return Pca(mean.astype(np.float32), (components * signs[:, None]).astype(np.float32), ratio)
