"""The "Embedding maps" page's search, in headless Chromium with the network off (loopback only).

The page's router is served by uvicorn on 127.0.0.1 exactly as the plugin mounts it, minus Airflow's
access check (test_ui checks that the mounted app refuses requests without a token). The published
run comes from a real index job over real sample photos (conftest ``photo_index``); only the metadata
DB query that lists publish events is replaced by that one event. The explorer in the page's
sandboxed frame is clicked on a photo's point; the page must show its 10 nearest images with
thumbnails and scores from the night's index.
"""

from __future__ import annotations

import io
import os
import time

import numpy as np
import pyarrow.parquet as pq
import pytest
from PIL import Image

from tests.airflow_support import serve_router
from tests.support.browser import Browser, BrowserError, FrameEval
from tests.support.ci import requires_chromium

pytestmark = [
    pytest.mark.slow,
    requires_chromium,  # a skip without chromium; a failure under CI=true
]

DS = "2026-11-20"
EVENT = 41
# The clicked point's position on the screen, computed inside the explorer's frame (as in test_explorer_browser).
WHERE = """(() => {
  const doc = Bokeh.documents[0], plot = doc.get_model_by_name('explorer');
  const view = Bokeh.index.find_one(plot), box = view.canvas_view.el.getBoundingClientRect(), f = view.frame;
  const s = doc.get_model_by_name('points:' + PARTITION), i = s.get_column('uri').indexOf(URI);
  const x = s.get_column('x')[i], y = s.get_column('y')[i];
  return {px: box.left + f.x_scale.compute(x), py: box.top + f.y_scale.compute(y)};
})()"""


@pytest.fixture(scope="module")
def published(photo_index, tmp_path_factory):
    """A run record naming the photo index and a map.html of the indexed photos (one point each)."""
    from beam_jobs.reduce_dim.explorer import ExplorerPoints, render_explorer
    from beam_jobs.reduce_dim.maps import MapLabels
    from beam_jobs.thumbnails import ThumbnailParams, gather_thumbnails

    index_dir, manifest = photo_index
    uris = sorted(pq.read_table(os.path.join(index_dir, "rows.parquet")).column("image_uri").to_pylist())
    thumbs = gather_thumbnails(uris, ThumbnailParams(size=64, budget_bytes=10**7))
    angle = np.linspace(0, 2 * np.pi, len(uris), endpoint=False)  # a ring: every point clickable on its own
    points = ExplorerPoints(
        x=np.cos(angle),
        y=np.sin(angle),
        groups=[DS] * len(uris),
        uris=uris,
        thumbnails=[thumbs.data_uri(i) for i in range(len(uris))],
    )
    page = render_explorer(
        points, MapLabels("PCA map", f"{DS} · test", "PC1", "PC2"), facts=[("rows", str(len(uris)))], note=""
    )
    folder = tmp_path_factory.mktemp("maps") / "method=pca" / f"ds={DS}"
    folder.mkdir(parents=True)
    (folder / "map.html").write_text(page, encoding="utf-8")
    record = {
        "ds": DS,
        "run_id": "scheduled__x",
        "runner": "FnApiRunner",
        "model_id": manifest["model_id"],
        "embeddings": {"inputs": len(uris), "embedded": len(uris), "failed": 0},
        "projections": {
            "pca": {"rows": len(uris), "map_png": str(folder / "map.png"), "map_html": str(folder / "map.html")}
        },
        "index": {"dir": index_dir, "rows": manifest["rows"], "mode": manifest["mode"]},
    }
    return record, uris


def test_clicking_a_point_shows_its_nearest_images(published, tmp_path):
    record, uris = published
    events = [{"id": EVENT, "timestamp": "2026-11-21T04:00:00+00:00", "extra": record}]
    with serve_router(events) as base, Browser(width=1360, height=1500, loopback=True) as browser:
        browser.open(f"{base}/?ds={DS}&method=pca")
        assert browser.evaluate("document.querySelector('#similar h2').innerText").startswith("Similar images")
        in_frame = FrameEval(browser)
        end = time.monotonic() + 60
        while not in_frame("document.body && document.body.dataset.explorerReady === '1'"):
            assert time.monotonic() < end, "the explorer did not get ready"
            time.sleep(0.2)
        time.sleep(0.5)  # WebGL's first frame
        clicked = uris[3]
        spot = in_frame(WHERE.replace("PARTITION", repr(DS)).replace("URI", repr(clicked)))
        frame = browser.evaluate("(r => [r.left, r.top])(document.querySelector('iframe.map').getBoundingClientRect())")
        x, y = frame[0] + spot["px"], frame[1] + spot["py"]
        for _ in range(3):  # a loaded machine may drop a click; a person would click again
            browser.click(x, y)
            try:
                browser.wait_for("document.querySelectorAll('#similar-results figure').length === 10", timeout=20)
                break
            except BrowserError:
                continue
        else:
            status = browser.evaluate("document.getElementById('similar-status').innerText")
            pytest.fail(f"no results after clicking {clicked}: {status}")
        assert browser.evaluate("document.getElementById('similar-uri').value") == clicked
        found = browser.evaluate(
            "[...document.querySelectorAll('#similar-results figure')].map(f => "
            "({uri: f.querySelector('code').textContent, caption: f.querySelector('figcaption').textContent}))"
        )
        assert clicked not in [f["uri"] for f in found]  # the query itself is left out
        assert {f["uri"] for f in found} <= set(uris)
        scores = [float(f["caption"].split(" · ")[1]) for f in found]
        assert scores == sorted(scores, reverse=True)
        assert all(f["caption"].startswith(f"#{i + 1} · ") for i, f in enumerate(found))
        # Thumbnails come from the page's own route for indexed images (some sample files are not images
        # a browser decodes, e.g. 16-bit PNGs: the route re-encodes every one as JPEG).
        browser.wait_for(
            "[...document.querySelectorAll('#similar-results img')].every(i => i.complete && i.naturalWidth > 0)",
            timeout=30,
        )
        browser.evaluate("document.getElementById('similar').scrollIntoView({block: 'end'})")
        time.sleep(0.3)
        shot = browser.screenshot()
        assert all(u.startswith((base, "data:", "blob:", "about:")) for u in browser.requests), browser.requests
        assert not [line for line in browser.console if line.startswith("exception")], browser.console
    (tmp_path / "search.png").write_bytes(shot)
    keep = os.environ.get("EXPLORER_SCREENSHOTS")
    if keep:
        os.makedirs(keep, exist_ok=True)
        with Image.open(io.BytesIO(shot)) as img:
            img.convert("RGB").quantize(colors=128).save(os.path.join(keep, "maps-search.png"), optimize=True)
