"""Pure image helpers: bytes in, model-ready pixels out, in one step.

Decoding and resizing happen together so that only the small, fixed-size
uint8 array (224*224*3 = 150 KB) moves between pipeline steps, never the
full-resolution decoded photo.

Resize policy (``ResizeMode``):

* ``center_crop`` (default): scale so the shorter side equals the target,
  then take the central square. Aspect ratio is preserved, which is how
  ImageNet models were evaluated; the cost is losing the edges of very
  wide or tall images.
* ``squash``: scale both sides to the target independently (what
  ``keras.utils.load_img(target_size=...)`` does). Keeps all content,
  distorts shapes.

Both use Pillow's antialiased bilinear filter. Before that:

* EXIF orientation is applied, so a phone photo stored sideways is embedded
  upright.
* JPEGs are decoded with ``draft``: libjpeg scales by 1/2, 1/4 or 1/8 during
  the DCT while keeping both sides >= the target, which makes multi-megapixel
  photos 5-8x cheaper to decode. Pixels differ slightly from a full decode.
* Any mode becomes RGB (``beam_jobs.pixels.to_rgb``): 16-bit and 32-bit
  integer images are rescaled to 8 bits rather than clipped, and transparent
  images are composited over white so transparent pixels do not become
  arbitrary colours.
* Images with more than ``max_pixels`` pixels are refused from the header
  alone, before any pixel is decoded (decompression-bomb guard).
"""

from __future__ import annotations

import hashlib
import io
import warnings
from dataclasses import dataclass

import numpy as np
from PIL import Image, ImageOps

from beam_jobs.contract import DEFAULT_MAX_PIXELS, ResizeMode
from beam_jobs.pixels import to_rgb

_EXIF_ORIENTATION = 0x0112


class ImageError(Exception):
    """A single input that cannot become model pixels.

    ``stage`` says where it failed (``read`` or ``decode``) and ``reason`` is a
    short stable label used in failure records and metric names.
    """

    def __init__(self, stage: str, reason: str, message: str):
        super().__init__(message)
        self.stage = stage
        self.reason = reason
        self.message = message


@dataclass(frozen=True)
class DecodedImage:
    """Model-ready pixels plus facts about the source file."""

    pixels: np.ndarray  # (height, width, 3) uint8
    width: int  # of the source image, after EXIF orientation
    height: int
    content_sha256: str
    source_mode: str


def sha256_hex(data: bytes) -> str:
    return hashlib.sha256(data).hexdigest()


def _crop_box(width: int, height: int, target_w: int, target_h: int) -> tuple[float, float, float, float]:
    """Largest centred box with the target's aspect ratio."""
    target_ratio = target_w / target_h
    if width / height > target_ratio:
        new_w = height * target_ratio
        left = (width - new_w) / 2.0
        return (left, 0.0, left + new_w, float(height))
    new_h = width / target_ratio
    top = (height - new_h) / 2.0
    return (0.0, top, float(width), top + new_h)


def decode_and_resize(
    data: bytes,
    size: tuple[int, int] = (224, 224),
    mode: ResizeMode = ResizeMode.CENTER_CROP,
    max_pixels: int = DEFAULT_MAX_PIXELS,
    use_draft: bool = True,
) -> DecodedImage:
    """Decode encoded image bytes and resize them to ``size`` (width, height).

    Raises ``ImageError`` for anything that cannot become pixels; never
    returns a partial result.
    """
    return decode_for_sizes(data, (size,), mode, max_pixels, use_draft)[0]


def decode_for_sizes(
    data: bytes,
    sizes: tuple[tuple[int, int], ...],
    mode: ResizeMode = ResizeMode.CENTER_CROP,
    max_pixels: int = DEFAULT_MAX_PIXELS,
    use_draft: bool = True,
) -> list[DecodedImage]:
    """Decode once, then resize the same pixels to each of ``sizes`` (one result per size, in order).

    Several models in one pass take their own input sizes from one decode: the
    decode (and EXIF, mode conversion) is the expensive part, a resize of the
    decoded picture is cheap. Draft decoding keeps both sides >= the largest size.
    """
    if not data:
        raise ImageError("decode", "empty_file", "file is empty (0 bytes)")
    draft_w, draft_h = max(w for w, _ in sizes), max(h for _, h in sizes)
    digest = sha256_hex(data)
    try:
        with warnings.catch_warnings():
            # Our own max_pixels check replaces Pillow's warning.
            warnings.simplefilter("ignore", Image.DecompressionBombWarning)
            img = Image.open(io.BytesIO(data))
            src_format = img.format or "unknown"
            src_mode = img.mode
            w0, h0 = img.size
            if w0 <= 0 or h0 <= 0:
                raise ImageError("decode", "bad_dimensions", f"image has size {w0}x{h0}")
            if w0 * h0 > max_pixels:
                raise ImageError(
                    "decode",
                    "too_many_pixels",
                    f"image is {w0}x{h0} = {w0 * h0} pixels, over the limit of {max_pixels} "
                    "(possible decompression bomb); raise --max_pixels to accept it",
                )
            # Only worth it when libjpeg can scale by at least 1/2.
            if use_draft and src_format == "JPEG" and w0 >= 2 * draft_w and h0 >= 2 * draft_h:
                img.draft("RGB", (draft_w, draft_h))
            # Orientations 5-8 are the ones that swap width and height on display.
            orientation = img.getexif().get(_EXIF_ORIENTATION, 1)
            src_w, src_h = (h0, w0) if orientation in (5, 6, 7, 8) else (w0, h0)
            img.load()
            img = ImageOps.exif_transpose(img)
            img = to_rgb(img)
            all_pixels = []
            for target_w, target_h in sizes:
                if mode == ResizeMode.CENTER_CROP:
                    box = _crop_box(img.size[0], img.size[1], target_w, target_h)
                    resized = img.resize((target_w, target_h), Image.Resampling.BILINEAR, box=box)
                else:
                    resized = img.resize((target_w, target_h), Image.Resampling.BILINEAR)
                all_pixels.append(np.asarray(resized, dtype=np.uint8))
    except ImageError:
        raise
    except Image.DecompressionBombError as exc:
        raise ImageError("decode", "too_many_pixels", str(exc)) from exc
    except Image.UnidentifiedImageError as exc:
        raise ImageError("decode", "not_an_image", "not a recognised image format") from exc
    except (OSError, SyntaxError, ValueError, EOFError) as exc:
        text = str(exc)
        reason = "truncated" if "truncated" in text.lower() else "corrupt"
        raise ImageError("decode", reason, f"{type(exc).__name__}: {text}") from exc
    for (target_w, target_h), pixels in zip(sizes, all_pixels, strict=True):
        if pixels.shape != (target_h, target_w, 3):
            raise ImageError("decode", "bad_shape", f"decoded to shape {pixels.shape}")
    return [
        DecodedImage(pixels=pixels, width=int(src_w), height=int(src_h), content_sha256=digest, source_mode=src_mode)
        for pixels in all_pixels
    ]
