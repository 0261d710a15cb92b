"""report.html in a real browser: headless Chromium, network off (tests/support/browser.py).

One planted night (tests/test_report.py's nights: a new kind of image is 7% of tonight) with every optional input
beside it (an index with duplicates, a map drawn in a saved reference, a comparison, run records), reported as
the command does. The page is opened from its file with the network off, then served over loopback with the
maps page's Content-Security-Policy: every thumbnail decodes (non-zero natural size) and is laid out visibly,
nothing is requested but the page itself and its data: images. The screenshot goes to the test's folder, and
to $REPORT_SCREENSHOTS when set (docs/screenshots/report.png is made so).
"""

from __future__ import annotations

import contextlib
import http.server
import io
import os
import threading

import pytest
from PIL import Image

from beam_jobs.contract import REPORT_HTML, reports_dir
from tests.support.browser import Browser
from tests.support.ci import requires_chromium
from tests.test_report import DS, NEW, build_nights, labels_of, make_report, planted_weights, write_optional_inputs

pytestmark = [pytest.mark.slow, requires_chromium]

IMAGES = """[...document.querySelectorAll('#SECTION img')].map(img => {
  const r = img.getBoundingClientRect();
  return {src: img.src.slice(0, 15), w: img.naturalWidth, h: img.naturalHeight, done: img.complete,
          shown: r.width > 0 && r.height > 0 && getComputedStyle(img).visibility !== 'hidden'};
})"""


@contextlib.contextmanager
def served_with_map_csp(path: str):
    """``path`` over http://127.0.0.1 with the maps page's Content-Security-Policy header."""
    from image_embeddings_airflow.ui import MAP_CSP

    with open(path, "rb") as handle:
        body = handle.read()

    class Handler(http.server.BaseHTTPRequestHandler):
        timeout = 10

        def do_GET(self):
            self.send_response(200)
            self.send_header("Content-Type", "text/html; charset=utf-8")
            self.send_header("Content-Security-Policy", MAP_CSP)
            self.end_headers()
            self.wfile.write(body)

        def log_message(self, *args):
            pass

    server = http.server.ThreadingHTTPServer(("127.0.0.1", 0), Handler)
    server.daemon_threads = True
    threading.Thread(target=server.serve_forever, daemon=True).start()
    try:
        yield f"http://127.0.0.1:{server.server_address[1]}/report.html"
    finally:
        server.shutdown()
        server.server_close()


@pytest.fixture(scope="module")
def report_page(tmp_path_factory) -> tuple[str, dict]:
    root = build_nights(str(tmp_path_factory.mktemp("browser")), planted_weights())
    first = make_report(root)
    write_optional_inputs(root, [item["image_uri"] for item in first["new_tonight"]])
    report = make_report(root)
    return os.path.join(reports_dir(root, DS), REPORT_HTML), report


def check_images(browser: Browser, section: str, at_least: int) -> list[dict]:
    images = browser.evaluate(IMAGES.replace("SECTION", section))
    thumbs = [i for i in images if i["src"].startswith("data:image/web")]
    assert len(thumbs) >= at_least, images
    assert all(i["done"] and i["w"] > 0 and i["h"] > 0 and i["shown"] for i in images), images
    return images


def test_the_report_renders_offline_with_its_thumbnails(report_page, tmp_path):
    path, report = report_page
    assert labels_of([item["image_uri"] for item in report["new_tonight"]])[NEW] >= 20
    with Browser(width=1400, height=2400, loopback=True) as browser:  # loopback: the CSP check's own server
        browser.open(f"file://{path}")
        check_images(browser, "new_tonight", len(report["new_tonight"]))
        check_images(browser, "clusters", 6 * 3)
        check_images(browser, "duplicates", 5)
        check_images(browser, "numbers", 0)  # the trend sparklines (PNG)
        title = browser.evaluate("document.querySelector('h1').innerText")
        assert title == f"Morning report · {DS}"
        missing = browser.evaluate("document.querySelectorAll('.missing').length")
        assert missing == 0  # every optional input was there
        shot = browser.screenshot()
        assert all(url.split(":", 1)[0] in {"file", "data"} for url in browser.requests), browser.requests

        with served_with_map_csp(path) as url:  # as the maps page would serve it
            browser.open(url)
            check_images(browser, "new_tonight", len(report["new_tonight"]))
            check_images(browser, "clusters", 6 * 3)
        assert all(u.startswith(("file:", "data:", url)) for u in browser.requests), browser.requests
        assert not [line for line in browser.console if line.startswith("exception")], browser.console

    with Image.open(io.BytesIO(shot)) as img:
        assert img.size == (1400, 2400)
        assert len(img.convert("RGB").getcolors(1 << 22) or []) > 2000  # photographs, not blank boxes
    (tmp_path / "report.png").write_bytes(shot)
    keep = os.environ.get("REPORT_SCREENSHOTS")
    if keep:
        os.makedirs(keep, exist_ok=True)
        with Image.open(io.BytesIO(shot)) as img:  # a small PNG for the docs
            img.convert("RGB").quantize(colors=192).save(os.path.join(keep, "report.png"), optimize=True)
