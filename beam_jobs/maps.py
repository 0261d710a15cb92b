"""The pictures a person opens after a run: ``map.png`` and a self-contained ``map.html``.

Pure rendering helpers (inputs are arrays and dicts, outputs are bytes or
text); reduce_dim calls them once, in its commit step. The HTML needs no
network: styles, script, points and JPEG thumbnails are all inline.
"""

from __future__ import annotations

import base64
import html
import io
import json
from dataclasses import dataclass

import numpy as np

# Colour-blind-friendly qualitative palette (Okabe-Ito), then matplotlib's tab20.
PALETTE = ["#0072B2", "#E69F00", "#009E73", "#CC79A7", "#56B4E9", "#D55E00", "#F0E442", "#000000"]


@dataclass(frozen=True)
class MapLabels:
    title: str
    subtitle: str
    x_label: str
    y_label: str
    footer: str = ""


def colours(n: int) -> list[str]:
    if n <= len(PALETTE):
        return PALETTE[:n]
    import matplotlib

    cmap = matplotlib.colormaps["viridis"]
    return [matplotlib.colors.to_hex(cmap(i / max(n - 1, 1))) for i in range(n)]


def render_png(x: np.ndarray, y: np.ndarray, groups: np.ndarray, labels: MapLabels) -> bytes:
    """Scatter of every point, coloured by partition (``groups``: one label per point)."""
    # The object API, not pyplot: no process-wide backend switch (this also runs inside
    # callers' processes) and no global figure state shared between worker threads.
    from matplotlib.cm import ScalarMappable
    from matplotlib.colors import Normalize
    from matplotlib.figure import Figure

    n = len(x)
    names = sorted({str(g) for g in groups})
    palette = colours(len(names))
    # Marker size and alpha fall with the number of points so dense regions stay readable.
    size = float(np.clip(6000 / max(n, 1), 1.5, 36))
    alpha = float(np.clip(3000 / max(n, 1), 0.25, 0.85))
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


def thumbnail_data_uri(data: bytes, size: int = 96, max_pixels: int = 89_478_485) -> str | None:
    """A small JPEG of an image as a data: URI, or None if it cannot be decoded."""
    from PIL import Image, ImageOps

    try:
        with Image.open(io.BytesIO(data)) as img:
            if img.width * img.height > max_pixels:
                return None
            img.draft("RGB", (size * 2, size * 2))
            img = ImageOps.exif_transpose(img)
            if img.mode in ("RGBA", "LA", "P", "PA"):
                rgba = img.convert("RGBA")
                img = Image.new("RGB", rgba.size, "white")
                img.paste(rgba, mask=rgba.getchannel("A"))
            elif img.mode != "RGB":
                img = img.convert("RGB")
            img.thumbnail((size, size))
            out = io.BytesIO()
            img.save(out, format="JPEG", quality=72, optimize=True)
    except Exception:  # noqa: BLE001 - a missing thumbnail must not lose the map
        return None
    return "data:image/jpeg;base64," + base64.b64encode(out.getvalue()).decode("ascii")


_HTML = """<!doctype html>
<html lang="en"><head><meta charset="utf-8">
<meta name="viewport" content="width=device-width, initial-scale=1">
<title>__TITLE__</title>
<style>
 body{font-family:system-ui,-apple-system,Segoe UI,Roboto,sans-serif;margin:0;background:#fafafa;color:#222}
 header{padding:16px 24px 8px}
 h1{font-size:20px;margin:0 0 4px}
 .sub{color:#555;font-size:13px;margin:2px 0}
 .note{color:#777;font-size:12px;margin:6px 0 0}
 main{display:flex;gap:16px;padding:0 24px 24px;align-items:flex-start}
 #plot{background:#fff;border:1px solid #ddd;border-radius:6px}
 #plot circle{stroke:#fff;stroke-width:.5;cursor:pointer}
 #plot circle:hover{stroke:#000;stroke-width:1.5}
 .axis{font-size:12px;fill:#444}
 .grid{stroke:#eee}
 aside{font-size:13px;min-width:180px}
 aside h2{font-size:13px;margin:0 0 6px;color:#444}
 .key{display:flex;align-items:center;gap:6px;margin:3px 0}
 .dot{width:10px;height:10px;border-radius:50%;display:inline-block}
 #tip{position:fixed;pointer-events:none;background:#fff;border:1px solid #bbb;border-radius:6px;
      box-shadow:0 2px 10px rgba(0,0,0,.18);padding:8px;font-size:12px;max-width:260px;display:none;z-index:9}
 #tip img{display:block;max-width:240px;max-height:240px;margin-bottom:6px;border-radius:3px}
 #tip .uri{word-break:break-all;font-family:ui-monospace,Menlo,monospace;font-size:11px}
 #tip .xy{color:#666;margin-top:3px}
</style></head>
<body>
<header><h1>__TITLE__</h1><p class="sub">__SUBTITLE__</p><p class="note">__NOTE__</p></header>
<main><svg id="plot" width="900" height="640" role="img" aria-label="__TITLE__"></svg>
<aside><h2>partition</h2><div id="keys"></div></aside></main>
<div id="tip"></div>
<script>
const DATA = __DATA__;
(function () {
  const svg = document.getElementById('plot'), tip = document.getElementById('tip');
  const W = 900, H = 640, M = {l: 64, r: 16, t: 16, b: 52}, NS = 'http://www.w3.org/2000/svg';
  const pts = DATA.points;
  const xs = pts.map(p => p[0]), ys = pts.map(p => p[1]);
  const pad = (lo, hi) => { const d = (hi - lo) || 1; return [lo - d * 0.04, hi + d * 0.04]; };
  const [x0, x1] = pad(Math.min(...xs), Math.max(...xs)), [y0, y1] = pad(Math.min(...ys), Math.max(...ys));
  const sx = v => M.l + (v - x0) / (x1 - x0) * (W - M.l - M.r);
  const sy = v => H - M.b - (v - y0) / (y1 - y0) * (H - M.t - M.b);
  const el = (name, attrs, text) => { const e = document.createElementNS(NS, name);
    for (const k in attrs) e.setAttribute(k, attrs[k]); if (text !== undefined) e.textContent = text; return e; };
  const ticks = (lo, hi) => { const step = Math.pow(10, Math.floor(Math.log10((hi - lo) / 5)));
    const m = [1, 2, 5, 10].find(f => (hi - lo) / (step * f) <= 8) * step; const out = [];
    for (let v = Math.ceil(lo / m) * m; v <= hi; v += m) out.push(+v.toFixed(6)); return out; };
  for (const v of ticks(x0, x1)) { svg.appendChild(el('line', {x1: sx(v), x2: sx(v), y1: M.t, y2: H - M.b, class: 'grid'}));
    svg.appendChild(el('text', {x: sx(v), y: H - M.b + 16, 'text-anchor': 'middle', class: 'axis'}, v)); }
  for (const v of ticks(y0, y1)) { svg.appendChild(el('line', {x1: M.l, x2: W - M.r, y1: sy(v), y2: sy(v), class: 'grid'}));
    svg.appendChild(el('text', {x: M.l - 8, y: sy(v) + 4, 'text-anchor': 'end', class: 'axis'}, v)); }
  svg.appendChild(el('text', {x: (M.l + W - M.r) / 2, y: H - 12, 'text-anchor': 'middle', class: 'axis'}, DATA.x_label));
  svg.appendChild(el('text', {x: 16, y: (M.t + H - M.b) / 2, 'text-anchor': 'middle', class: 'axis',
    transform: `rotate(-90 16 ${(M.t + H - M.b) / 2})`}, DATA.y_label));
  const r = pts.length > 2000 ? 2.5 : pts.length > 500 ? 3.5 : 5;
  const keys = document.getElementById('keys');
  DATA.groups.forEach((g, i) => { const k = document.createElement('div'); k.className = 'key';
    k.innerHTML = `<span class="dot" style="background:${DATA.colours[i]}"></span>`;
    k.appendChild(document.createTextNode(`${g} (${DATA.group_counts[i]})`)); keys.appendChild(k); });
  pts.forEach((p, i) => { const c = el('circle', {cx: sx(p[0]), cy: sy(p[1]), r: r, fill: DATA.colours[p[2]],
    'fill-opacity': 0.8, 'data-i': i}); svg.appendChild(c); });
  const show = (i, cx, cy) => { const p = pts[i]; tip.innerHTML = '';
    if (p[4]) { const img = document.createElement('img'); img.src = p[4]; img.alt = 'thumbnail'; tip.appendChild(img); }
    const u = document.createElement('div'); u.className = 'uri'; u.textContent = p[3]; tip.appendChild(u);
    const xy = document.createElement('div'); xy.className = 'xy';
    xy.textContent = `${DATA.groups[p[2]]} \\u00b7 x=${p[0].toFixed(3)} y=${p[1].toFixed(3)}`; tip.appendChild(xy);
    tip.style.display = 'block';
    const left = cx + 16 + 270 > window.innerWidth ? cx - 276 : cx + 16;
    tip.style.left = left + 'px'; tip.style.top = Math.max(8, cy - 40) + 'px'; };
  const pointAt = ev => { const i = ev.target.getAttribute && ev.target.getAttribute('data-i');
    return i === null || i === undefined ? null : +i; };
  let pinned = null;
  svg.addEventListener('mousemove', ev => { const i = pointAt(ev);
    if (i !== null) show(i, ev.clientX, ev.clientY); else if (pinned === null) tip.style.display = 'none'; });
  svg.addEventListener('mouseleave', () => { if (pinned === null) tip.style.display = 'none'; });
  // A click pins the tooltip and puts #point=N in the address, so a link can show one image.
  svg.addEventListener('click', ev => { const i = pointAt(ev); pinned = i;
    if (i === null) { tip.style.display = 'none'; history.replaceState(null, '', ' '); }
    else { show(i, ev.clientX, ev.clientY); history.replaceState(null, '', '#point=' + i); } });
  const m = /point=(\\d+)/.exec(location.hash);
  if (m && +m[1] < pts.length) { pinned = +m[1]; const c = svg.querySelector(`[data-i="${pinned}"]`).getBoundingClientRect();
    show(pinned, c.left + c.width / 2, c.top + c.height / 2); }
})();
</script>
</body></html>
"""


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
        _HTML.replace("__TITLE__", html.escape(labels.title))
        .replace("__SUBTITLE__", html.escape(labels.subtitle))
        .replace("__NOTE__", html.escape(note))
        .replace("__DATA__", payload)
    )
