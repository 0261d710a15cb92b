"""beam_jobs.pixels.to_rgb: every Pillow mode becomes 8-bit RGB, the same for the model's input and the thumbnails.

Whole decodes of real files in each mode are tests/test_images.py; here the conversion alone, on made pixels.
"""

from __future__ import annotations

import numpy as np
from PIL import Image

from beam_jobs.pixels import to_rgb


def rgb(img: Image.Image) -> np.ndarray:
    out = to_rgb(img)
    assert out.mode == "RGB"
    assert out.size == img.size
    return np.asarray(out)


def test_rgb_is_returned_as_it_is():
    img = Image.new("RGB", (3, 2), (10, 20, 30))
    assert to_rgb(img) is img


def test_sixteen_bit_is_rescaled_not_clipped():
    img = Image.fromarray(np.array([[0, 32768, 65535]], dtype=np.uint16), mode="I;16")
    assert rgb(img)[0, :, 0].tolist() == [0, 127, 255]


def test_thirty_two_bit_is_scaled_by_its_own_peak():
    img = Image.fromarray(np.array([[0, 500, 1000]], dtype=np.int32), mode="I")
    assert rgb(img)[0, :, 1].tolist() == [0, 127, 255]


def test_float_is_stretched_from_its_minimum_to_its_maximum_and_nan_drawn_as_the_minimum():
    img = Image.fromarray(np.array([[-1.0, 0.0, 1.0, np.nan]], dtype=np.float32), mode="F")
    assert rgb(img)[0, :, 2].tolist() == [0, 127, 255, 0]
    flat = Image.fromarray(np.full((1, 2), 7.0, dtype=np.float32), mode="F")
    assert rgb(flat).max() == 0


def test_transparent_pixels_are_composited_over_white():
    rgba = np.zeros((1, 2, 4), dtype=np.uint8)
    rgba[0, 0] = (200, 0, 0, 255)  # opaque red
    rgba[0, 1] = (0, 0, 200, 0)  # fully transparent blue
    assert rgb(Image.fromarray(rgba, mode="RGBA")).tolist() == [[[200, 0, 0], [255, 255, 255]]]
    grey = Image.fromarray(np.array([[0, 0]], dtype=np.uint8), mode="L")
    grey.info["transparency"] = 0
    assert rgb(grey).tolist() == [[[255, 255, 255], [255, 255, 255]]]


def test_other_modes_convert_as_pillow_does():
    assert rgb(Image.new("L", (1, 1), 90)).tolist() == [[[90, 90, 90]]]
    assert rgb(Image.new("CMYK", (1, 1), (0, 0, 0, 0))).tolist() == [[[255, 255, 255]]]
