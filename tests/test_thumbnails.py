"""beam_jobs.thumbnails: parallel reads within a byte budget, a per-read timeout and a total budget."""

from __future__ import annotations

import base64
import io
import os
import threading
import time

import numpy as np
import pytest
from PIL import Image

from beam_jobs.thumbnails import (
    ThumbnailParams,
    data_uri,
    data_uri_length,
    encode_thumbnail,
    gather_thumbnails,
    read_image_bytes,
)


def png_bytes(img: Image.Image) -> bytes:
    out = io.BytesIO()
    img.save(out, format="PNG")
    return out.getvalue()


PHOTO = png_bytes(Image.fromarray(np.random.default_rng(0).integers(0, 255, (60, 80, 3), dtype=np.uint8)))


def decoded(uri: str) -> Image.Image:
    assert uri.startswith("data:image/webp;base64,")
    return Image.open(io.BytesIO(base64.b64decode(uri.split(",", 1)[1])))


def test_thumbnail_composites_transparency_over_white_like_extraction():
    rgba = Image.new("RGBA", (40, 30), (255, 0, 0, 0))
    rgba.paste((0, 0, 255, 255), (0, 0, 20, 30))
    thumb = decoded(data_uri(encode_thumbnail(png_bytes(rgba), size=16))).convert("RGB")
    assert max(thumb.size) == 16
    left, right = thumb.getpixel((2, 5)), thumb.getpixel((13, 5))
    assert left[2] > 200
    assert left[0] < 60
    assert min(right) > 230  # transparent red becomes white, not red or black


def test_thumbnail_rescales_16_bit_images():
    gray = Image.fromarray(np.full((20, 20), 8000, np.uint16))  # about 12% of the 16-bit range
    value = decoded(data_uri(encode_thumbnail(png_bytes(gray), size=16))).convert("L").getpixel((8, 8))
    assert 20 < value < 40  # rescaled like the extraction job (clipping would give white)


def test_thumbnail_is_none_for_what_cannot_be_shown():
    assert encode_thumbnail(b"not an image", 32) is None
    assert encode_thumbnail(png_bytes(Image.new("RGB", (100, 100))), 32, max_pixels=99 * 99) is None


def test_data_uri_length_is_exact():
    for n in range(7):
        assert data_uri_length(b"x" * n) == len(data_uri(b"x" * n))


def test_reads_refuse_fifos_and_oversized_files(tmp_path):
    fifo = tmp_path / "pipe.jpg"
    os.mkfifo(fifo)
    big = tmp_path / "big.jpg"
    big.write_bytes(b"x" * 101)
    for path, match in ((fifo, "(?i)fifo"), (big, "over 100 bytes")):
        with pytest.raises(OSError, match=match):
            read_image_bytes(str(path), max_bytes=100)
    assert read_image_bytes(str(big), max_bytes=200) == b"x" * 101


def test_thumbnails_in_sample_order_until_the_byte_budget_is_spent():
    uris = [f"/img/{i}.png" for i in range(40)]
    one = data_uri_length(encode_thumbnail(PHOTO, 32))
    got = gather_thumbnails(
        uris, ThumbnailParams(size=32, budget_bytes=5 * one + 10, threads=4, min_bytes_each=100), read=lambda u: PHOTO
    )
    assert got.html == {0, 1, 2, 3, 4}  # the first five fit, in order, whatever the thread timing
    assert sorted(got.images) == [0, 1, 2, 3, 4, 5]  # the sixth was read, did not fit, and stopped the reading
    assert got.data_uri(0).startswith("data:image/webp;base64,")
    assert got.data_uri(5) is None
    assert sum(got.misses.values()) == 0


def test_mosaic_images_are_read_beyond_the_html_budget():
    got = gather_thumbnails(
        [f"/{i}" for i in range(30)], ThumbnailParams(size=16, budget_bytes=1, min_count=9), read=lambda u: PHOTO
    )
    assert got.html == set()
    assert sorted(got.images) == list(range(9))


def test_a_hanging_store_costs_at_most_the_time_budget():
    release = threading.Event()

    def read(uri: str) -> bytes:
        if "slow" in uri:
            release.wait(30)  # an unreachable store: the client retries for minutes
        if "bad" in uri:
            raise OSError("gone")
        return PHOTO

    uris = ["/ok0", "/slow1", "/bad2", "/ok3", "/slow4", "/ok5"]
    params = ThumbnailParams(size=16, budget_bytes=10**6, read_timeout_s=0.3, time_budget_s=5, threads=2)
    start = time.monotonic()
    got = gather_thumbnails(uris, params, read=read)
    assert time.monotonic() - start < 3  # two stuck reads: abandoned after 0.3 s each, the pool refilled
    assert sorted(got.images) == [0, 3, 5]
    assert got.misses == {"unreadable": 1, "timeout": 2, "time_budget": 0}

    many = [f"/slow{i}" for i in range(50)]
    params = ThumbnailParams(size=16, budget_bytes=10**6, read_timeout_s=10, time_budget_s=0.5, threads=4)
    start = time.monotonic()
    got = gather_thumbnails(many, params, read=read)
    assert time.monotonic() - start < 2
    assert got.images == {}
    assert got.misses["time_budget"] == 16  # the reads queued or in flight when the budget ran out (4 x 4 lookahead)
    release.set()


def test_reads_stop_after_max_reads_when_images_are_gone():
    calls = []

    def gone(uri: str) -> bytes:
        calls.append(uri)
        raise FileNotFoundError(uri)

    params = ThumbnailParams(size=16, budget_bytes=15_000, min_count=4, threads=2)
    assert params.max_reads == 14
    got = gather_thumbnails([f"/{i}" for i in range(1000)], params, read=gone)
    assert got.misses["unreadable"] == 14
    assert len(calls) == 14
