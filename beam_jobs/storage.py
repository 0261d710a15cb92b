"""Paths and small files through Beam's FileSystems: the same calls read and write ``/local/dir`` and ``gs://``.

How a run's output is staged beside it and swapped in whole, and what a killed run left swept away, is
``beam_jobs.publish``.
"""

from __future__ import annotations

import json
import mimetypes
import os
import shutil
import stat
import uuid

from apache_beam.io.filesystems import FileSystems


def arrow_schema(columns: tuple[tuple[str, str], ...]):
    """A pyarrow schema from ``contract``'s (name, type) columns: "string", "int32", "list<float32>"..."""
    import pyarrow as pa

    def arrow_type(name: str):
        if name.startswith("list<"):
            return pa.list_(arrow_type(name[5:-1]))
        return pa.type_for_alias(name)

    return pa.schema([(column, arrow_type(kind)) for column, kind in columns])


def not_regular(mode: int) -> str | None:
    """None for a regular file; otherwise what it is, for a message. Opening a FIFO blocks
    until a writer appears, so both jobs check ``os.stat`` with this before any open()."""
    if stat.S_ISREG(mode):
        return None
    if stat.S_ISDIR(mode):
        return "a directory"
    return "a FIFO" if stat.S_ISFIFO(mode) else "not a regular file"


def is_local(path: str) -> bool:
    return FileSystems.get_scheme(path) in (None, "file")


def join(base: str, *parts: str) -> str:
    return FileSystems.join(base.rstrip("/"), *parts)


def remove_tree(path: str) -> None:
    """Best effort: a folder (local) or every object under a prefix (object stores)."""
    if is_local(path):
        shutil.rmtree(path, ignore_errors=True)
        return
    try:
        leftovers = list_files(path)
        if leftovers:
            FileSystems.delete(leftovers)
    except Exception:  # noqa: BLE001 - cleaning up must never fail a run
        pass


def parquet_row_count(path: str) -> int:
    """Rows of a Parquet file, from its footer alone."""
    import pyarrow.parquet as pq

    with FileSystems.open(path, compression_type="uncompressed") as handle:
        return pq.read_metadata(handle).num_rows


def file_size(path: str) -> int:
    return FileSystems.match([path])[0].metadata_list[0].size_in_bytes


def list_files(directory: str) -> list[str]:
    pattern = join(directory, "**")
    try:
        result = FileSystems.match([pattern])[0]
    except Exception:  # noqa: BLE001 - a missing directory matches nothing
        return []
    return sorted(m.path for m in result.metadata_list)


def mime_type_of(path: str) -> str:
    """What an object store should serve the file as (map.html as text/html, not JSON)."""
    return mimetypes.guess_type(path)[0] or "application/octet-stream"


def write_bytes(path: str, data: bytes) -> None:
    """Write a whole small file; locally through a temp file and a rename, so readers never see half."""
    if is_local(path):
        os.makedirs(os.path.dirname(path) or ".", exist_ok=True)
        tmp = f"{path}.tmp-{uuid.uuid4().hex[:8]}"
        with open(tmp, "wb") as handle:
            handle.write(data)
        os.replace(tmp, path)
        return
    with FileSystems.create(path, mime_type=mime_type_of(path)) as handle:
        handle.write(data)


def write_text(path: str, text: str) -> None:
    write_bytes(path, text.encode("utf-8"))


def read_text(path: str) -> str:
    with FileSystems.open(path, compression_type="uncompressed") as handle:
        return handle.read().decode("utf-8")


def write_json(path: str, obj: dict) -> None:
    write_text(path, json.dumps(obj, indent=2, sort_keys=True, default=str) + "\n")


def read_bytes(path: str, limit: int = -1) -> bytes:
    """The file's bytes, or its first ``limit`` bytes (a caller checking a size reads no more than it needs)."""
    with FileSystems.open(path, compression_type="uncompressed") as handle:
        return handle.read(limit)


def read_json(path: str) -> dict:
    return json.loads(read_text(path))
