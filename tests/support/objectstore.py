"""An in-memory object store registered with Beam under the scheme ``memgs://``.

It behaves like gs:// where our code depends on it: no directories (a "folder"
is only a name prefix, ``mkdirs`` does nothing, ``has_dirs`` is False), a
rename is per object and fails for a name that holds no object, deleting a
prefix deletes the objects under it, and every object keeps the MIME type it was
created with. Beam picks a file system by scheme, so code that branches on
``storage.is_local`` takes its object-store path against this, in this process
(FnApiRunner pipelines included).

Every mutating call is appended to ``MemObjectStore.log`` so tests can check
the order of a commit (manifest last).

``create_if_absent`` is what gs:// does for an upload with ``ifGenerationMatch=0``: the object is
written only when no object has the name, checked and written in one step (under the store's lock),
so of writers racing for one name exactly one gets True. ``publish.create_if_absent`` finds it on the
file system Beam picks for ``memgs://``.
"""

from __future__ import annotations

import io
import threading
import time
from collections.abc import Iterator

from apache_beam.io.filesystem import BeamIOError, CompressionTypes, FileMetadata, FileSystem

SCHEME = "memgs"


class _Object(io.BytesIO):
    """A file being written: stored (whole) when closed, like an upload that completes."""

    def __init__(self, store: type[MemObjectStore], path: str, mime_type: str):
        super().__init__()
        self._store, self._path, self._mime = store, path, mime_type

    def close(self) -> None:
        if not self.closed:
            self._store.put(self._path, self.getvalue(), self._mime)
        super().close()


class MemObjectStore(FileSystem):
    objects: dict[str, tuple[bytes, str, float]] = {}
    log: list[tuple[str, str]] = []
    # Objects whose reads stall (a hung connection): open() blocks this many seconds first.
    stalls: dict[str, float] = {}
    # When set, the store fails (like a dropped connection) once this many more objects were changed.
    fail_after: int | None = None
    # False: once failed, every later change fails too (the store stays down); True: only that one
    # change fails and the store answers again (a transient error).
    recover: bool = False
    _lock = threading.Lock()

    @classmethod
    def scheme(cls) -> str:
        return SCHEME

    # -- helpers for tests
    @classmethod
    def reset(cls) -> None:
        with cls._lock:
            cls.objects.clear()
            cls.log.clear()
            cls.stalls.clear()
            cls.fail_after = None
            cls.recover = False

    @classmethod
    def put(cls, path: str, data: bytes, mime_type: str = "application/octet-stream") -> None:
        with cls._lock:
            cls._change("put", path)
            cls.objects[path] = (data, mime_type, time.time())

    @classmethod
    def _change(cls, kind: str, path: str) -> None:
        """Record one object changed; fail first when the injected failure is due (caller holds the lock)."""
        if cls.fail_after is not None:
            if cls.fail_after <= 0:
                if cls.recover:
                    cls.fail_after = None
                raise BeamIOError(f"{kind} failed", {path: ConnectionError("injected failure")})
            cls.fail_after -= 1
        cls.log.append((kind, path))

    @classmethod
    def names(cls, prefix: str = "") -> list[str]:
        with cls._lock:
            return sorted(p for p in cls.objects if p.startswith(prefix))

    @classmethod
    def mime_type(cls, path: str) -> str:
        return cls.objects[path][1]

    # -- Beam FileSystem
    def join(self, basepath: str, *paths: str) -> str:
        return "/".join([basepath.rstrip("/"), *(p.strip("/") for p in paths)])

    def split(self, path: str) -> tuple[str, str]:
        head, _, tail = path.rstrip("/").rpartition("/")
        return head, tail

    def mkdirs(self, path: str) -> None:
        pass  # object stores have no directories

    def has_dirs(self) -> bool:
        return False

    def _list(self, dir_or_prefix: str) -> Iterator[FileMetadata]:
        with self._lock:
            items = [(p, len(d), t) for p, (d, _, t) in self.objects.items() if p.startswith(dir_or_prefix)]
        for path, size, updated in sorted(items):
            yield FileMetadata(path, size, updated)

    def create(self, path, mime_type="application/octet-stream", compression_type=CompressionTypes.AUTO):
        return _Object(type(self), path, mime_type)

    def create_if_absent(self, path: str, data: bytes, mime_type: str = "application/octet-stream") -> bool:
        with self._lock:
            if path in self.objects:
                return False
            self._change("create", path)
            self.objects[path] = (data, mime_type, time.time())
            return True

    def open(self, path, mime_type="application/octet-stream", compression_type=CompressionTypes.AUTO):
        if path in self.stalls:
            time.sleep(self.stalls[path])
        with self._lock:
            if path not in self.objects:
                raise BeamIOError("open failed", {path: FileNotFoundError(path)})
            return io.BytesIO(self.objects[path][0])

    def copy(self, source_file_names, destination_file_names) -> None:
        with self._lock:
            for src, dst in zip(source_file_names, destination_file_names, strict=True):
                if src not in self.objects:
                    raise BeamIOError("copy failed", {(src, dst): FileNotFoundError(src)})
                self._change("copy", dst)
                self.objects[dst] = self.objects[src]

    def rename(self, source_file_names, destination_file_names) -> None:
        with self._lock:
            missing = {
                (s, d): FileNotFoundError(s)
                for s, d in zip(source_file_names, destination_file_names, strict=True)
                if s not in self.objects
            }
            if missing:
                raise BeamIOError("rename failed", missing)
            for src, dst in zip(source_file_names, destination_file_names, strict=True):
                self._change("rename", dst)
                self.objects[dst] = self.objects.pop(src)

    def exists(self, path: str) -> bool:
        with self._lock:
            return path in self.objects

    def size(self, path: str) -> int:
        return len(self.objects[path][0])

    def last_updated(self, path: str) -> float:
        return self.objects[path][2]

    def checksum(self, path: str) -> str:
        return str(hash(self.objects[path][0]))

    def metadata(self, path: str) -> FileMetadata:
        data, _, updated = self.objects[path]
        return FileMetadata(path, len(data), updated)

    def delete(self, paths) -> None:
        with self._lock:
            for path in paths:
                # A "folder" is a prefix: deleting it deletes what is under it (as gcsfilesystem does).
                doomed = (
                    [path]
                    if path in self.objects
                    else [p for p in self.objects if p.startswith(path.rstrip("/") + "/")]
                )
                for name in doomed:
                    self._change("delete", name)
                    del self.objects[name]
