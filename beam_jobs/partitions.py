"""The one reader of extraction output: partitions, their files, what the files hold, windows of nights.

The extraction job writes one ``ds=YYYY-MM-DD`` folder per night (``<output_root>/embeddings/ds=.../``) holding
``embeddings-*.parquet`` and ``manifest.json``. Every job that reads embeddings (reduce_dim, build_index, compare,
and the extraction's own ``--skip_known``) finds and checks them here, so the jobs import nothing of each other:

  partition_of / folder_name     which night a file sits in (the date / the folder's name)
  file_pattern / embedding_files a partition folder (or a glob of them) -> its embeddings files, listed
  inspect_inputs -> InputSummary the launcher's check: Parquet footers, the model_id column, one row per file
  window_partitions              the night and the earlier nights of a window that exist beside it
  files_beside                   the embeddings files of the other partitions beside an output (``--skip_known``)
  read_manifest                  a partition's manifest.json, when it has one

Listing, footers and manifests only: reading rows (blocks, columns) is each job's own. Hidden folders (the
staging and trash of running or killed jobs start with a dot) are never partitions.
"""

from __future__ import annotations

import datetime as dt
import os
import re
from collections.abc import Sequence
from dataclasses import dataclass
from typing import Any

from apache_beam.io.filesystems import FileSystems

from beam_jobs import storage
from beam_jobs.contract import EMBEDDING_FILES, MANIFEST
from beam_jobs.runtime import InputError

# The columns of the extraction output (contract.EMBEDDING_COLUMNS) every reader needs.
REQUIRED_COLUMNS = ("image_uri", "embedding", "model_id")
# The ``ds`` label of rows whose file sits in no ``ds=YYYY-MM-DD`` folder (maps and manifest).
NO_PARTITION = "(no ds)"
_PARTITION = re.compile(r"(?:^|/)ds=(\d{4}-\d{2}-\d{2})(?=/|$)")


def partition_of(path: str) -> str | None:
    """The ``ds=YYYY-MM-DD`` partition a file sits in (its date), if any."""
    found = _PARTITION.findall(path)
    return found[-1] if found else None


def folder_of(path: str) -> str:
    """The folder a file sits in."""
    return path.rsplit("/", 1)[0]


def folder_name(path: str) -> str:
    """The name of the folder a file sits in (``ds=YYYY-MM-DD`` for a partition's file)."""
    return folder_of(path).rsplit("/", 1)[-1]


def partition_folders(files: Sequence[str]) -> list[str]:
    """The partition folder names (``ds=...``) the files sit in, sorted."""
    return sorted({folder_name(f) for f in files})


def file_pattern(spec: str) -> str:
    """A partition directory (or a glob of them) -> the glob of its embeddings files; a file glob stays."""
    last = spec.rstrip("/").rsplit("/", 1)[-1]
    if last.endswith(".parquet"):
        return spec
    return storage.join(spec, EMBEDDING_FILES)


def hidden(path: str) -> bool:
    """True for a path under a dot folder: staging and trash of running or killed jobs."""
    return any(part.startswith(".") and part not in (".", "..") for part in path.split("/"))


def embedding_files(inputs: Sequence[str]) -> list[str]:
    """The embeddings files of ``inputs`` (partition folders, globs of them, or globs of files), sorted.

    Each input must match at least one file (``InputError`` naming it). Empty (0-byte) files are kept:
    a truncated file, refused by ``inspect_inputs`` with its name.
    """
    files: list[str] = []
    for spec in inputs:
        pattern = file_pattern(spec)
        try:
            matched = FileSystems.match([pattern])[0].metadata_list
        except Exception as exc:
            raise InputError(f"--input {spec!r}: cannot list {pattern!r}: {exc}") from exc
        found = sorted(m.path for m in matched if not hidden(m.path))
        if not found:
            raise InputError(f"--input {spec!r} matches no embeddings files ({pattern!r})")
        files.extend(found)
    return sorted(set(files))


def refuse_special_file(path: str) -> None:
    """A local FIFO (or device) matched by a glob would block the read forever: refuse it by name."""
    if not storage.is_local(path):
        return
    if kind := storage.not_regular(os.stat(path).st_mode):
        raise InputError(f"{path} is {kind}; only regular Parquet files are read")


def open_parquet(path: str):
    """(the open handle, a ``pyarrow.parquet.ParquetFile`` on it): close the handle when done."""
    import pyarrow.parquet as pq

    handle = FileSystems.open(path, compression_type="uncompressed")
    return handle, pq.ParquetFile(handle)


@dataclass
class InputSummary:
    """What the launcher learnt about the inputs; the pipeline's stages take their fields."""

    files: list[str]
    rows_total: int  # of every model
    rows: int  # of the selected model: the rows the job must read
    model_id: str
    dim: int
    partitions: list[str]


def inspect_inputs(inputs: Sequence[str], model_id: str | None = None) -> InputSummary:
    """Check the inputs before any work: reads Parquet footers, the model_id column and one row per file.

    A bad input is refused in seconds with one clear line (``InputError``): a file that is not Parquet
    (truncated, corrupt, unreadable) or not extraction output, no rows, several models without
    ``model_id``, or rows of the chosen model of different lengths.

    Args:
        inputs: the ``--input`` values (partition directories, globs of them, or globs of files).
        model_id: keep only rows of this model; None: the input must hold one model.
    """
    import pyarrow.compute as pc

    files = embedding_files(inputs)
    model_rows: dict[str, int] = {}
    # model_id -> vector length -> files: one partition may hold several models (``--model a,b``), each with
    # its own length, in the same files; only the chosen model's rows must agree.
    model_dims: dict[str, dict[int, list[str]]] = {}
    rows_total = 0
    for path in files:
        try:
            refuse_special_file(path)
            handle, parquet = open_parquet(path)
            with handle:
                missing = [c for c in REQUIRED_COLUMNS if c not in parquet.schema_arrow.names]
                if missing:
                    raise InputError(f"{path} is not extraction output: it lacks column(s) {', '.join(missing)}")
                file_rows = parquet.metadata.num_rows
                if file_rows == 0:
                    continue
                ids = parquet.read(columns=["model_id"]).column("model_id")
                counts = pc.value_counts(ids).to_pylist()
                dims = {e["values"]: _length_at(parquet, pc.index(ids, e["values"]).as_py()) for e in counts}
        except InputError:
            raise
        except Exception as exc:  # pyarrow's ArrowInvalid, OSError, or a filesystem's own errors
            raise InputError(
                f"{path} cannot be read as Parquet (truncated, corrupt or unreadable): {_one_line(exc)}"
            ) from exc
        rows_total += file_rows
        for entry in counts:
            model_rows[entry["values"]] = model_rows.get(entry["values"], 0) + entry["counts"]
        for model, dim in dims.items():
            model_dims.setdefault(model, {}).setdefault(dim, []).append(path)
    if rows_total == 0:
        raise InputError(f"no input rows: {len(files)} embeddings file(s) matched but all are empty")
    listing = ", ".join(f"{m!r} ({count} rows)" for m, count in sorted(model_rows.items()))
    if model_id is not None:
        if model_id not in model_rows:
            raise InputError(f"--model_id {model_id!r} has no rows in the input; it holds {listing}")
        chosen = model_id
    elif len(model_rows) > 1:
        raise InputError(
            f"input mixes embeddings of {len(model_rows)} models: {listing}. "
            "Their vectors are not comparable; pick one with --model_id"
        )
    else:
        chosen = next(iter(model_rows))
    files_by_dim = model_dims[chosen]
    if len(files_by_dim) > 1:
        detail = "; ".join(f"length {d} in {len(p)} file(s), e.g. {p[0]}" for d, p in sorted(files_by_dim.items()))
        raise InputError(f"input rows have different embedding lengths: {detail}")
    partitions = sorted({partition_of(f) or NO_PARTITION for f in files})
    return InputSummary(files, rows_total, model_rows[chosen], chosen, next(iter(files_by_dim)), partitions)


def _length_at(parquet, row: int) -> int:
    """Length of the embedding in row ``row`` of a file, reading only the row group that holds it."""
    for group in range(parquet.metadata.num_row_groups):
        size = parquet.metadata.row_group(group).num_rows
        if row < size:
            return len(parquet.read_row_group(group, columns=["embedding"]).column(0)[row])
        row -= size
    raise ValueError(f"row {row} is beyond the file's rows")


def _one_line(exc: BaseException) -> str:
    text = " ".join(str(exc).split()) or type(exc).__name__
    return text if len(text) <= 300 else text[:297] + "..."


# --------------------------------------------------------------------------- nights beside one another


def _parent_and_ds(spec: str) -> tuple[str, str | None]:
    folder = spec.rstrip("/")
    ds = partition_of(folder + "/")
    parent = folder.rsplit("/", 1)[0] if ds and folder.rsplit("/", 1)[-1].startswith("ds=") else folder
    return parent, ds


def has_files(folder: str) -> bool:
    """True when the partition folder holds embeddings files (a missing folder holds none)."""
    try:
        return bool(FileSystems.match([file_pattern(folder)])[0].metadata_list)
    except Exception:  # noqa: BLE001 - a missing folder matches nothing
        return False


def window_partitions(inputs: Sequence[str], window_days: int) -> tuple[str, dict[str, str]]:
    """(the night, {night: partition folder}) for the inputs and the ``window_days`` before them that exist.

    Each input must be a partition folder (``…/ds=YYYY-MM-DD``): a window is counted in nights.
    """
    folders: dict[str, str] = {}
    dates = []
    for spec in inputs:
        parent, ds = _parent_and_ds(spec)
        if ds is None:
            raise InputError(f"--input {spec!r} is not a partition folder (…/ds=YYYY-MM-DD)")
        dates.append(ds)
        day = dt.date.fromisoformat(ds)
        folders[ds] = spec.rstrip("/")
        for back in range(1, window_days):
            earlier = (day - dt.timedelta(days=back)).isoformat()
            folder = f"{parent}/ds={earlier}"
            if earlier not in folders and has_files(folder):
                folders[earlier] = folder
    return max(dates), dict(sorted(folders.items()))


def files_beside(output: str) -> list[str]:
    """Embeddings files of the other ``ds=`` partitions beside ``output`` (listing only), sorted.

    Hidden folders (staging and trash of running or killed jobs) are not partitions; the output's own
    partition is left out: it is replaced by the run that writes ``output``.
    """
    parent, own = output.rstrip("/").rsplit("/", 1)
    pattern = storage.join(parent, "ds=*", EMBEDDING_FILES)
    try:
        (found,) = FileSystems.match([pattern])
    except Exception:  # noqa: BLE001 - no earlier partition matches nothing
        return []
    files = []
    for meta in found.metadata_list:
        name = folder_name(meta.path)
        if name != own and name.startswith("ds="):
            files.append(meta.path)
    return sorted(files)


def read_manifest(folder: str) -> dict[str, Any] | None:
    """The partition's manifest.json, or None when it has none (hand-made input) or it cannot be read."""
    try:
        manifest = storage.read_json(storage.join(folder, MANIFEST))
    except Exception:  # noqa: BLE001 - no manifest, unreadable or not JSON: callers do without it
        return None
    return manifest if isinstance(manifest, dict) else None
