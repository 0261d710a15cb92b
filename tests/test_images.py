"""Unit tests of the pure decode+resize helper on real photos and awkward files."""

from __future__ import annotations

import io
import os

import numpy as np
import pytest
from PIL import Image

from beam_jobs.extract_embeddings.images import ImageError, ResizeMode, _crop_box, decode_and_resize
from devtools.samples import EDGE_CASES, bomb_png_bytes, load_sources


def png_bytes(img: Image.Image) -> bytes:
    buf = io.BytesIO()
    img.save(buf, "PNG")
    return buf.getvalue()


@pytest.fixture(scope="module")
def photo() -> Image.Image:
    return load_sources()[0]  # china.jpg, 640x427, a real photo


def read(path: str) -> bytes:
    with open(path, "rb") as handle:
        return handle.read()


def test_output_is_model_sized_uint8_rgb(photo):
    out = decode_and_resize(png_bytes(photo), (224, 224))
    assert out.pixels.shape == (224, 224, 3)
    assert out.pixels.dtype == np.uint8
    assert (out.width, out.height) == photo.size
    assert len(out.content_sha256) == 64


def test_center_crop_keeps_aspect_and_squash_does_not(photo):
    data = png_bytes(photo)
    crop = decode_and_resize(data, (224, 224), ResizeMode.CENTER_CROP).pixels.astype(float)
    squash = decode_and_resize(data, (224, 224), ResizeMode.SQUASH).pixels.astype(float)
    # The centre crop of a 3:2 photo equals squashing its central square.
    w, h = photo.size
    centre = photo.crop(((w - h) // 2, 0, (w - h) // 2 + h, h))
    expected = decode_and_resize(png_bytes(centre), (224, 224), ResizeMode.SQUASH).pixels.astype(float)
    # Half-pixel offsets (float crop box vs integer crop) leave small differences.
    assert np.abs(crop - expected).mean() < 4.0
    assert np.abs(squash - expected).mean() > 10.0


def test_crop_box_is_centred_with_target_aspect():
    assert _crop_box(400, 200, 224, 224) == (100.0, 0.0, 300.0, 200.0)
    assert _crop_box(200, 400, 224, 224) == (0.0, 100.0, 200.0, 300.0)


def test_draft_decoding_of_large_jpeg_matches_full_decode(photo):
    big = photo.resize((2560, 1708), Image.Resampling.BICUBIC)  # 4.4 MP
    buf = io.BytesIO()
    big.save(buf, "JPEG", quality=92)
    fast = decode_and_resize(buf.getvalue(), use_draft=True)
    full = decode_and_resize(buf.getvalue(), use_draft=False)
    assert (fast.width, fast.height) == (2560, 1708)
    # DCT scaling changes pixels slightly, not the picture.
    assert np.abs(fast.pixels.astype(float) - full.pixels.astype(float)).mean() < 3.0


def test_exif_rotation_is_applied(edge_dir, photo):
    folder, _ = edge_dir
    rotated = decode_and_resize(read(os.path.join(folder, "exif_rotated.jpg")))
    assert (rotated.width, rotated.height) == (photo.size[1], photo.size[0])
    upright = decode_and_resize(png_bytes(photo.transpose(Image.Transpose.ROTATE_270))).pixels.astype(float)
    sideways = decode_and_resize(png_bytes(photo)).pixels.astype(float)
    got = rotated.pixels.astype(float)
    assert np.abs(got - upright).mean() < 4.0
    assert np.abs(got - sideways).mean() > 4 * np.abs(got - upright).mean()


def test_sixteen_bit_is_rescaled_not_clipped(edge_dir, photo):
    folder, _ = edge_dir
    out = decode_and_resize(read(os.path.join(folder, "gray16.png")))
    assert out.source_mode.startswith("I;16")
    gray8 = decode_and_resize(png_bytes(photo.convert("L"))).pixels.astype(float)
    assert np.abs(out.pixels.astype(float) - gray8).mean() < 1.5


def test_cmyk_becomes_rgb_close_to_original(edge_dir, photo):
    folder, _ = edge_dir
    out = decode_and_resize(read(os.path.join(folder, "cmyk.jpg")))
    assert out.source_mode == "CMYK"
    rgb = decode_and_resize(png_bytes(photo)).pixels.astype(float)
    assert np.abs(out.pixels.astype(float) - rgb).mean() < 12.0


def test_transparency_is_composited_over_white():
    img = Image.new("RGBA", (300, 300), (255, 0, 0, 255))
    img.paste((0, 0, 0, 0), (0, 0, 300, 150))  # top half fully transparent black
    out = decode_and_resize(png_bytes(img), (224, 224)).pixels
    assert out[:100].min() == 255  # white, not black
    assert tuple(out[200, 100]) == (255, 0, 0)


def test_palette_with_transparency_decodes(edge_dir):
    folder, _ = edge_dir
    out = decode_and_resize(read(os.path.join(folder, "palette_alpha.png")))
    assert out.source_mode == "P"
    assert out.pixels.shape == (224, 224, 3)


@pytest.mark.parametrize("name", [n for n, outcome in EDGE_CASES.items() if outcome != "ok"])
def test_bad_files_raise_image_error_with_stage_and_reason(edge_dir, name):
    folder, _ = edge_dir
    with pytest.raises(ImageError) as err:
        decode_and_resize(read(os.path.join(folder, name)))
    assert f"{err.value.stage}/{err.value.reason}" == EDGE_CASES[name]
    assert err.value.message


def test_max_pixels_refuses_from_header_alone():
    # 12000 x 12000 = 144 MP: above our limit but below Pillow's hard error, so our check must catch it.
    with pytest.raises(ImageError) as err:
        decode_and_resize(bomb_png_bytes(12_000, 12_000))
    assert err.value.reason == "too_many_pixels"
    assert "12000x12000" in err.value.message
    with pytest.raises(ImageError):
        decode_and_resize(png_bytes(Image.new("RGB", (100, 100))), max_pixels=5_000)
