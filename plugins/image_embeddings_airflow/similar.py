"""The "Embedding maps" page's similar-images API: the nearest images of a night, from that night's index.

Routes (on ``router``, which ``ui.router`` includes, so they sit behind the same access check):

* ``GET /api/similar?event=&uri=&k=``: the nearest indexed images of an indexed image;
* ``POST /api/similar?event=&k=`` with an image as the body: the nearest indexed images of an upload;
* ``GET /thumb?event=&uri=``: a small JPEG of an image the index lists.

Only index partitions a publish event names are opened (``…/index/ds=YYYY-MM-DD``), and only images
listed in them are served. The events come from ``ui.load_events`` (the page's one query of the
metadata DB), looked up when a request comes.

An upload is embedded with the index's model in a child process (``python -m beam_jobs.search``), so
TensorFlow stays out of the API server; each child holds about 1.5 GB while it runs. At most
``UPLOAD_SLOTS`` run at once: beyond that an upload is answered 429 with ``Retry-After`` at once,
never queued, so a burst of uploads cannot exhaust the API server's host.
"""

from __future__ import annotations

import asyncio
import io
import json
import re
import subprocess
import sys
import tempfile
import threading
from typing import Any
from urllib.parse import urlencode

from fastapi import APIRouter, HTTPException, Query, Request
from fastapi.responses import JSONResponse, Response

from image_embeddings_airflow.paths import read_bytes

INDEX_DIR = re.compile(r"/index/ds=\d{4}-\d{2}-\d{2}/?$")
THUMB_PX = 160
MAX_UPLOAD_BYTES = 20 * 1024 * 1024
UPLOAD_TIMEOUT_S = 300
# Uploads embedded at once (one child process of ~1.5 GB each); more are refused with 429 and Retry-After.
UPLOAD_SLOTS = 2
RETRY_AFTER_S = 30  # about one upload's embedding on a busy 2-core host
_UPLOADS = threading.BoundedSemaphore(UPLOAD_SLOTS)
_INDEXES: dict[str, tuple[str, Any]] = {}  # index dir -> (manifest finished_at, loaded Index), newest few
_INDEXES_LOCK = threading.Lock()

router = APIRouter()


def index_dir_of(record: dict[str, Any]) -> str | None:
    entry = record.get("index")
    folder = entry.get("dir") if isinstance(entry, dict) else None
    return folder.rstrip("/") if isinstance(folder, str) and INDEX_DIR.search(folder) else None


def load_index(folder: str):
    """The night's index, loaded once per process and again when its manifest changes (a re-run)."""
    from beam_jobs.contract import MANIFEST
    from beam_jobs.search import open_index

    stamp = str(json.loads(read_bytes(f"{folder}/{MANIFEST}")).get("finished_at"))
    with _INDEXES_LOCK:
        cached = _INDEXES.get(folder)
        if cached and cached[0] == stamp:
            return cached[1]
    index = open_index(folder, read=read_bytes)
    with _INDEXES_LOCK:
        _INDEXES[folder] = (stamp, index)
        while len(_INDEXES) > 4:
            _INDEXES.pop(next(iter(_INDEXES)))
    return index


async def _event_index(event: int):
    # ui imports this module; its load_events is looked up per request (tests and scripts stand in for it there).
    from beam_jobs.config import UsageError
    from image_embeddings_airflow import ui

    events = await asyncio.to_thread(ui.load_events, event)
    record = (events[0]["extra"] if events else None) or {}
    folder = index_dir_of(record)
    if folder is None:
        raise HTTPException(404, f"event {event} published no similarity index")
    try:
        return await asyncio.to_thread(load_index, folder)
    except FileNotFoundError:
        raise HTTPException(404, f"{folder} is gone (partition replaced or deleted)") from None
    except UsageError as exc:
        raise HTTPException(404, str(exc)) from None


def _answer(event: int, index, query: dict[str, Any], neighbours: list[dict[str, Any]]) -> JSONResponse:
    for n in neighbours:
        n["thumb"] = "thumb?" + urlencode({"event": event, "uri": n["image_uri"]})
    body = {"query": query, "model_id": index.model_id, "index": index.path, "neighbours": neighbours}
    return JSONResponse(body, headers={"Cache-Control": "no-store"})


@router.get("/api/similar")
async def similar(event: int, uri: str, k: int = Query(10, ge=1, le=100)) -> JSONResponse:
    """The ``k`` nearest images of an indexed image (by URI) in the night's index."""
    from beam_jobs.config import UsageError

    index = await _event_index(event)
    try:
        row_id, vector = index.vector_of(uri)
        neighbours = index.neighbours(vector, k, exclude=row_id)
    except UsageError as exc:
        raise HTTPException(404, str(exc)) from None
    return _answer(event, index, {"image_uri": uri}, neighbours)


def _embed_upload(folder: str, data: bytes, k: int) -> dict[str, Any]:
    """Embed an uploaded image with the index's model in a child process (TensorFlow stays out of the API
    server) and search: ``python -m beam_jobs.search --image``, which refuses another model_id."""
    with tempfile.NamedTemporaryFile(suffix=".img") as handle:
        handle.write(data)
        handle.flush()
        command = [sys.executable, "-m", "beam_jobs.search", "--index", folder, "--image", handle.name]
        proc = subprocess.run(
            [*command, "-k", str(k), "--json"],
            capture_output=True,
            text=True,
            timeout=UPLOAD_TIMEOUT_S,
        )
    if proc.returncode != 0:
        lines = [line for line in proc.stderr.strip().splitlines() if line.startswith("error:")]
        raise HTTPException(422, (lines[-1] if lines else proc.stderr.strip()[-500:]).removeprefix("error: "))
    return json.loads(proc.stdout)


@router.post("/api/similar")
async def similar_upload(request: Request, event: int, k: int = Query(10, ge=1, le=100)) -> JSONResponse:
    """The ``k`` nearest indexed images of an uploaded image (the request body), embedded with the index's
    model; 429 with ``Retry-After`` while ``UPLOAD_SLOTS`` uploads are being embedded."""
    data = await request.body()
    if not data or len(data) > MAX_UPLOAD_BYTES:
        raise HTTPException(413 if data else 400, f"send one image of at most {MAX_UPLOAD_BYTES // 2**20} MB")
    if not _UPLOADS.acquire(blocking=False):
        raise HTTPException(
            429,
            f"{UPLOAD_SLOTS} uploads are being embedded; try again in {RETRY_AFTER_S} s",
            headers={"Retry-After": str(RETRY_AFTER_S)},
        )
    try:
        index = await _event_index(event)
        result = await asyncio.to_thread(_embed_upload, index.path, data, k)
    finally:
        _UPLOADS.release()
    return _answer(event, index, {"upload": len(data)}, result["neighbours"])


def thumbnail(data: bytes, px: int = THUMB_PX) -> bytes:
    from PIL import Image, ImageOps

    with Image.open(io.BytesIO(data)) as img:
        img.draft("RGB", (px * 2, px * 2))
        small = ImageOps.exif_transpose(img).convert("RGB")
        small.thumbnail((px, px))
        out = io.BytesIO()
        small.save(out, "JPEG", quality=85)
    return out.getvalue()


@router.get("/thumb")
async def thumb(event: int, uri: str) -> Response:
    """A small JPEG of an image listed in the night's index (no other file is ever read)."""
    index = await _event_index(event)
    if not index.has_uri(uri):
        raise HTTPException(404, "not an indexed image")
    try:
        data = await asyncio.to_thread(thumbnail, await asyncio.to_thread(read_bytes, uri))
    except FileNotFoundError:
        raise HTTPException(404, f"{uri} is gone") from None
    except Exception:  # noqa: BLE001 - unreadable or not an image any more
        raise HTTPException(404, f"{uri} cannot be shown") from None
    return Response(data, media_type="image/jpeg", headers={"Cache-Control": "private, max-age=3600"})
