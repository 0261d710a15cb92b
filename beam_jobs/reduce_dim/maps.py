"""The pictures a person opens after a run: ``map.png`` and a self-contained ``map.html``.

Pure rendering helpers (inputs are arrays and dicts, outputs are bytes or
text); the job's commit step calls them once (``outputs.write_maps``). The
HTML needs no network: styles, script, points and JPEG thumbnails are all
inline. Its markup and script live in ``templates/map.html`` (package data);
``render_html`` fills the placeholders ``__TITLE__``, ``__SUBTITLE__``,
``__NOTE__`` and ``__DATA__`` (the points as JSON).
"""

from __future__ import annotations

import base64
import functools
import html
import io
import json
from dataclasses import dataclass
from importlib import resources

import numpy as np

from beam_jobs.contract import DEFAULT_MAX_PIXELS

MAP_TEMPLATE = "templates/map.html"
# Colour-blind-friendly qualitative palette (Okabe-Ito) for up to 8 partitions; more partitions
# (a month of nights) get evenly spaced viridis colours, so dates read as a gradient.
PALETTE = ["#0072B2", "#E69F00", "#009E73", "#CC79A7", "#56B4E9", "#D55E00", "#F0E442", "#000000"]


@dataclass(frozen=True)
class MapLabels:
    title: str
    subtitle: str
    x_label: str
    y_label: str
    footer: str = ""


def colours(count: int) -> list[str]:
    """One colour per partition, in the partitions' sorted order."""
    if count <= len(PALETTE):
        return PALETTE[:count]
    import matplotlib

    cmap = matplotlib.colormaps["viridis"]
    return [matplotlib.colors.to_hex(cmap(i / max(count - 1, 1))) for i in range(count)]


def render_png(x: np.ndarray, y: np.ndarray, groups: np.ndarray, labels: MapLabels) -> bytes:
    """Scatter of every point, coloured by partition (``groups``: one label per point)."""
    # The object API, not pyplot: no process-wide backend switch (this also runs inside
    # callers' processes) and no global figure state shared between worker threads.
    from matplotlib.cm import ScalarMappable
    from matplotlib.colors import Normalize
    from matplotlib.figure import Figure

    n_points = len(x)
    names = sorted({str(g) for g in groups})
    palette = colours(len(names))
    # Marker size and alpha fall with the number of points so dense regions stay readable.
    size = float(np.clip(6000 / max(n_points, 1), 1.5, 36))
    alpha = float(np.clip(3000 / max(n_points, 1), 0.25, 0.85))
    fig = Figure(figsize=(10, 7.5), dpi=120, layout="constrained")
    ax = fig.subplots()
    groups = np.asarray([str(g) for g in groups])
    for name, colour in zip(names, palette, strict=True):
        mask = groups == name
        ax.scatter(
            x[mask],
            y[mask],
            s=size,
            c=colour,
            alpha=alpha,
            linewidths=0,
            rasterized=True,
            label=f"{name} ({int(mask.sum()):,})",
        )
    ax.set_xlabel(labels.x_label, fontsize=12)
    ax.set_ylabel(labels.y_label, fontsize=12)
    fig.suptitle(labels.title, fontsize=15, fontweight="bold")
    subtitle = f"{labels.subtitle}\n{labels.footer}" if labels.footer else labels.subtitle
    ax.set_title(subtitle, fontsize=9.5, color="#444444", linespacing=1.5)
    ax.grid(True, color="#e5e5e5", linewidth=0.8)
    ax.set_axisbelow(True)
    for side in ("top", "right"):
        ax.spines[side].set_visible(False)
    if 1 < len(names) <= 20:
        ax.legend(title="partition", markerscale=max(1.0, 6 / np.sqrt(size)), fontsize=9, frameon=False, loc="best")
    elif len(names) > 20:
        sm = ScalarMappable(cmap="viridis", norm=Normalize(0, len(names) - 1))
        bar = fig.colorbar(sm, ax=ax, shrink=0.8)
        bar.set_ticks([0, len(names) - 1], labels=[names[0], names[-1]])
        bar.set_label("partition")
    buf = io.BytesIO()
    fig.savefig(buf, format="png")
    return buf.getvalue()


def thumbnail_data_uri(data: bytes, size: int = 96, max_pixels: int = DEFAULT_MAX_PIXELS) -> str | None:
    """A small JPEG of an image as a data: URI, or None if it cannot be decoded.

    Any mode becomes RGB as in the extraction job (``images.to_rgb``: transparency over
    white, 16-bit and float images rescaled), and the same pixel limit refuses
    decompression bombs from the header alone.
    """
    from PIL import Image, ImageOps

    from beam_jobs.extract_embeddings.images import to_rgb

    try:
        with Image.open(io.BytesIO(data)) as img:
            if img.width * img.height > max_pixels:
                return None
            img.draft("RGB", (size * 2, size * 2))
            thumb = to_rgb(ImageOps.exif_transpose(img))
            thumb.thumbnail((size, size))
            out = io.BytesIO()
            thumb.save(out, format="JPEG", quality=72, optimize=True)
    except Exception:  # noqa: BLE001 - a missing thumbnail must not lose the map
        return None
    return "data:image/jpeg;base64," + base64.b64encode(out.getvalue()).decode("ascii")


@functools.cache
def html_template() -> str:
    """``templates/map.html``, read once per process from the installed package."""
    return resources.files(__package__).joinpath(MAP_TEMPLATE).read_text(encoding="utf-8")


def render_html(
    x: np.ndarray,
    y: np.ndarray,
    groups: list[str],
    uris: list[str],
    thumbnails: list[str | None],
    labels: MapLabels,
    note: str,
) -> str:
    """Interactive scatter: hover a point to see its thumbnail and URI."""
    names = sorted(set(groups))
    index = {name: i for i, name in enumerate(names)}
    counts = [sum(1 for g in groups if g == name) for name in names]
    points = [
        [round(float(a), 4), round(float(b), 4), index[g], u, t]
        for a, b, g, u, t in zip(x, y, groups, uris, thumbnails, strict=True)
    ]
    data = {
        "points": points,
        "groups": names,
        "group_counts": counts,
        "colours": colours(len(names)),
        "x_label": labels.x_label,
        "y_label": labels.y_label,
    }
    # "</" inside a JSON string must not close the <script> element.
    payload = json.dumps(data, separators=(",", ":")).replace("</", "<\\/")
    return (
        html_template()
        .replace("__TITLE__", html.escape(labels.title))
        .replace("__SUBTITLE__", html.escape(labels.subtitle))
        .replace("__NOTE__", html.escape(note))
        .replace("__DATA__", payload)
    )
