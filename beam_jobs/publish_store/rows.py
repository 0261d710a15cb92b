"""The night's rows as the store holds them: the embeddings partition (and its projections) as Arrow batches.

One table per model_id; its columns (``store_schema``):

    image_uri string, ds string, content_sha256 string, embedding fixed_size_list<float32>[dim],
    width int32, height int32, run_id string, <method>_x float32, <method>_y float32 (each of contract.METHODS)

``embedding`` is a fixed-size list, which is what Lance indexes and searches. The projection columns are null
where the night has no projection of that method (or the image is not on it). The schema's metadata names the
model_id and the vector length: a table refuses a night of another model or length before anything is written.

The partition is read file by file, row group by row group (``source_batches``): memory holds one row group,
not the night, so a night of millions of rows streams into the store's commit.
"""

from __future__ import annotations

import logging
from collections.abc import Iterator, Sequence
from dataclasses import dataclass

from beam_jobs import partitions, storage
from beam_jobs.contract import METHODS, PROJECTION_FILES
from beam_jobs.publish_store.config import table_name  # noqa: F401 - re-exported beside store_schema
from beam_jobs.runtime import InputError

LOG = logging.getLogger(__name__)

STORE_FORMAT = "image-embeddings-store/1"
META_MODEL_ID = "model_id"
META_DIM = "embedding_dim"
META_FORMAT = "format"
EMBEDDING_SOURCE_COLUMNS = ("image_uri", "embedding", "model_id", "content_sha256", "width", "height", "run_id")


def coordinate_columns(methods: Sequence[str] = METHODS) -> list[str]:
    return [f"{m}_{axis}" for m in methods for axis in ("x", "y")]


def store_schema(model_id: str, dim: int):
    import pyarrow as pa

    columns = [
        pa.field("image_uri", pa.string(), nullable=False),
        pa.field("ds", pa.string(), nullable=False),
        pa.field("content_sha256", pa.string()),
        pa.field("embedding", pa.list_(pa.float32(), dim), nullable=False),
        pa.field("width", pa.int32()),
        pa.field("height", pa.int32()),
        pa.field("run_id", pa.string()),
        *(pa.field(name, pa.float32()) for name in coordinate_columns()),
    ]
    meta = {META_MODEL_ID: model_id, META_DIM: str(dim), META_FORMAT: STORE_FORMAT}
    return pa.schema(columns, metadata=meta)


@dataclass
class Night:
    """One night's partition, checked: its files, date, and per model_id its rows and vector length."""

    folder: str
    ds: str
    files: list[str]
    models: dict[str, tuple[int, int]]  # model_id -> (rows, dim)


def inspect_night(folder: str, ds: str | None, model_id: str | None) -> Night:
    """The partition's files and models (footers and the model_id column only); InputError when unusable."""
    found = partitions.partition_of(folder.rstrip("/") + "/")
    day = ds or found
    if not day:
        raise InputError(f"--input {folder!r} is not a ds=YYYY-MM-DD partition folder: give the date with --ds")
    if ds and found and ds != found:
        raise InputError(f"--ds {ds} contradicts the input's partition ds={found}")
    summary_all = partitions.inspect_inputs([folder], model_id) if model_id else None
    files = summary_all.files if summary_all else partitions.embedding_files([folder])
    models: dict[str, tuple[int, int]] = {}
    ids = [model_id] if model_id else _model_ids(files)
    for mid in ids:
        summary = summary_all if summary_all and mid == model_id else partitions.inspect_inputs([folder], mid)
        models[mid] = (summary.rows, summary.dim)
    return Night(folder.rstrip("/"), day, files, models)


def _model_ids(files: list[str]) -> list[str]:
    import pyarrow.compute as pc

    ids: set[str] = set()
    for path in files:
        partitions.refuse_special_file(path)
        handle, parquet = partitions.open_parquet(path)
        with handle:
            if parquet.metadata.num_rows:
                ids.update(pc.unique(parquet.read(columns=["model_id"]).column(0)).to_pylist())
    if not ids:
        raise InputError(f"no input rows: {len(files)} embeddings file(s) matched but all are empty")
    return sorted(ids)


# --------------------------------------------------------------------------- projections


@dataclass
class Coordinates:
    """One method's 2D coordinates of a model's rows of the night: ``table`` (image_uri, x, y) from ``folder``."""

    folder: str
    table: object


def read_projections(folders: Sequence[str], model_id: str, ds: str) -> dict[str, Coordinates]:
    """method -> this model's coordinates of the night, from the projection partitions (a folder may hold none)."""
    import pyarrow as pa
    import pyarrow.compute as pc
    from apache_beam.io.filesystems import FileSystems

    out: dict[str, Coordinates] = {}
    for folder in folders:
        pattern = storage.join(folder.rstrip("/"), PROJECTION_FILES)
        files = sorted(m.path for m in FileSystems.match([pattern])[0].metadata_list if not partitions.hidden(m.path))
        if not files:
            raise InputError(f"--projections {folder!r} holds no {PROJECTION_FILES}")
        tables = []
        for path in files:
            handle, parquet = partitions.open_parquet(path)
            with handle:
                tables.append(parquet.read(columns=["image_uri", "x", "y", "method", "model_id", "ds"]))
        table = pa.concat_tables(tables)
        table = table.filter(pc.and_(pc.equal(table["model_id"], model_id), pc.equal(table["ds"], ds)))
        for method in pc.unique(table["method"]).to_pylist():
            if method not in METHODS:
                raise InputError(f"{folder}: projection method {method!r} is not one of {', '.join(METHODS)}")
            rows = table.filter(pc.equal(table["method"], method)).select(["image_uri", "x", "y"])
            if method in out:
                raise InputError(f"--projections gives method {method!r} twice")
            out[method] = Coordinates(folder, rows)
    return out


# --------------------------------------------------------------------------- rows


def source_batches(night: Night, model_id: str, run_id: str | None, projections: dict) -> Iterator:
    """The night's rows of ``model_id`` as store batches (``store_schema``), one row group at a time.

    Refuses (InputError) a row whose vector length differs, and an image listed twice for the model.
    ``run_id``: what the rows record (default: the run_id the extraction wrote into each row).
    """
    import pyarrow as pa
    import pyarrow.compute as pc

    _, dim = night.models[model_id]
    schema = store_schema(model_id, dim)
    seen: set[str] = set()
    for path in night.files:
        partitions.refuse_special_file(path)
        handle, parquet = partitions.open_parquet(path)
        with handle:
            for group in range(parquet.metadata.num_row_groups):
                rows = parquet.read_row_group(group, columns=list(EMBEDDING_SOURCE_COLUMNS))
                rows = rows.filter(pc.equal(rows["model_id"], model_id))
                if rows.num_rows == 0:
                    continue
                uris = rows["image_uri"].to_pylist()
                if len(set(uris)) != len(uris) or not seen.isdisjoint(uris):
                    twice = next(u for u in uris if uris.count(u) > 1 or u in seen)
                    raise InputError(f"{path}: image {twice!r} has two rows of {model_id!r}; the partition is broken")
                seen.update(uris)
                yield _store_batch(rows, night.ds, dim, run_id, projections, schema, path, pa, pc)


def _store_batch(rows, ds, dim, run_id, projections, schema, path, pa, pc):
    emb = rows["embedding"].combine_chunks()
    lengths = pc.list_value_length(emb)
    if emb.null_count or pc.any(pc.not_equal(lengths, dim)).as_py():
        bad = pc.filter(lengths, pc.not_equal(lengths, dim)).to_pylist()
        raise InputError(f"{path}: rows with vectors of length {bad[:1] or ['null']}, not {dim}")
    values = pc.list_flatten(emb).cast(pa.float32())
    columns = {
        "image_uri": rows["image_uri"],
        "ds": pa.array([ds] * rows.num_rows, pa.string()),
        "content_sha256": rows["content_sha256"],
        "embedding": pa.FixedSizeListArray.from_arrays(values, dim),
        "width": rows["width"].cast(pa.int32()),
        "height": rows["height"].cast(pa.int32()),
        "run_id": pa.array([run_id] * rows.num_rows, pa.string()) if run_id else rows["run_id"],
    }
    for method in METHODS:
        found = projections.get(method)
        if found is None:
            columns[f"{method}_x"] = columns[f"{method}_y"] = pa.nulls(rows.num_rows, pa.float32())
            continue
        coords = found.table
        at = pc.index_in(rows["image_uri"], value_set=coords["image_uri"])
        columns[f"{method}_x"] = pc.take(coords["x"], at).cast(pa.float32())
        columns[f"{method}_y"] = pc.take(coords["y"], at).cast(pa.float32())
    arrays = [_one_chunk(columns[f.name]) for f in schema]
    return pa.RecordBatch.from_arrays(arrays, schema=schema)


def _one_chunk(array):
    return array.combine_chunks() if hasattr(array, "combine_chunks") else array
