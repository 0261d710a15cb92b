"""The map.html explorer in a real browser: headless Chromium, network off (tests/support/browser.py).

One page built from the pure helpers (no job run: test_reduce_dim covers the job's file), with
real sample photos as thumbnails among 6,000 points in two partitions, a reference cloud and a
query layer. Checks that the canvas drew points, that hovering a point shows its thumbnail, that
a box selection lists its URIs, and that the search box rings a known URI. Screenshots of those
states go to the test's folder, and to $EXPLORER_SCREENSHOTS when set (the README's are made so).
"""

from __future__ import annotations

import contextlib
import glob
import http.server
import io
import os
import threading
import time
from pathlib import Path

import numpy as np
import pytest
from PIL import Image

from beam_jobs.reduce_dim.explorer import ExplorerPoints, render_explorer
from beam_jobs.reduce_dim.maps import Layer, MapLabels
from beam_jobs.thumbnails import ThumbnailParams, gather_thumbnails
from tests.support.browser import Browser, BrowserError
from tests.support.ci import requires_chromium

pytestmark = [
    pytest.mark.slow,
    requires_chromium,  # a skip without chromium; a failure under CI=true
]

READY = "document.body.dataset.explorerReady === '1'"
# Screen position of a data point, and the plot frame, from BokehJS's views.
WHERE = """(() => {
  const doc = Bokeh.documents[0], plot = doc.get_model_by_name('explorer');
  const view = Bokeh.index.find_one(plot), box = view.canvas_view.el.getBoundingClientRect(), f = view.frame;
  const s = doc.get_model_by_name('points:' + PARTITION), i = s.get_column('uri').indexOf(URI);
  const x = s.get_column('x')[i], y = s.get_column('y')[i];
  return {px: box.left + f.x_scale.compute(x), py: box.top + f.y_scale.compute(y),
          frame: [box.left + f.bbox.left, box.top + f.bbox.top, box.left + f.bbox.right, box.top + f.bbox.bottom]};
})()"""
# Elements inside Bokeh's shadow roots.
TEXT_OF = "Bokeh.documents[0].get_model_by_name('%s').text"
DEEP = """((test) => { const out = [];
  const walk = root => { for (const el of root.querySelectorAll('*')) { if (el.shadowRoot) walk(el.shadowRoot);
    if (test(el)) out.push(el); } };
  walk(document); return out; })"""


def centre(browser: Browser, test: str) -> list[float]:
    return browser.evaluate(
        f"(() => {{ const el = {DEEP}({test})[0]; const r = el.getBoundingClientRect();"
        " return [r.left + r.width / 2, r.top + r.height / 2]; })()"
    )


def model_text(browser: Browser, name: str) -> str:
    return browser.evaluate(f"Bokeh.documents[0].get_model_by_name('{name}').text")


@contextlib.contextmanager
def served_with_map_csp(path: str):
    """``path`` over http://127.0.0.1 with the maps page's Content-Security-Policy header."""
    from image_embeddings_airflow.ui import MAP_CSP

    body = Path(path).read_bytes()

    class Handler(http.server.BaseHTTPRequestHandler):
        timeout = 10  # a connection the browser opens and never uses must not hold the server

        def do_GET(self):
            self.send_response(200)
            self.send_header("Content-Type", "text/html")
            self.send_header("Content-Security-Policy", MAP_CSP)
            self.end_headers()
            self.wfile.write(body)

        def log_message(self, *args):
            pass

    server = http.server.ThreadingHTTPServer(("127.0.0.1", 0), Handler)
    server.daemon_threads = True
    thread = threading.Thread(target=server.serve_forever, daemon=True)
    thread.start()
    try:
        yield f"http://127.0.0.1:{server.server_address[1]}/map.html"
    finally:
        server.shutdown()
        server.server_close()


def drawn_fraction(png: bytes, box: list[float]) -> float:
    """Share of pixels inside ``box`` that are not the white background."""
    with Image.open(io.BytesIO(png)) as img:
        region = np.asarray(img.convert("RGB").crop(tuple(int(v) for v in box)), dtype=np.int16)
    return float((np.abs(region - 255).sum(axis=2) > 40).mean())


@pytest.fixture(scope="module")
def explorer_page(sample_dir, tmp_path_factory) -> tuple[str, list[str]]:
    photos = sorted(glob.glob(os.path.join(sample_dir, "*")))
    thumbs = gather_thumbnails(photos, ThumbnailParams(size=96, budget_bytes=10**7))
    assert len(thumbs.html) == len(photos)
    rng = np.random.default_rng(7)
    n = 6000
    centres = rng.normal(0, 4, size=(6, 2))
    xy = centres[rng.integers(0, 6, n)] + rng.normal(0, 0.6, size=(n, 2))
    uris = [f"gs://bucket/night/img-{i:05d}.jpg" for i in range(n)]
    uris[: len(photos)] = photos  # the real photos are the first points, with their thumbnails
    xy[: len(photos)] = centres[0] + rng.normal(0, 0.05, size=(len(photos), 2))  # one tight, known cluster
    points = ExplorerPoints(
        x=xy[:, 0],
        y=xy[:, 1],
        groups=["2026-11-20" if i % 2 else "2026-11-19" for i in range(n)],
        uris=uris,
        thumbnails=[thumbs.data_uri(i) if i < len(photos) else None for i in range(n)],
    )
    labels = MapLabels("PCA map of 6,000 image embeddings", "2026-11-19 .. 2026-11-20 · model test", "PC1", "PC2")
    page = render_explorer(
        points,
        labels,
        facts=[("rows", "6,000"), ("failed extraction", "3")],
        note="All 6,000 rows are drawn.",
        reference=Layer("reference: earlier nights", *(rng.normal(0, 6, size=(2, 800)))),
        query=Layer(
            "query: similar to photo 0", xy[len(photos) : len(photos) + 5, 0], xy[len(photos) : len(photos) + 5, 1]
        ),
    )
    path = tmp_path_factory.mktemp("explorer") / "map.html"
    path.write_text(page, encoding="utf-8")
    return str(path), photos


def test_explorer_draws_hovers_selects_and_searches_offline(explorer_page, tmp_path):
    path, photos = explorer_page
    shots: dict[str, bytes] = {}
    with Browser(width=1360, height=860, loopback=True) as browser:  # loopback: the CSP check's own server
        browser.open(f"file://{path}")
        browser.wait_for(READY, timeout=60)
        browser.wait_for(f"{DEEP}(el => el.tagName === 'CANVAS').length > 0")
        time.sleep(0.5)  # WebGL's first frame
        known, partition = photos[0], "2026-11-19"
        spot = browser.evaluate(WHERE.replace("PARTITION", repr(partition)).replace("URI", repr(known)))
        shots["overview"] = browser.screenshot()
        assert drawn_fraction(shots["overview"], spot["frame"]) > 0.05  # the canvas drew points

        browser.mouse("mouseMoved", spot["px"] + 1, spot["py"] + 1)
        browser.mouse("mouseMoved", spot["px"], spot["py"])
        images = browser.wait_for(
            f"{DEEP}(el => el.tagName === 'IMG' && el.alt === 'thumbnail' && el.offsetParent !== null)"
            ".map(el => el.src.slice(0, 23))",
            timeout=10,
        )
        assert images[0] == "data:image/webp;base64,"
        card = browser.evaluate("document.getElementById('explorer-hover').innerText")
        assert card.splitlines()[0] == known  # the nearest point's URI, as text
        shots["hover"] = browser.screenshot()

        browser.click(*centre(browser, "el => (el.title || '').startsWith('Box Select')"))
        x, y = spot["px"], spot["py"]
        for _ in range(3):  # a loaded machine can drop a drag's first events; a person would drag again
            browser.drag([(x - 25, y - 25), (x - 5, y - 5), (x + 5, y + 5), (x + 25, y + 25)])
            try:
                info = browser.wait_for(f"(t => /^[0-9,]+ selected/.test(t) && t)({TEXT_OF % 'selection_info'})", 10)
                break
            except BrowserError:
                continue
        else:
            pytest.fail("three box selections around a point selected nothing")
        selected = browser.evaluate("window.__explorer_selection.map(r => r[0])")
        assert known in selected
        assert info.startswith(f"{len(selected):,} selected")
        assert known in model_text(browser, "selection").split("\n")
        shots["selection"] = browser.screenshot()

        browser.click(*centre(browser, "el => el.tagName === 'INPUT' && el.placeholder.startsWith('search')"))
        needle = os.path.basename(known)
        browser.type_text(needle)
        browser.wait_for("/match/.test(Bokeh.documents[0].get_model_by_name('search_info').text)")
        matches = browser.evaluate("Bokeh.documents[0].get_model_by_name('search_matches').get_column('uri')")
        assert matches == [known]
        time.sleep(0.3)
        shots["search"] = browser.screenshot()
        with Image.open(io.BytesIO(shots["search"])) as img:  # the red ring is drawn around the point
            ring = np.asarray(img.convert("RGB").crop((int(x) - 15, int(y) - 15, int(x) + 15, int(y) + 15)), np.int16)
        assert ((ring[..., 0] > 180) & (ring[..., 1] < 60) & (ring[..., 2] < 60)).sum() > 10
        assert all(url.split(":", 1)[0] in {"file", "data", "blob"} for url in browser.requests), browser.requests
        assert not [line for line in browser.console if line.startswith("exception")], browser.console

        # As the Airflow page serves it: its CSP (sandbox, no network) still lets BokehJS run the page.
        with served_with_map_csp(path) as url:
            browser.open(url)
            browser.wait_for(READY, timeout=60)
        assert not [line for line in browser.console if line.startswith("exception")], browser.console
        assert all(u.startswith(("file:", "data:", "blob:", url)) for u in browser.requests), browser.requests

    keep = os.environ.get("EXPLORER_SCREENSHOTS")
    for name, png in shots.items():
        (tmp_path / f"explorer-{name}.png").write_bytes(png)
        if keep:
            os.makedirs(keep, exist_ok=True)
            with Image.open(io.BytesIO(png)) as img:  # small PNGs for the README
                img.convert("RGB").quantize(colors=128).save(os.path.join(keep, f"explorer-{name}.png"), optimize=True)
