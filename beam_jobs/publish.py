"""How a run's output is published: staged beside it, swapped in whole, leftovers of killed runs swept.

A job writes everything into a hidden staging directory next to its output
(``.<name>.staging-<token>``; the leading dot makes Spark, pyarrow datasets
and BigQuery external tables skip it) and, once every file is finalised,
replaces the output directory with it. Readers therefore see either the
previous run or this run, never a mix, and a re-run leaves exactly one copy.

Locally the swap is one atomic exchange of the two directories (Linux
``renameat2(RENAME_EXCHANGE)``), so there is no moment without an output; where the
file system cannot exchange, two ``os.rename`` calls (a kill between them leaves
the previous run in a ``.old-`` folder that the next run's sweep puts back).
Object stores (gs://) have no directory rename: see ``_swap_objects``; the previous
run is copied aside first, so an interrupted swap can always put it back.

Local hidden folders also name their owner (``-<token>@<host>-<pid>``): a killed run cannot clean
up, so the next run on that host removes a gone process's folders at once (``sweep_leftovers``).
Shared artefacts created when missing (a reference) are published first writer wins, never replaced:
``publish_directory_if_absent`` (local) and ``create_if_absent`` (gs:// ``ifGenerationMatch=0``).
"""

from __future__ import annotations

import contextlib
import ctypes
import errno
import hashlib
import os
import re
import shutil
import socket
import time
import uuid

from apache_beam.io.filesystems import FileSystems

from beam_jobs.contract import MANIFEST
from beam_jobs.storage import is_local, join, list_files, mime_type_of, remove_tree


def run_token(run_id: str) -> str:
    """The staging folder's suffix for a run: a retry of the same run reuses (and replaces) its own."""
    return hashlib.sha1(run_id.encode("utf-8")).hexdigest()[:12]


def _owner_suffix(output: str) -> str:
    """``@<host>-<pid>``, locally only: there the writer is this process (the local runner refuses
    --detach). On an object store the launcher may be gone while its remote job still writes."""
    return f"@{_host()}-{os.getpid()}" if is_local(output) else ""


def _host() -> str:  # with the pid: containers sharing a folder do not share process ids
    return re.sub(r"[^A-Za-z0-9.]", "_", socket.gethostname())


def staging_dir_for(output: str, token: str | None = None) -> str:
    parent, name = FileSystems.split(output.rstrip("/"))
    return FileSystems.join(parent, f".{name}.staging-{token or uuid.uuid4().hex[:12]}{_owner_suffix(output)}")


def old_dir_for(output: str, token: str | None = None) -> str:
    """Where a swap keeps the previous run until the new one is in: named from the run, like staging,
    so a retry of the same run finds (and clears) what an interrupted attempt left."""
    parent, name = FileSystems.split(output.rstrip("/"))
    return FileSystems.join(parent, f".{name}.old-{token or uuid.uuid4().hex[:12]}{_owner_suffix(output)}")


def _token_of(folder: str) -> str | None:
    name = folder.rstrip("/").rsplit("/", 1)[-1]
    for mark in (".staging-", ".old-"):
        if mark in name:
            return name.rsplit(mark, 1)[1].partition("@")[0]
    return None


def _pid_alive(pid: int) -> bool:
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return False
    except PermissionError:  # another user's live process
        return True
    return True


def owner_gone(folder: str) -> bool:
    """True when ``folder``'s name records a process of this host that no longer runs; False when that
    cannot be known (no owner in the name, another host, a live or reused pid: the age rule decides)."""
    name = folder.rstrip("/").rsplit("/", 1)[-1]
    if "@" not in name or not is_local(folder):
        return False
    host, _, pid = name.rpartition("@")[2].rpartition("-")
    if not pid.isdigit() or int(pid) == os.getpid():
        return False
    return host == _host() and not _pid_alive(int(pid))


def _siblings(output: str) -> dict[str, float]:
    """Hidden ``.<name>.staging-*`` / ``.<name>.old-*`` folders beside ``output`` -> newest mtime."""
    parent, name = FileSystems.split(output.rstrip("/"))
    marks = (f".{name}.staging-", f".{name}.old-")
    found: dict[str, float] = {}
    if is_local(output):
        try:
            entries = os.listdir(parent)
        except FileNotFoundError:
            return {}
        for entry in entries:
            if entry.startswith(marks):
                path = os.path.join(parent, entry)
                found[path] = os.lstat(path).st_mtime
        return found
    for mark in marks:
        try:
            matched = FileSystems.match([FileSystems.join(parent, mark) + "**"])[0].metadata_list
        except Exception:  # noqa: BLE001 - nothing there
            continue
        for meta in matched:
            folder = meta.path[: meta.path.index("/", len(parent) + len(mark) + 1)]
            found[folder] = max(found.get(folder, 0.0), meta.last_updated_in_seconds or 0.0)
    return found


def sweep_leftovers(output: str, token: str, max_age_s: float = 6 * 3600, swap_grace_s: float = 15 * 60) -> list[str]:
    """Before a run: clear what failed or killed runs left beside ``output``; returns what was done.

    * no ``output`` but a ``.old-`` folder (a local swap killed between its two renames):
      the newest ``.old-`` folder is put back, so the previous run is restored;
    * on an object store, an ``output`` without ``manifest.json`` beside a whole ``.old-`` copy
      (one with its manifest: a swap interrupted after it took the previous manifest out) gets
      the previous run copied back, when the copy is this run's own (a retry) or older than
      ``swap_grace_s`` (younger ones may belong to a swap still going);
    * this run's own staging and ``.old-`` folders (a retry of the same run) are removed;
    * locally, those of a process of this host that is gone (killed) are removed at once;
    * other staging and ``.old-`` folders are removed once older than ``max_age_s``
      (younger ones may belong to a run that is still going).
    """
    done = []
    siblings = _siblings(output)
    olds = sorted((p for p in siblings if ".old-" in p), key=siblings.get)
    now = time.time()
    own = {path for path in siblings if _token_of(path) == token}
    if is_local(output) and not os.path.lexists(output) and olds:
        os.rename(olds[-1], output)
        done.append(f"restored {olds[-1]} -> {output}")
        siblings.pop(olds[-1])
    elif not is_local(output) and olds and not FileSystems.exists(join(output, MANIFEST)):
        whole = [p for p in olds if FileSystems.exists(join(p, MANIFEST))]
        settled = [p for p in whole if p in own or now - siblings[p] > swap_grace_s]
        if settled:
            _restore_objects(settled[-1], output)
            done.append(f"restored {settled[-1]} -> {output}")
            siblings.pop(settled[-1])
    for path, mtime in sorted(siblings.items()):
        if path in own or owner_gone(path) or now - mtime > max_age_s:
            remove_tree(path)
            done.append(f"removed {path}")
    return done


_RENAME_NOREPLACE = 1
_RENAME_EXCHANGE = 2
_AT_FDCWD = -100


def _renameat2(a: str, b: str, flags: int) -> bool:
    """Linux ``renameat2``; False where the C library or the file system has none (callers fall back)."""
    try:
        renameat2 = ctypes.CDLL(None, use_errno=True).renameat2
    except (AttributeError, OSError):
        return False
    if renameat2(_AT_FDCWD, os.fsencode(a), _AT_FDCWD, os.fsencode(b), flags) == 0:
        return True
    err = ctypes.get_errno()
    if err in (errno.EINVAL, errno.ENOSYS, errno.EOPNOTSUPP, errno.EXDEV, errno.EPERM):
        return False
    raise OSError(err, os.strerror(err), a, None, b)


def _exchange(a: str, b: str) -> bool:
    """Swap two local paths atomically; False where it cannot (then the caller renames twice)."""
    return _renameat2(a, b, _RENAME_EXCHANGE)


def _move_if_absent(src: str, dst: str) -> bool:
    """Move local ``src`` to ``dst`` unless something is there; True when moved, never a replace.

    ``renameat2(RENAME_NOREPLACE)`` where Linux has it; else a file is hard-linked (link(2) never replaces)
    and unlinked, a folder renamed (POSIX refuses a non-empty target; an empty one holds nothing)."""
    try:
        if _renameat2(src, dst, _RENAME_NOREPLACE):
            return True
    except FileExistsError:
        return False
    try:
        if os.path.isdir(src):
            os.rename(src, dst)
        else:
            os.link(src, dst)
            os.unlink(src)
    except OSError as exc:
        if exc.errno in (errno.EEXIST, errno.ENOTEMPTY, errno.ENOTDIR, errno.EISDIR):
            return False
        raise
    return True


def publish_directory_if_absent(staging: str, output: str) -> bool:
    """Local: move the staged folder in as ``output`` unless ``output`` holds something; True when this
    call published it. Readers see the whole folder or none. An empty ``output`` (made ahead) is taken
    over. When another writer came first ``staging`` stays: the caller reads theirs, then removes it."""
    os.makedirs(os.path.dirname(os.path.abspath(output)), exist_ok=True)
    while True:
        if _move_if_absent(staging, output):
            return True
        try:
            os.rmdir(output)
        except FileNotFoundError:  # another writer emptied it too: move again
            continue
        except OSError:  # not empty (or not a folder): someone's, kept
            return False


def create_if_absent(path: str, data: bytes) -> bool:
    """Write ``path`` only if nothing is there yet; True when this call wrote it (first writer wins).

    Locally a temp file and ``_move_if_absent``; a Beam file system's own ``create_if_absent(path, data,
    mime_type)`` (the tests' memgs://); gs:// ``gcs_create_if_absent``. Other schemes raise: without a
    precondition the write would be a silent last-writer-wins."""
    if is_local(path):
        os.makedirs(os.path.dirname(path) or ".", exist_ok=True)
        tmp = f"{path}.tmp-{uuid.uuid4().hex[:8]}"
        with open(tmp, "wb") as handle:
            handle.write(data)
        try:
            return _move_if_absent(tmp, path)
        finally:
            with contextlib.suppress(FileNotFoundError):
                os.unlink(tmp)
    own = getattr(FileSystems.get_filesystem(path), "create_if_absent", None)
    if own is not None:
        return own(path, data, mime_type_of(path))
    if FileSystems.get_scheme(path) == "gs":
        return gcs_create_if_absent(path, data, mime_type_of(path))
    raise NotImplementedError(f"no create-if-absent write for {path!r}: only local paths and gs:// have one")


def gcs_create_if_absent(path: str, data: bytes, content_type: str, client=None) -> bool:
    """gs://: one upload that GCS refuses (HTTP 412) when the object exists (``ifGenerationMatch=0``).

    Beam's FileSystems has no preconditions: google-cloud-storage (with apache-beam[gcp]) does it. Not run
    against real GCS here: tests/test_storage.py checks the request with a fake ``client``. The library
    retries a conditional upload, so a 412 may mean an earlier try landed: callers check whose it is."""
    from google.api_core.exceptions import PreconditionFailed

    if client is None:
        from google.cloud import storage as gcs

        client = gcs.Client()
    bucket, _, name = path[len("gs://") :].partition("/")
    try:
        client.bucket(bucket).blob(name).upload_from_string(data, content_type=content_type, if_generation_match=0)
    except PreconditionFailed:
        return False
    return True


def replace_directory(staging: str, output: str) -> None:
    """Make ``output`` hold exactly what ``staging`` holds; ``staging`` is consumed."""
    output = output.rstrip("/")
    if not is_local(output):
        _swap_objects(staging, output)
        return
    parent = os.path.dirname(os.path.abspath(output))
    os.makedirs(parent, exist_ok=True)
    if not os.path.lexists(output):
        os.rename(staging, output)
        return
    trash = old_dir_for(output, _token_of(staging))
    if os.path.lexists(trash):  # left by an interrupted attempt of this same run
        shutil.rmtree(trash, ignore_errors=True)
    if _exchange(staging, output):
        # One step: readers see the previous run or this one, never no output. The staging
        # path now holds the previous run; it becomes the .old- folder, then goes.
        os.rename(staging, trash)
    else:
        os.rename(output, trash)
        os.rename(staging, output)
    shutil.rmtree(trash, ignore_errors=True)


def _copy_run(source: str, target: str) -> None:
    """Copy every object of a published run under ``source`` to ``target`` (server-side on gs://),
    ``manifest.json`` last: a copy that has its manifest is whole."""
    prefix = source.rstrip("/") + "/"
    names = [path[len(prefix) :] for path in list_files(source)]
    data = sorted(n for n in names if n != MANIFEST)
    if data:
        FileSystems.copy([prefix + n for n in data], [join(target, n) for n in data])
    if MANIFEST in names:
        FileSystems.copy([prefix + MANIFEST], [join(target, MANIFEST)])


def _restore_objects(old: str, output: str) -> None:
    """Put the run kept in ``old`` back as ``output``: objects it does not have go, its objects are
    copied over the same names, its manifest last; then ``old`` goes. Interrupted, it can be run again."""
    keep = {path[len(old.rstrip("/")) + 1 :] for path in list_files(old)}
    present = list_files(output)
    stale = [path for path in present if path[len(output) + 1 :] not in keep or path.endswith("/" + MANIFEST)]
    if stale:
        FileSystems.delete(stale)
    _copy_run(old, output)
    remove_tree(old)


def _swap_objects(staging: str, output: str) -> None:
    """The object-store swap: there is no folder rename, so objects move one by one.

    Order, so that a reader that waits for ``manifest.json`` (as the DAG does) only ever
    reads one whole run, and the previous run is never lost:

    1. the previous run is copied aside into ``.<name>.old-<token>/`` (server-side), its
       manifest last, so a copy with a manifest is whole; the output is untouched so far;
    2. the previous manifest goes: from then on the partition reads as "not published yet";
    3. the new objects move in, overwriting the same names (a glob reader never finds a name missing);
    4. the previous run's objects the new run does not have are deleted;
    5. the new manifest moves in last: the partition reads as the new run, whole;
    6. the copy and what is left of staging are deleted (best effort: a failure there does
       not fail a published run; the next sweep removes them).

    Interrupted in 2-4 by an error, the previous run is copied back at once when the store
    answers; killed there (or when it does not answer), the next run's ``sweep_leftovers``
    copies it back before it starts.
    """
    prefix = staging.rstrip("/") + "/"
    staged = list_files(staging)
    incoming = {path[len(prefix) :]: path for path in staged}
    manifest = incoming.pop(MANIFEST, None)
    published = join(output, MANIFEST)
    old = old_dir_for(output, _token_of(staging))
    kept = False
    if FileSystems.exists(published):
        remove_tree(old)  # an interrupted attempt's partial copy
        _copy_run(output, old)
        kept = True
        FileSystems.delete([published])
    try:
        if incoming:
            names = sorted(incoming)
            FileSystems.rename([incoming[n] for n in names], [join(output, n) for n in names])
        stale = [path for path in list_files(output) if path[len(output) + 1 :] not in incoming]
        if stale:
            FileSystems.delete(stale)
        if manifest:
            FileSystems.rename([manifest], [published])
    except BaseException:
        if kept:
            # Best effort: if the store is still failing, the next run's sweep restores instead.
            with contextlib.suppress(Exception):
                _restore_objects(old, output)
        raise
    remove_tree(staging)
    if kept:
        remove_tree(old)
