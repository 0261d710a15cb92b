"""beam_jobs.reduce_dim.maps and explorer: map.png, the map.html explorer (as a document) and map_mosaic.png.

What the explorer does in a browser is checked in tests/test_explorer_browser.py (slow tier).
"""

from __future__ import annotations

import html
import io
import json
import re
from importlib import resources

import numpy as np
import pytest
from PIL import Image

from beam_jobs.reduce_dim.explorer import (
    EXPLORER_NAMES,
    ExplorerPoints,
    header_html,
    marker_size,
    pack_columns,
    render_explorer,
)
from beam_jobs.reduce_dim.maps import MAP_TEMPLATE, Layer, MapLabels, render_png
from beam_jobs.reduce_dim.mosaic import grid_assignment, render_mosaic

LABELS = MapLabels(
    title="PCA <map> & co", subtitle="2026-11-20 · model m", x_label="PC1", y_label="PC2", footer="run r"
)


def doc_json(page: str) -> list[dict]:
    """The Bokeh documents' JSON inside a page, and every model in it (flattened)."""
    (raw,) = re.findall(r'<script type="application/json" id="[^"]+">\s*(.*?)\s*</script>', page, re.S)
    docs = json.loads(html.unescape(raw))  # file_html escapes the JSON inside its script element
    models = []

    def walk(node):
        if isinstance(node, dict):
            if node.get("type") == "object":
                models.append(node)
            for value in node.values():
                walk(value)
        elif isinstance(node, list):
            for value in node:
                walk(value)

    walk(docs)
    return models


def named(models: list[dict], name: str) -> list[dict]:
    return [m for m in models if m.get("attributes", {}).get("name") == name]


def small_page(**layers) -> str:
    points = ExplorerPoints(
        x=np.array([0.0, 1.0, 2.0]),
        y=np.array([1.0, 0.5, 0.0]),
        groups=["d1", "d2", "d1"],
        uris=["/a.jpg", "/b</script><script>alert(1)</script>.jpg", "/c.jpg"],
        thumbnails=["data:image/webp;base64,AAAA", None, None],
    )
    return render_explorer(points, LABELS, facts=[("failed", "<3>")], note="note & more", **layers)


def test_template_ships_as_package_data():
    assert resources.files("beam_jobs.reduce_dim").joinpath(MAP_TEMPLATE).is_file()


def test_explorer_is_one_offline_file_with_webgl_and_the_tools():
    page = small_page()
    assert "<title>PCA &lt;map&gt; &amp; co</title>" in page
    assert not re.search(r"<(script|link)[^>]+(src|href)=", page)  # BokehJS inline, nothing fetched
    assert page.count("</script>") == page.count("<script")  # "</" inside the data is escaped
    models = doc_json(page)
    (plot,) = named(models, "explorer")
    assert plot["attributes"]["output_backend"] == "webgl"
    tools = {m["name"] for m in models if m["name"].endswith("Tool")}
    assert {"PanTool", "WheelZoomTool", "BoxSelectTool", "LassoSelectTool", "HoverTool"} <= tools
    assert named(models, "search")
    assert named(models, "selection")
    assert named(models, "search_matches")
    (legend,) = [m for m in models if m["name"] == "Legend"]
    assert legend["attributes"]["click_policy"] == "hide"
    labels = [item["attributes"]["label"]["value"] for item in legend["attributes"]["items"]]
    assert labels == ["d1 (2)", "d2 (1)", "search matches"]
    (header,) = (m["attributes"] for m in named(models, "header"))
    assert "PCA &lt;map&gt; &amp; co" in header["text"]
    assert "&lt;3&gt;" in header["text"]
    assert "note &amp; more" in header["text"]


def test_points_travel_packed_one_string_per_partition():
    models = doc_json(small_page())
    packs = {m["attributes"]["name"]: m["attributes"]["tags"][0] for m in models if m["name"] == "ColumnDataSource"
             and m["attributes"].get("name", "").startswith("points:")}  # fmt: skip
    assert set(packs) == {"points:d1", "points:d2"}
    d1 = packs["points:d1"]
    d1 = d1.get("entries", d1)
    d1 = dict(d1) if isinstance(d1, list) else d1
    assert d1["uris"] == "/a.jpg\x1f/c.jpg"
    assert d1["thumb_index"] == [0]
    assert d1["thumbs"] == ["data:image/webp;base64,AAAA"]
    pack = pack_columns("p", np.array(["/x\x1fy", "/z"], dtype=object), [None, None], np.array([True, True]))
    assert pack["uris"] == "/x y\x1f/z"  # a separator inside a URI cannot split it


def test_layers_render_when_given_data():
    rng = np.random.default_rng(1)
    reference = Layer("reference: November", rng.normal(size=50), rng.normal(size=50))
    query = Layer("query: shoes", np.array([0.5]), np.array([0.5]), ["/q.jpg"])
    models = doc_json(small_page(reference=reference, query=query))
    (ref,) = named(models, "reference")
    assert ref["name"] == "GlyphRenderer"
    (hits,) = named(models, "query")
    assert hits["name"] == "ColumnDataSource"
    (legend,) = [m for m in models if m["name"] == "Legend"]
    labels = [item["attributes"]["label"]["value"] for item in legend["attributes"]["items"]]
    assert labels[0] == "reference: November (50)"
    assert labels[-1] == "query: shoes (1)"
    assert set(EXPLORER_NAMES) >= {"reference", "query"}
    assert not named(doc_json(small_page()), "reference")


def test_header_escapes_and_marker_size_falls_with_points():
    text = header_html(MapLabels("<t>", "s", "x", "y"), [("rows", "1,000")], "")
    assert "&lt;t&gt;" in text
    assert "<b>1,000</b> rows" in text
    assert marker_size(10) == 10
    assert marker_size(100_000) < 3.5
    assert marker_size(10**7) == 2.5


def test_grid_assignment_keeps_the_layout():
    side = 4
    gx, gy = np.meshgrid(np.arange(side), np.arange(side))
    x, y = gx.ravel().astype(float), gy.ravel().astype(float)
    rng = np.random.default_rng(0)
    order = rng.permutation(side * side)
    cells = grid_assignment(x[order] + rng.normal(0, 0.05, 16), y[order], side)
    assert sorted(cells) == list(range(16))  # one image per cell
    rows, cols = np.divmod(cells, side)
    assert (cols == x[order]).all()
    assert (rows == side - 1 - y[order]).all()  # up in the plot is up in the picture


def test_mosaic_uses_the_largest_square_and_refuses_too_few():
    tiles = []
    for i in range(10):
        out = io.BytesIO()
        Image.new("RGB", (30, 20), (25 * i, 100, 100)).save(out, format="WEBP")
        tiles.append(out.getvalue())
    png, used = render_mosaic(np.arange(10.0), np.arange(10.0), tiles, grid=24, cell=16)
    assert used == 9
    with Image.open(io.BytesIO(png)) as img:
        assert img.size == (48, 48)
    with pytest.raises(ValueError, match="at least 4"):
        render_mosaic(np.arange(3.0), np.arange(3.0), tiles[:3], grid=24, cell=16)


def test_render_png_is_a_picture():
    rng = np.random.default_rng(0)
    groups = np.array([f"2026-11-{i % 25 + 1:02d}" for i in range(300)], dtype=object)  # > 20: a colour bar
    png = render_png(rng.normal(size=300), rng.normal(size=300), groups, LABELS)
    with Image.open(io.BytesIO(png)) as img:
        assert img.format == "PNG"
        assert img.size[0] >= 1000
