"""Any Pillow image -> 8-bit RGB: one conversion for the model's input and for the thumbnails.

Shared by the extraction's decode (``beam_jobs.extract_embeddings.images``) and the thumbnails of the maps
and reports (``beam_jobs.thumbnails``), so a picture looks the same in both:

* 16-bit and 32-bit integer images are rescaled to 8 bits rather than clipped (plain ``I`` by its range);
* float (``F``) images are stretched from their minimum to their maximum, NaN drawn as the minimum;
* transparent images are composited over white, so transparent pixels do not become arbitrary colours.
"""

from __future__ import annotations

import numpy as np
from PIL import Image


def to_rgb(img: Image.Image) -> Image.Image:
    """Any Pillow mode -> 8-bit RGB (module doc)."""
    mode = img.mode
    if mode == "RGB":
        return img
    if mode in ("I;16", "I;16B", "I;16L", "I;16N", "I"):
        arr = np.asarray(img)
        # 16-bit data fills 0..65535; plain "I" may hold anything, so scale by its range.
        peak = 65535.0 if mode.startswith("I;16") else float(max(int(arr.max()), 1))
        arr8 = np.clip(arr.astype(np.float64) * (255.0 / peak), 0, 255).astype(np.uint8)
        return Image.fromarray(arr8, mode="L").convert("RGB")
    if mode == "F":
        arr = np.asarray(img, dtype=np.float64)
        lo, hi = float(np.nanmin(arr)), float(np.nanmax(arr))
        scale = 255.0 / (hi - lo) if hi > lo else 0.0
        arr8 = np.clip((np.nan_to_num(arr, nan=lo) - lo) * scale, 0, 255).astype(np.uint8)
        return Image.fromarray(arr8, mode="L").convert("RGB")
    has_alpha = (
        mode in ("RGBA", "LA", "PA", "RGBa", "La")
        or (mode == "P" and "transparency" in img.info)
        or (mode in ("L", "RGB") and "transparency" in img.info)
    )
    if has_alpha:
        rgba = img.convert("RGBA")
        background = Image.new("RGBA", rgba.size, (255, 255, 255, 255))
        return Image.alpha_composite(background, rgba).convert("RGB")
    return img.convert("RGB")
