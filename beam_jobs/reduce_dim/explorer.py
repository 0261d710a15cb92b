"""``map.html`` as an explorer (Bokeh, one offline file) and ``map_mosaic.png`` (the images on a grid).

Pure rendering helpers: arrays and strings in, text or bytes out; no Beam, no I/O.

The explorer is a Bokeh 3.9 document saved with ``INLINE`` resources (BokehJS is
inside the file: no CDN, no server) and drawn with WebGL, so 10^5 points pan and
zoom smoothly. It has: one scatter per partition (the legend hides and shows
them), pan / wheel zoom / box select / lasso select, a hover card with the
thumbnail and URI of the point nearest the cursor, a panel listing the selected URIs with CSV and text
downloads, a search box that rings the points whose URI contains its text, and
a header with the run's figures.

Layers, for features that add data rather than pages:

* ``reference``: a grey cloud drawn behind the points (e.g. earlier nights);
* ``query``: highlighted points drawn on top (e.g. the results of a similarity search).

Both are ``Layer`` values given to ``render_explorer``; each gets a legend entry.
The search box's matches are drawn by a third renderer of the same kind.

Model names in the document (``EXPLORER_NAMES``) are what the browser test and
scripts look up with ``Bokeh.documents[0].get_model_by_name``.
"""

from __future__ import annotations

import html
import io
from collections.abc import Sequence
from dataclasses import dataclass

import numpy as np

from beam_jobs.reduce_dim.maps import MapLabels, colours, page_template

PLOT = "explorer"
SEARCH = "search"
HEADER = "header"
SEARCH_INFO = "search_info"
SEARCH_LAYER = "search_matches"
SELECTION = "selection"
SELECTION_INFO = "selection_info"
REFERENCE_LAYER = "reference"
QUERY_LAYER = "query"
EXPLORER_NAMES = (
    PLOT,
    HEADER,
    SEARCH,
    SEARCH_INFO,
    SEARCH_LAYER,
    SELECTION,
    SELECTION_INFO,
    REFERENCE_LAYER,
    QUERY_LAYER,
)
SELECTION_LISTED = 500  # URIs written in the panel; the downloads hold all
NOTHING_SELECTED = "Nothing selected: drag with box or lasso select (toolbar)."


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
class ExplorerPoints:
    """The points of the map, parallel arrays: coordinates, partition, URI, thumbnail data URI or None."""

    x: np.ndarray
    y: np.ndarray
    groups: Sequence[str]
    uris: Sequence[str]
    thumbnails: Sequence[str | None]


def marker_size(n_points: int) -> float:
    """Screen pixels per point: large for a few points, 3 px at 10^5."""
    return float(np.clip(300 / np.sqrt(max(n_points, 1)), 2.5, 10))


def pack_columns(partition: str, uris: np.ndarray, thumbnails: Sequence[str | None], mask: np.ndarray) -> dict:
    """One partition's URIs joined into one string and its thumbnails as (index, data URI) pairs."""
    where = np.flatnonzero(mask)
    index, data = [], []
    for k, i in enumerate(where):
        if thumbnails[i]:
            index.append(k)
            data.append(thumbnails[i])
    if any(URI_SEPARATOR in u for u in uris):
        uris = np.asarray([u.replace(URI_SEPARATOR, " ") for u in uris], dtype=object)
    return {"partition": partition, "uris": URI_SEPARATOR.join(uris.tolist()), "thumb_index": index, "thumbs": data}


def header_html(labels: MapLabels, facts: Sequence[tuple[str, str]], note: str) -> str:
    """Title, subtitle, the run's figures and the note, escaped (what a run says is never markup)."""
    items = "".join(
        f"<span style='margin-right:14px'><b>{html.escape(value)}</b> {html.escape(name)}</span>"
        for name, value in facts
    )
    lines = [
        f"<h1 style='font-size:20px;margin:0 0 4px'>{html.escape(labels.title)}</h1>",
        f"<div style='color:#555;font-size:13px'>{html.escape(labels.subtitle)}</div>",
        f"<div style='font-size:13px;margin-top:6px'>{items}</div>" if items else "",
        f"<div style='color:#777;font-size:12px;margin-top:4px'>{html.escape(note)}</div>" if note else "",
    ]
    if labels.footer:
        lines.append(f"<div style='color:#777;font-size:12px'>{html.escape(labels.footer)}</div>")
    return "".join(lines)


# One CustomJS per interaction; ``sources`` are the partitions' ColumnDataSources.
SELECTION_JS = """
const rows = [];
for (const s of sources) {
  const uri = s.get_column('uri'), x = s.get_column('x'), y = s.get_column('y');
  for (const i of s.selected.indices) rows.push([uri[i], x[i], y[i], s.tags[0].partition]);
}
rows.sort((a, b) => (a[0] < b[0] ? -1 : a[0] > b[0] ? 1 : 0));
window.__explorer_selection = rows;
info.text = rows.length ? `${rows.length.toLocaleString()} selected` : EMPTY;
const shown = rows.slice(0, listed).map(r => r[0]);
if (rows.length > listed) shown.push(`... and ${(rows.length - listed).toLocaleString()} more (download them all)`);
listing.text = shown.join('\\n');
"""

DOWNLOAD_JS = """
const rows = window.__explorer_selection || [];
const quote = v => { const t = String(v); return /[",\\n\\r]/.test(t) ? '"' + t.replace(/"/g, '""') + '"' : t; };
const text = kind === 'csv'
  ? ['image_uri,x,y,partition', ...rows.map(r => [r[0], r[1], r[2], r[3]].map(quote).join(','))].join('\\n') + '\\n'
  : rows.map(r => r[0]).join('\\n') + (rows.length ? '\\n' : '');
const blob = new Blob([text], {type: kind === 'csv' ? 'text/csv' : 'text/plain'});
const a = document.createElement('a');
a.href = URL.createObjectURL(blob);
a.download = kind === 'csv' ? 'selection.csv' : 'selection.txt';
document.body.appendChild(a); a.click(); a.remove();
setTimeout(() => URL.revokeObjectURL(a.href), 10000);
"""

SEARCH_JS = """
const q = (search.value_input || '').trim().toLowerCase();
const x = [], y = [], uri = [];
if (q) {
  for (const s of sources) {
    const u = s.get_column('uri'), sx = s.get_column('x'), sy = s.get_column('y');
    for (let i = 0; i < u.length; i++) {
      if (u[i].toLowerCase().includes(q)) { x.push(sx[i]); y.push(sy[i]); uri.push(u[i]); }
    }
  }
}
matches.data = {x, y, uri};
info.text = q ? `${x.length.toLocaleString()} point(s) match "${q}"` : '';
"""

# The URIs travel as one string per partition and the thumbnails as a sparse list (``pack_columns``):
# Bokeh's serializer encodes list items one by one (~1 s per 100k strings); this unpacks them on load.
UNPACK_JS = """
for (const s of sources) {
  const pack = s.tags[0], n = s.get_length() ?? 0;
  const uri = n ? pack.uris.split(SEP) : [];
  const thumb = new Array(n).fill('');
  const img = '<img alt="thumbnail" style="max-width:200px;max-height:200px" src="';
  pack.thumb_index.forEach((i, k) => { thumb[i] = img + pack.thumbs[k] + '">'; });
  const d = s.data;
  if (d instanceof Map) { d.set('uri', uri); d.set('thumb', thumb); } else { d.uri = uri; d.thumb = thumb; }
}
document.body.dataset.explorerReady = '1';
""".replace("SEP", "'\\x1f'")
URI_SEPARATOR = "\x1f"

# Hover: one card for the point nearest the cursor (Bokeh's tooltip lists every point under it, and
# at 10^5 points that is dozens), with its thumbnail, URI and partition. Each partition's renderer
# reports its hits; the nearest over all of them is shown. URIs are set as text, never as markup.
HOVER_JS = """
const st = window.__explorer_hover || (window.__explorer_hover = {hits: new Map(), card: null});
if (!st.card) {
  st.card = document.createElement('div');
  st.card.id = 'explorer-hover';
  st.card.style.cssText = 'position:fixed;z-index:10;pointer-events:none;display:none;background:#fff;' +
    'border:1px solid #bbb;border-radius:6px;box-shadow:0 2px 10px rgba(0,0,0,.18);padding:8px;max-width:280px;' +
    'font:12px system-ui,sans-serif';
  document.body.appendChild(st.card);
  document.addEventListener('mousemove', e => { st.mouse = [e.clientX, e.clientY]; });
}
const r = cb_data.renderer, s = r.data_source, hits = cb_data.index.indices, g = cb_data.geometry;
if (hits.length) {
  const xs = s.get_column('x'), ys = s.get_column('y');
  const wx = (xr.end - xr.start) || 1, wy = (yr.end - yr.start) || 1;
  let best = hits[0], bd = Infinity;
  for (const i of hits) {
    const d = ((xs[i] - g.x) / wx) ** 2 + ((ys[i] - g.y) / wy) ** 2;
    if (d < bd) { bd = d; best = i; }
  }
  st.hits.set(r.id, {s, i: best, d: bd, name: r.name});
} else {
  st.hits.delete(r.id);
}
let top = null;
for (const h of st.hits.values()) if (!top || h.d < top.d) top = h;
const card = st.card;
if (!top) { card.style.display = 'none'; return; }
const x = top.s.get_column('x')[top.i], y = top.s.get_column('y')[top.i];
card.innerHTML = (top.s.get_column('thumb')[top.i] || '') +
  '<div style="font:11px ui-monospace,Menlo,monospace;word-break:break-all"></div><div style="color:#666"></div>';
card.children[card.children.length - 2].textContent = top.s.get_column('uri')[top.i];
card.children[card.children.length - 1].textContent = `${top.name} · x=${x.toFixed(3)} y=${y.toFixed(3)}`;
const [mx, my] = st.mouse || [0, 0];
card.style.left = (mx + 300 > window.innerWidth ? mx - 296 : mx + 16) + 'px';
card.style.top = Math.max(8, Math.min(my - 40, window.innerHeight - 300)) + 'px';
card.style.display = 'block';
"""

# Click: the point nearest the click (within ~2% of the view) is announced to the page that embeds the
# explorer (the Airflow "Embedding maps" page searches the night's index for it). postMessage works from
# the sandboxed frame; the parent checks that the message comes from its frame.
TAP_JS = """
const wx = (xr.end - xr.start) || 1, wy = (yr.end - yr.start) || 1;
let best = null, bd = 0.02 ** 2;
for (const s of sources) {
  const xs = s.get_column('x'), ys = s.get_column('y'), us = s.get_column('uri');
  for (let i = 0; i < xs.length; i++) {
    const d = ((xs[i] - cb_obj.x) / wx) ** 2 + ((ys[i] - cb_obj.y) / wy) ** 2;
    if (d < bd) { bd = d; best = {uri: us[i], partition: s.tags[0].partition}; }
  }
}
if (best) {
  window.__explorer_tapped = best.uri;
  window.parent.postMessage({type: 'image-embeddings:point', uri: best.uri, partition: best.partition}, '*');
}
"""

HOVER_LEAVE_JS = """
const st = window.__explorer_hover;
if (st) { st.hits.clear(); if (st.card) st.card.style.display = 'none'; }
"""


def render_explorer(
    points: ExplorerPoints,
    labels: MapLabels,
    *,
    facts: Sequence[tuple[str, str]] = (),
    note: str = "",
    reference: Layer | None = None,
    query: Layer | None = None,
    width: int = 960,
    height: int = 700,
) -> str:
    """The explorer page: one self-contained HTML document (BokehJS inline, WebGL scatter)."""
    from bokeh.core.templates import get_env
    from bokeh.document import Document
    from bokeh.embed import file_html
    from bokeh.layouts import column, row
    from bokeh.models import (
        BoxSelectTool,
        Button,
        ColumnDataSource,
        CustomJS,
        Div,
        HoverTool,
        LassoSelectTool,
        Legend,
        LegendItem,
        PreText,
        TextInput,
    )
    from bokeh.plotting import figure
    from bokeh.resources import INLINE

    x = np.asarray(points.x, dtype=np.float32)
    y = np.asarray(points.y, dtype=np.float32)
    groups = np.asarray([str(g) for g in points.groups], dtype=object)
    uris = np.asarray([str(u) for u in points.uris], dtype=object)
    thumbs = list(points.thumbnails)
    names = sorted(set(groups.tolist()))
    palette = colours(len(names))
    size = marker_size(len(x))
    alpha = float(np.clip(4000 / max(len(x), 1), 0.35, 0.85))

    plot = figure(
        name=PLOT,
        width=width,
        height=height,
        output_backend="webgl",
        tools="pan,wheel_zoom,reset,save",
        active_scroll="wheel_zoom",
        x_axis_label=labels.x_label,
        y_axis_label=labels.y_label,
        toolbar_location="above",
    )
    plot.grid.grid_line_color = "#eeeeee"
    items = []
    if reference is not None:
        ref = plot.scatter(
            np.asarray(reference.x, np.float32),
            np.asarray(reference.y, np.float32),
            name=REFERENCE_LAYER,
            size=max(size - 1, 2),
            color="#9e9e9e",
            alpha=0.25,
        )
        items.append(LegendItem(label=f"{reference.label} ({len(reference):,})", renderers=[ref]))
    sources, renderers = [], []
    for name, colour in zip(names, palette, strict=True):
        mask = groups == name
        source = ColumnDataSource(
            {"x": x[mask], "y": y[mask]}, name=f"points:{name}", tags=[pack_columns(name, uris[mask], thumbs, mask)]
        )
        renderer = plot.scatter("x", "y", source=source, size=size, color=colour, alpha=alpha, name=name)
        renderer.selection_glyph = None  # keep the partition colour; the others fade
        renderer.nonselection_glyph.fill_alpha = 0.06
        renderer.nonselection_glyph.line_alpha = 0.06
        sources.append(source)
        renderers.append(renderer)
        items.append(LegendItem(label=f"{name} ({int(mask.sum()):,})", renderers=[renderer]))
    matches = ColumnDataSource({"x": [], "y": [], "uri": []}, name=SEARCH_LAYER)
    found = plot.scatter(
        "x", "y", source=matches, size=max(size * 2.2, 9), fill_alpha=0, line_color="#d50000", line_width=2
    )
    items.append(LegendItem(label="search matches", renderers=[found]))
    if query is not None:
        query_source = ColumnDataSource(
            {
                "x": np.asarray(query.x, np.float32),
                "y": np.asarray(query.y, np.float32),
                "uri": list(query.uris) or [""] * len(query),
            },
            name=QUERY_LAYER,
        )
        hits = plot.scatter(
            "x", "y", source=query_source, marker="star", size=max(size * 3, 12), color="#ffb300", line_color="#000"
        )
        items.append(LegendItem(label=f"{query.label} ({len(query):,})", renderers=[hits]))
    legend = Legend(items=items, click_policy="hide", title="partition (click to hide)")
    plot.add_layout(legend, "right")
    plot.add_tools(
        BoxSelectTool(renderers=renderers),
        LassoSelectTool(renderers=renderers),
        HoverTool(
            renderers=renderers,
            tooltips=None,
            callback=CustomJS(args={"xr": plot.x_range, "yr": plot.y_range}, code=HOVER_JS),
        ),
    )

    plot.js_on_event("mouseleave", CustomJS(code=HOVER_LEAVE_JS))
    plot.js_on_event("tap", CustomJS(args={"sources": sources, "xr": plot.x_range, "yr": plot.y_range}, code=TAP_JS))
    search = TextInput(name=SEARCH, placeholder="search URIs (substring)", width=300)
    search_info = Div(name=SEARCH_INFO, text="", width=300)
    search.js_on_change(
        "value_input",
        CustomJS(args={"search": search, "sources": sources, "matches": matches, "info": search_info}, code=SEARCH_JS),
    )
    selection_info = Div(name=SELECTION_INFO, text="Nothing selected: drag with box or lasso select.", width=300)
    listing = PreText(name=SELECTION, text="", width=300, height=380, styles={"overflow": "auto", "font-size": "11px"})
    pick = CustomJS(
        args={
            "sources": sources,
            "info": selection_info,
            "listing": listing,
            "listed": SELECTION_LISTED,
            "EMPTY": NOTHING_SELECTED,
        },
        code=SELECTION_JS,
    )
    for source in sources:
        source.selected.js_on_change("indices", pick)
    downloads = []
    for kind in ("csv", "txt"):
        button = Button(label=f"Download {kind.upper()}", width=140, name=f"download_{kind}")
        button.js_on_event("button_click", CustomJS(args={"kind": kind}, code=DOWNLOAD_JS))
        downloads.append(button)
    header = Div(name=HEADER, text=header_html(labels, facts, note), width=width + 320)
    side = column(search, search_info, selection_info, row(*downloads), listing, width=320)
    page = column(header, row(plot, side))
    doc = Document()
    doc.add_root(page)
    doc.js_on_event("document_ready", CustomJS(args={"sources": sources}, code=UNPACK_JS))
    shell = get_env().from_string(page_template())
    return file_html(doc, resources=INLINE, title=labels.title, template=shell)


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
