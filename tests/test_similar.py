"""The "Embedding maps" page's similar-images API (image_embeddings_airflow.similar): routes, thumbnails, and
the bound on uploads (each starts a TensorFlow child process; beyond ``UPLOAD_SLOTS`` at once: 429).

The routes are served as the page serves them: included in ``ui.router`` (``tests.airflow_support.serve_router``
runs that router on uvicorn, as the plugin mounts it minus Airflow's access check).
"""

from __future__ import annotations

import json
import os
import threading
import time
import urllib.request
from concurrent.futures import ThreadPoolExecutor
from urllib.error import HTTPError

import pytest

from tests.airflow_support import serve_router
from tests.test_ui import event, record

INDEX = "/d/out/index/ds=2026-11-20"


def test_thumbnails_are_small_jpegs_of_any_image_mode(sample_dir):
    import glob
    import io

    from PIL import Image

    from image_embeddings_airflow.similar import THUMB_PX, thumbnail

    for path in sorted(glob.glob(os.path.join(sample_dir, "*")))[:3]:
        with open(path, "rb") as handle:
            data = thumbnail(handle.read())
        with Image.open(io.BytesIO(data)) as img:
            assert img.format == "JPEG"
            assert max(img.size) <= THUMB_PX


@pytest.fixture
def tiny_index(sample_dir, tmp_path):
    """An index partition written with the job's own helpers (no Beam run): 6 sample photos, 8-d vectors,
    built from a weights file (so an upload needs that file and is refused without it)."""
    import glob
    import json

    import numpy as np
    import pyarrow as pa
    import pyarrow.parquet as pq

    from beam_jobs.build_index import ann

    photos = sorted(glob.glob(os.path.join(sample_dir, "*")))[:6]
    folder = tmp_path / "out" / "index" / "ds=2026-11-20"
    folder.mkdir(parents=True)
    low, _ = ann.id_range("2026-11-20")
    ids = np.arange(low, low + len(photos), dtype=np.int64)
    x, _ = ann.normalise(np.random.default_rng(0).normal(size=(len(photos), 8)))
    index = ann.new_index(ann.choose_params(len(photos), 8, exact_below=100))
    ann.add(index, ids, x)
    ann.write_index(index, str(folder / "index.faiss"))
    rows = {"id": ids, "image_uri": photos, "ds": ["2026-11-20"] * len(photos), "content_sha256": ["x"] * len(photos)}
    pq.write_table(pa.table(rows), folder / "rows.parquet")
    model_id = "resnet50/pool=avg/in=224x224/weights=file-sha256:0123456789abcdef"
    manifest = {"job": "build_index", "model_id": model_id, "rows": len(photos), "finished_at": "t"}
    (folder / "manifest.json").write_text(json.dumps(manifest))
    return str(folder), photos


@pytest.mark.slow  # ~10 s: the upload starts a search process
def test_similar_routes_answer_from_the_published_index_only(tiny_index, monkeypatch):
    from fastapi import FastAPI
    from fastapi.testclient import TestClient

    from image_embeddings_airflow import ui

    folder, photos = tiny_index
    extra = record("2026-11-20", "night", index={"dir": folder, "rows": len(photos)})
    events = [event(9, 20, extra), event(10, 20, record("2026-11-20", "old"))]
    monkeypatch.setattr(ui, "load_events", lambda event_id=None: [e for e in events if event_id in (None, e["id"])])
    app = FastAPI()
    app.include_router(ui.router)
    client = TestClient(app)
    answer = client.get("/api/similar", params={"event": 9, "uri": photos[0], "k": 3}).json()
    assert [n["rank"] for n in answer["neighbours"]] == [1, 2, 3]
    assert photos[0] not in [n["image_uri"] for n in answer["neighbours"]]
    assert answer["neighbours"][0]["thumb"].startswith("thumb?event=9&uri=")
    thumb = client.get("/thumb", params={"event": 9, "uri": photos[1]})
    assert thumb.status_code == 200
    assert thumb.headers["content-type"] == "image/jpeg"
    # Only indexed images, and only indexes a publish event names.
    assert client.get("/thumb", params={"event": 9, "uri": "/etc/passwd"}).status_code == 404
    assert client.get("/api/similar", params={"event": 10, "uri": photos[0]}).status_code == 404
    assert client.get("/api/similar", params={"event": 9, "uri": "/not/indexed.jpg"}).status_code == 404
    # An upload is embedded by a search process, which refuses to guess the weights file of this index.
    with open(photos[0], "rb") as handle:
        upload = client.post("/api/similar", params={"event": 9}, content=handle.read())
    assert upload.status_code == 422
    assert "--weights PATH" in upload.json()["detail"]
    assert client.post("/api/similar", params={"event": 9}, content=b"").status_code == 400


class FakeIndex:
    """What the upload route reads of a loaded index: its folder and model."""

    path = INDEX
    model_id = "resnet50/test"


def upload(base: str) -> tuple[int, dict, dict]:
    """POST an image body to the running router: (status, headers, JSON body)."""
    request = urllib.request.Request(f"{base}/api/similar?event=9&k=1", data=b"\xff\xd8 an image", method="POST")
    try:
        with urllib.request.urlopen(request, timeout=60) as response:
            return response.status, dict(response.headers), json.loads(response.read())
    except HTTPError as error:
        return error.code, dict(error.headers), json.loads(error.read())


def test_uploads_beyond_the_slots_are_refused_at_once_with_429_and_retry_after(monkeypatch):
    from fastapi import HTTPException

    from image_embeddings_airflow import similar

    events = [event(9, 20, record("2026-11-20", "night", index={"dir": INDEX, "rows": 3}))]
    monkeypatch.setattr(similar, "load_index", lambda folder: FakeIndex())
    entered = threading.Semaphore(0)
    release = threading.Event()
    fail = threading.Event()

    def embed(folder: str, data: bytes, k: int) -> dict:
        """Stands in for the search child process: holds its slot until the test releases it."""
        entered.release()
        assert release.wait(60)
        if fail.is_set():
            raise HTTPException(422, "not an image")
        return {"neighbours": [{"image_uri": "/p/a.jpg", "rank": 1, "score": 0.9}]}

    monkeypatch.setattr(similar, "_embed_upload", embed)
    slots = similar.UPLOAD_SLOTS
    assert 1 <= slots <= 2
    with serve_router(events) as base, ThreadPoolExecutor(slots) as pool:
        running = [pool.submit(upload, base) for _ in range(slots)]
        for _ in range(slots):
            assert entered.acquire(timeout=30), "an upload did not start"
        # Every slot holds a child: the next upload is answered at once, not queued behind them.
        began = time.monotonic()
        status, headers, body = upload(base)
        assert (status, headers.get("retry-after")) == (429, str(similar.RETRY_AFTER_S))
        assert f"{slots} uploads are being embedded" in body["detail"]
        assert time.monotonic() - began < 10
        assert not entered.acquire(timeout=0.2)  # the refused upload started nothing
        release.set()
        for done in running:
            status, _, body = done.result(timeout=60)
            assert status == 200
            assert body["neighbours"][0]["thumb"] == "thumb?event=9&uri=%2Fp%2Fa.jpg"
        # The slots are free again, also after an upload that failed.
        fail.set()
        for _ in range(slots + 1):
            assert upload(base)[0] == 422
        fail.clear()
        assert upload(base)[0] == 200
