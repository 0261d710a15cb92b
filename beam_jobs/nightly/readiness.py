"""Is tonight's input ready? A snapshot of the input (files, bytes, newest change, marker) and the verdict
of the chosen rule, for the DAG's sensor and the Kubeflow pipeline's wait step. Standard library only.
"""

from __future__ import annotations

import os
import re
from typing import TypedDict

from beam_jobs.contract import InputReady, join

GLOB_CHARS = re.compile(r"[*?\[]")

# The sensor runs in reschedule mode (and a KFP step may be restarted), so nothing is kept between
# pokes: "unchanged for N minutes" is read from the store's own change times instead. A file added,
# grown or replaced moves its time; locally a file added or removed also moves its folder's mtime.
# Stronger than comparing counts and sizes between two pokes (a same-size replacement shows), and
# it survives a worker restart. On gs:// a deletion moves nothing (GCS has no folders): the count
# then only drops, and the job lists what is there when it starts.


class InputSnapshot(TypedDict):
    files: int
    bytes: int
    newest_change: float | None
    marker_found: bool | None


def literal_folder(pattern: str) -> str:
    """The folder part of a glob before any wildcard: ``/d/ds=1/*.jpg`` -> ``/d/ds=1``."""
    fixed = GLOB_CHARS.split(pattern, maxsplit=1)[0]
    return fixed.rstrip("/") if fixed == pattern and pattern.endswith("/") else fixed.rsplit("/", 1)[0]


def marker_path(input_glob: str, marker: str) -> str:
    return join(literal_folder(input_glob), marker)


def local_snapshot(pattern: str, marker: str | None = None) -> InputSnapshot:
    """Count, total size and latest change of the local files ``pattern`` matches (folders not counted)."""
    import glob as globbing

    files = size = 0
    newest: float | None = None
    folders: set[str] = set()
    for path in globbing.iglob(pattern, recursive=True):
        try:
            stat = os.stat(path)
        except OSError:  # gone between listing and stat: the next poke sees the folder change
            continue
        if not os.path.isfile(path):
            continue
        files, size = files + 1, size + stat.st_size
        # ctime too: a copy that keeps the original mtime (cp -p, rsync -a) still sets it.
        newest = max(newest or 0.0, stat.st_mtime, stat.st_ctime)
        folders.add(os.path.dirname(path))
    for folder in folders or {literal_folder(pattern)}:
        try:
            stat = os.stat(folder)
        except OSError:
            continue
        if files:
            newest = max(newest or 0.0, stat.st_mtime)
    found = os.path.isfile(marker) if marker else None
    return {"files": files, "bytes": size, "newest_change": newest, "marker_found": found}


def input_verdict(
    rule: str, snapshot: InputSnapshot, settle_minutes: float, now: float, marker: str | None = None
) -> tuple[bool, str]:
    """(ready, why) for one look at the input under ``rule``."""
    files, newest = snapshot["files"], snapshot["newest_change"]
    seen = f"{files} file(s), {snapshot['bytes']} bytes"
    if rule == "marker":
        if not snapshot["marker_found"]:
            return False, f"{seen}; waiting for the marker {marker}"
        return (files > 0), f"{seen}; marker {marker} is there" + ("" if files else " but no file matches")
    if not files:
        return False, "no file matches"
    if rule == "any":
        return True, f"{seen}; rule 'any' starts at the first file"
    quiet = now - (newest or now)
    need = float(settle_minutes) * 60
    if quiet >= need:
        return True, f"{seen}, unchanged for {quiet:.0f} s (settle time {need:.0f} s)"
    return False, f"{seen}, last change {quiet:.0f} s ago; waiting until unchanged for {need:.0f} s"


def input_ready_record(rule: str, snapshot: InputSnapshot, marker: str | None, reason: str) -> InputReady:
    return {
        "rule": rule,
        "files": snapshot["files"],
        "bytes": snapshot["bytes"],
        "newest_change": snapshot["newest_change"],
        "marker": marker if rule == "marker" else None,
        "reason": reason,
    }
