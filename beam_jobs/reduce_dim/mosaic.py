"""``map_mosaic.png``: the night's images laid out on a grid by their 2D position.

Pure rendering helpers: coordinates and encoded thumbnails in, PNG bytes out; no Beam, no I/O.
Each of ``side * side`` images gets the cell nearest its position overall (a linear assignment),
so the grid keeps the map's layout while no two images overlap.
"""

from __future__ import annotations

import io
from collections.abc import Sequence

import numpy as np


def square(img, cell: int):
    """Centre-crop an image to a square and resize it to ``cell`` pixels."""
    from PIL import ImageOps

    return ImageOps.fit(img.convert("RGB"), (cell, cell))


def grid_assignment(x: np.ndarray, y: np.ndarray, side: int) -> np.ndarray:
    """Cell index (row-major, top row first) for each of ``side * side`` points, nearest overall.

    A linear assignment (scipy's ``linear_sum_assignment``) of the points, scaled to
    the unit square, to the cell centres: minimum total squared distance.
    """
    from scipy.optimize import linear_sum_assignment

    n = side * side
    xy = np.column_stack([np.asarray(x, np.float64)[:n], np.asarray(y, np.float64)[:n]])
    lo, hi = xy.min(axis=0), xy.max(axis=0)
    unit = (xy - lo) / np.where(hi > lo, hi - lo, 1.0)
    unit[:, 1] = 1.0 - unit[:, 1]  # image rows grow downwards
    centres = (np.stack(np.meshgrid(np.arange(side), np.arange(side)), axis=-1).reshape(-1, 2) + 0.5) / side
    cost = ((unit[:, None, :] - centres[None, :, :]) ** 2).sum(axis=2)
    rows, cells = linear_sum_assignment(cost)
    out = np.empty(n, dtype=np.int64)
    out[rows] = cells
    return out


def render_mosaic(x: np.ndarray, y: np.ndarray, images: Sequence[bytes], grid: int, cell: int) -> tuple[bytes, int]:
    """(PNG bytes, images used): the images on a ``side x side`` grid by their 2D position.

    ``side`` is ``grid`` or, with fewer images, the largest square they fill. The first
    ``side * side`` images (the seeded sample's order) are used.
    """
    from PIL import Image

    side = min(grid, int(np.sqrt(len(images))))
    if side < 2:
        raise ValueError(f"a mosaic needs at least 4 images, got {len(images)}")
    cells = grid_assignment(x, y, side)
    canvas = Image.new("RGB", (side * cell, side * cell), "white")
    for data, where in zip(images[: side * side], cells, strict=True):
        with Image.open(io.BytesIO(data)) as img:
            r, c = divmod(int(where), side)
            canvas.paste(square(img, cell), (c * cell, r * cell))
    out = io.BytesIO()
    canvas.save(out, format="PNG", compress_level=6)
    return out.getvalue(), side * side
