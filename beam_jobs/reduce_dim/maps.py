"""The static picture ``map.png`` (alerts, reports, the maps index) and what the maps share.

Pure rendering helpers (inputs are arrays, outputs are bytes); the job's commit
step calls them once (``outputs.write_maps``). The interactive ``map.html`` is drawn
by ``explorer.py`` (its page shell is ``templates/map.html``, package data read by
``page_template``) and ``map_mosaic.png`` by ``mosaic.py``. A ``Layer`` is extra points
drawn with a map (the reference's grey cloud, a search's results).
"""

from __future__ import annotations

import functools
import io
from collections.abc import Sequence
from dataclasses import dataclass
from importlib import resources

import numpy as np

MAP_TEMPLATE = "templates/map.html"
# Colour-blind-friendly qualitative palette (Okabe-Ito) for up to 8 partitions; more partitions
# (a month of nights) get evenly spaced viridis colours, so dates read as a gradient.
PALETTE = ["#0072B2", "#E69F00", "#009E73", "#CC79A7", "#56B4E9", "#D55E00", "#F0E442", "#000000"]


@dataclass(frozen=True)
class Layer:
    """Extra points drawn with the map: ``label`` names them in the legend; ``uris`` may be empty."""

    label: str
    x: np.ndarray
    y: np.ndarray
    uris: Sequence[str] = ()

    def __len__(self) -> int:
        return len(self.x)


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


def render_png(x: np.ndarray, y: np.ndarray, groups: np.ndarray, labels: MapLabels, reference=None) -> bytes:
    """Scatter of every point, coloured by partition (``groups``: one label per point).

    ``reference`` (a ``Layer``): drawn first, in grey, so tonight's points sit on top of it.
    """
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
    if reference is not None and len(reference):
        ax.scatter(
            reference.x,
            reference.y,
            s=max(size * 0.6, 1.0),
            c="#b0b0b0",
            alpha=0.5,
            linewidths=0,
            rasterized=True,
            label=f"{reference.label} ({len(reference):,})",
        )
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
    with_reference = reference is not None and len(reference) > 0
    if (len(names) > 1 or with_reference) and len(names) <= 20:
        ax.legend(title="partition", markerscale=max(1.0, 6 / np.sqrt(size)), fontsize=9, frameon=False, loc="best")
    elif len(names) > 20:
        sm = ScalarMappable(cmap="viridis", norm=Normalize(0, len(names) - 1))
        bar = fig.colorbar(sm, ax=ax, shrink=0.8)
        bar.set_ticks([0, len(names) - 1], labels=[names[0], names[-1]])
        bar.set_label("partition")
    buf = io.BytesIO()
    fig.savefig(buf, format="png")
    return buf.getvalue()


@functools.cache
def page_template() -> str:
    """``templates/map.html`` (the explorer's page shell, a Bokeh file template), read once per process."""
    return resources.files(__package__).joinpath(MAP_TEMPLATE).read_text(encoding="utf-8")
