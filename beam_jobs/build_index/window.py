"""Which nights an index holds and which it must read: the window, and reuse of an earlier index.

Runs in the launcher before the pipeline is built: it lists partitions and reads
Parquet footers and manifests only (the nights and their files through
``beam_jobs.partitions``). An earlier index partition beside ``--output`` is
extended (nights that left the window dropped, new nights added) when it was
built from the same model with the same index kind and its IVF centroids were
trained on nights still inside the window; otherwise every night is read again.
A night whose embeddings were re-extracted since (another ``run_id`` in its
manifest) is read again too.
"""

from __future__ import annotations

import datetime as dt
import logging
from collections.abc import Sequence
from dataclasses import dataclass, field

from apache_beam.io.filesystems import FileSystems

from beam_jobs import storage
from beam_jobs.build_index import ann
from beam_jobs.contract import INDEX_FILE, INDEX_ROWS
from beam_jobs.partitions import InputSummary, inspect_inputs, partition_of, read_manifest, window_partitions
from beam_jobs.runtime import InputError

LOG = logging.getLogger(__name__)


@dataclass
class Window:
    """The launcher's decisions for one run."""

    ds: str  # the night (the newest input partition)
    partitions: list[str]  # every night the index will hold
    read: list[str]  # partition folders this run reads
    files: list[tuple[str, int]]  # (embeddings file, first row number within its partition)
    summary: InputSummary  # of the files read
    previous: str | None = None  # the earlier index partition extended, if any
    previous_manifest: dict = field(default_factory=dict)
    drop: list[str] = field(default_factory=list)  # nights removed from the earlier index
    run_ids: dict[str, str] = field(default_factory=dict)  # night -> run_id of its embeddings manifest


def find_previous(output: str, ds: str | None, window_days: int) -> tuple[str, dict] | None:
    """The newest earlier index partition beside ``output`` inside the window, with its manifest."""
    if ds is None:
        return None
    parent = output.rstrip("/").rsplit("/", 1)[0]
    first = (dt.date.fromisoformat(ds) - dt.timedelta(days=window_days - 1)).isoformat()
    for back in range(1, window_days):
        earlier = (dt.date.fromisoformat(ds) - dt.timedelta(days=back)).isoformat()
        folder = f"{parent}/ds={earlier}"
        manifest = read_manifest(folder)
        if manifest is None:  # none there
            continue
        files = (storage.join(folder, INDEX_FILE), storage.join(folder, INDEX_ROWS))
        if earlier >= first and all(FileSystems.exists(f) for f in files):
            return folder, manifest
    return None


def _reusable(previous: dict, model_id: str, dim: int, first_ds: str, cfg_kind_hint: str) -> str | None:
    """Why an earlier index cannot be extended (None: it can)."""
    params = previous.get("parameters") or {}
    if previous.get("model_id") != model_id:
        return f"model_id {previous.get('model_id')!r} differs"
    if params.get("dim") != dim:
        return "embedding length differs"
    if params.get("kind") != cfg_kind_hint:
        return f"index kind {params.get('kind')} differs from {cfg_kind_hint} for this window's size"
    trained_on = params.get("trained_on") or []
    # Centroids trained on old nights still partition new rows, only less evenly as content drifts:
    # retrain once half of the nights they were trained on have left the window.
    still_in = [night for night in trained_on if night >= first_ds]
    if params.get("kind") == ann.KIND_IVF and 2 * len(still_in) < len(trained_on):
        return "half of the nights its centroids were trained on have left the window"
    return None


def file_offsets(files: Sequence[str]) -> list[tuple[str, int]]:
    """(file, first row number) so that every row of a partition gets its own id: Parquet footers only."""
    out: list[tuple[str, int]] = []
    offsets: dict[str, int] = {}
    for path in sorted(files):
        key = partition_of(path) or ""
        out.append((path, offsets.get(key, 0)))
        offsets[key] = offsets.get(key, 0) + storage.parquet_row_count(path)
    if any(total >= 1 << ann.DAY_SHIFT for total in offsets.values()):
        raise InputError("a partition holds more than 2^32 rows; ids would collide")
    return out


def plan_window(
    inputs: Sequence[str],
    output: str,
    window_days: int,
    model_id: str | None,
    extend: bool,
    exact_below: int,
) -> Window:
    """Decide what the run reads and whether it extends an earlier index (footers and manifests only)."""
    ds, folders = window_partitions(inputs, window_days)
    everything = inspect_inputs(list(folders.values()), model_id)
    # A night without a manifest (hand-made input) has no run_id: it is never reused.
    run_ids = {night: (read_manifest(folder) or {}).get("run_id") or "" for night, folder in folders.items()}
    read = dict(folders)
    previous = found = None
    drop: list[str] = []
    if extend and (found := find_previous(output, ds, window_days)):
        previous, manifest = found
        kind = ann.choose_params(everything.rows, everything.dim, exact_below).kind
        first = min(folders)
        why = _reusable(manifest, everything.model_id, everything.dim, first, kind)
        if why:
            LOG.info("not extending %s: %s; reading all %d night(s)", previous, why, len(folders))
            previous = found = None
        else:
            held = manifest.get("partition_run_ids") or {}
            # Nights held with the same embeddings run are kept; the rest are (re)read.
            read = {n: f for n, f in folders.items() if not (n in held and held[n] == run_ids[n] and run_ids[n])}
            drop = sorted(n for n in held if n not in folders or n in read)
    if not read:
        raise InputError(f"nothing new to index: every night of the window is already in {previous}")
    summary = inspect_inputs(list(read.values()), everything.model_id) if previous else everything
    files = file_offsets(summary.files)
    return Window(
        ds=ds,
        partitions=list(folders),
        read=list(read),
        files=files,
        summary=summary,
        previous=previous,
        previous_manifest=found[1] if found else {},
        drop=drop,
        run_ids=run_ids,
    )
