"""The report's small pictures (matplotlib, no pyplot): trend sparklines, the score histogram, the shares chart,
a cluster outlined on a small map, and ``report.png``, the one-image summary for chat alerts."""

from __future__ import annotations

import io
from collections.abc import Sequence
from typing import Any

import numpy as np

ACCENT = "#c2410c"
BLUE = "#2563eb"
GREY = "#9ca3af"


def _figure(width_px: int, height_px: int, dpi: int = 100):
    from matplotlib.figure import Figure

    return Figure(figsize=(width_px / dpi, height_px / dpi), dpi=dpi)


def _png(fig, **kwargs: Any) -> bytes:
    buf = io.BytesIO()
    fig.savefig(buf, format="png", **kwargs)
    return buf.getvalue()


def sparkline(values: Sequence[float], tonight: float | None, median: float | None) -> bytes:
    """Earlier nights' values (oldest first) as a line, the median dashed, tonight as a dot at the end."""
    fig = _figure(150, 34)
    ax = fig.add_axes((0.02, 0.1, 0.96, 0.8))
    xs = list(range(len(values)))
    if values:
        ax.plot(xs, values, color=GREY, linewidth=1.2)
    if median is not None:
        ax.axhline(median, color=GREY, linewidth=0.8, linestyle="--")
    if tonight is not None:
        ax.plot([len(values)], [tonight], "o", color=ACCENT, markersize=4)
    ax.set_xlim(-0.5, len(values) + 0.5)
    ax.axis("off")
    return _png(fig, transparent=True)


def score_histogram(tonight: np.ndarray, held: np.ndarray, threshold: float) -> bytes:
    """Tonight's scores against the held-out window rows', on a log axis, the threshold marked."""
    fig = _figure(520, 170)
    ax = fig.add_axes((0.08, 0.26, 0.9, 0.68))
    both = np.concatenate([tonight, held]) if len(held) else tonight
    positive = both[both > 0]
    low = float(np.quantile(positive, 0.001)) if len(positive) else 1e-6
    high = max(float(both.max()) if len(both) else 1.0, threshold, low * 10)
    bins = np.geomspace(low, high * 1.05, 60)
    if len(held):
        share = np.full(len(held), 1.0 / len(held))
        ax.hist(np.clip(held, low, None), bins=bins, weights=share, color=GREY, alpha=0.7, label="earlier nights")
    share = np.full(len(tonight), 1.0 / max(len(tonight), 1))
    ax.hist(np.clip(tonight, low, None), bins=bins, weights=share, color=BLUE, alpha=0.6, label="tonight")
    if threshold > 0:
        ax.axvline(threshold, color=ACCENT, linewidth=1.2, label="novelty threshold")
    ax.set_xscale("log")
    ax.set_yticks([])
    ax.set_xlabel("distance to the nearest earlier image (reduced, 1 - cosine, log scale)", fontsize=8)
    ax.tick_params(labelsize=7)
    ax.legend(fontsize=7, frameon=False)
    return _png(fig)


def shares_chart(clusters: list[dict[str, Any]]) -> bytes:
    """Each cluster's share in the window and tonight (clusters in number order)."""
    ordered = sorted(clusters, key=lambda c: c["cluster"])
    fig = _figure(520, 40 + 14 * len(ordered))
    ax = fig.add_axes((0.12, 40 / (40 + 14 * len(ordered)), 0.85, 1 - 50 / (40 + 14 * len(ordered))))
    ys = np.arange(len(ordered))
    ax.barh(ys + 0.2, [100 * c["share_window"] for c in ordered], height=0.4, color=GREY, label="window")
    ax.barh(ys - 0.2, [100 * c["share_tonight"] for c in ordered], height=0.4, color=BLUE, label="tonight")
    ax.set_yticks(ys, [f"#{c['cluster']}" for c in ordered], fontsize=7)
    ax.invert_yaxis()
    ax.tick_params(axis="x", labelsize=7)
    ax.set_xlabel("share of rows, %", fontsize=8)
    ax.legend(fontsize=7, frameon=False, loc="lower right")
    return _png(fig)


def cluster_map(
    background: np.ndarray, members: np.ndarray, ring: np.ndarray | None, grew: bool, size_px: int = 170
) -> bytes:
    """A small map (the first two PCA axes): every pooled row in grey, the cluster's in colour, its outline."""
    fig = _figure(size_px, size_px)
    ax = fig.add_axes((0.02, 0.02, 0.96, 0.96))
    colour = BLUE if grew else ACCENT
    if len(background):
        ax.scatter(background[:, 0], background[:, 1], s=1, color="#d1d5db", linewidths=0, rasterized=True)
    if len(members):
        ax.scatter(members[:, 0], members[:, 1], s=2, color=colour, alpha=0.6, linewidths=0)
    if ring is not None:
        ax.plot(ring[:, 0], ring[:, 1], color=colour, linewidth=1.5)
    ax.set_xticks([])
    ax.set_yticks([])
    for spine in ax.spines.values():
        spine.set_color("#e5e7eb")
    return _png(fig)


def _thumb_array(image: bytes) -> np.ndarray | None:
    from PIL import Image

    try:
        with Image.open(io.BytesIO(image)) as img:
            return np.asarray(img.convert("RGB"))
    except Exception:  # noqa: BLE001 - a thumbnail that will not decode is left out
        return None


def summary_png(title: str, lines: list[tuple[str, str]], novel: list[tuple[bytes, str]], note: str) -> bytes:
    """``report.png``: the title, the night's key figures on the left, the most novel thumbnails on the right."""
    fig = _figure(1200, 675)
    fig.patch.set_facecolor("white")
    fig.text(0.03, 0.93, title, fontsize=20, weight="bold", color="#111827")
    y = 0.84
    for label, value in lines[:8]:
        fig.text(0.03, y, label, fontsize=10, color="#6b7280")
        fig.text(0.03, y - 0.035, value, fontsize=12, color="#111827", wrap=True)
        y -= 0.095
    fig.text(0.03, 0.03, note, fontsize=8, color="#6b7280")
    shown = [(arr, caption) for image, caption in novel[:12] if (arr := _thumb_array(image)) is not None]
    fig.text(0.42, 0.88, "new tonight" if shown else "new tonight: nothing to show", fontsize=13, weight="bold")
    cols, rows = 4, 3
    for i, (arr, caption) in enumerate(shown):
        r, c = divmod(i, cols)
        ax = fig.add_axes((0.42 + c * 0.145, 0.60 - r * 0.27, 0.13, 0.22))
        ax.imshow(arr)
        ax.set_title(caption, fontsize=8, color="#374151")
        ax.axis("off")
        if r >= rows - 1 and c == cols - 1:
            break
    return _png(fig, facecolor="white")
