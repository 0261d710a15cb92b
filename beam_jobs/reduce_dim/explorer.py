"""``map.html`` as an explorer: Bokeh, one offline file.

Pure rendering helpers: arrays and strings in, text out; no Beam, no I/O but the package's own
templates (the page's shell ``templates/map.html`` and its JavaScript ``templates/explorer_callbacks.html``).

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

Both are ``maps.Layer`` values given to ``render_explorer``; each gets a legend entry.
The search box's matches are drawn by a third renderer of the same kind.

Model names in the document (``EXPLORER_NAMES``) are what the browser test and
scripts look up with ``Bokeh.documents[0].get_model_by_name``.
"""

from __future__ import annotations

import functools
import html
import re
from collections.abc import Sequence
from dataclasses import dataclass
from importlib import resources

import numpy as np

from beam_jobs.reduce_dim.maps import Layer, MapLabels, colours, page_template

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
# The URIs of a partition travel joined by this character (``pack_columns``); the page splits them on load.
URI_SEPARATOR = "\x1f"
# The page's JavaScript: one Bokeh CustomJS per interaction, in a file beside the page's shell (map.html).
CALLBACKS_TEMPLATE = "templates/explorer_callbacks.html"
_CALLBACK = re.compile(r'<script id="([a-z_]+)">(.*?)</script>', re.S)


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


@functools.cache
def callbacks() -> dict[str, str]:
    """The page's CustomJS code by name (``templates/explorer_callbacks.html``, one ``<script id=...>`` each),
    read once per process."""
    text = resources.files(__package__).joinpath(CALLBACKS_TEMPLATE).read_text(encoding="utf-8")
    return dict(_CALLBACK.findall(text))


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

    js = callbacks()
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
            callback=CustomJS(args={"xr": plot.x_range, "yr": plot.y_range}, code=js["hover"]),
        ),
    )

    plot.js_on_event("mouseleave", CustomJS(code=js["hover_leave"]))
    plot.js_on_event("tap", CustomJS(args={"sources": sources, "xr": plot.x_range, "yr": plot.y_range}, code=js["tap"]))
    search = TextInput(name=SEARCH, placeholder="search URIs (substring)", width=300)
    search_info = Div(name=SEARCH_INFO, text="", width=300)
    search.js_on_change(
        "value_input",
        CustomJS(
            args={"search": search, "sources": sources, "matches": matches, "info": search_info}, code=js["search"]
        ),
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
        code=js["selection"],
    )
    for source in sources:
        source.selected.js_on_change("indices", pick)
    downloads = []
    for kind in ("csv", "txt"):
        button = Button(label=f"Download {kind.upper()}", width=140, name=f"download_{kind}")
        button.js_on_event("button_click", CustomJS(args={"kind": kind}, code=js["download"]))
        downloads.append(button)
    header = Div(name=HEADER, text=header_html(labels, facts, note), width=width + 320)
    side = column(search, search_info, selection_info, row(*downloads), listing, width=320)
    page = column(header, row(plot, side))
    doc = Document()
    doc.add_root(page)
    doc.js_on_event("document_ready", CustomJS(args={"sources": sources, "SEP": URI_SEPARATOR}, code=js["unpack"]))
    shell = get_env().from_string(page_template())
    return file_html(doc, resources=INLINE, title=labels.title, template=shell)
