"""The map page's frame links, clicked in headless Chromium with the network off (loopback only).

Nights mapped in one 2D frame (one saved reference) link the previous and next such night; a person
clicks them to step through the nights on the same axes. Each page must then frame its own night's
explorer, and a refitted night (its own axes) must offer no such links. The router is served as the
plugin mounts it (``serve_router``); the publish events are four nights' run records pointing at real
files.
"""

from __future__ import annotations

from datetime import UTC, datetime

import pytest
from PIL import Image

from tests.airflow_support import serve_router
from tests.support.browser import Browser, FrameEval
from tests.support.ci import requires_chromium

pytestmark = [
    pytest.mark.slow,
    requires_chromium,  # a skip without chromium; a failure under CI=true
]

REFERENCE = "/out/references/method=pca/fixed"
FRAME_LINKS = "[...document.querySelectorAll('p.frame a')].map(a => a.textContent.trim())"


def night(tmp_path, day: int, framed: bool) -> dict:
    """A publish event for 2026-11-<day>, with a map.html that says which night it is."""
    ds = f"2026-11-{day}"
    folder = tmp_path / "method=pca" / f"ds={ds}"
    folder.mkdir(parents=True)
    (folder / "map.html").write_text(f"<!doctype html><title>{ds}</title><body data-night='{ds}'>explorer of {ds}")
    Image.new("RGB", (8, 8), "white").save(folder / "map.png")
    projection = {"rows": 12, "map_png": str(folder / "map.png"), "map_html": str(folder / "map.html")}
    if framed:
        projection["reference"] = {"dir": REFERENCE, "partitions": ["2026-11-18"]}
        projection["drift"] = {"mean_shift_relative": 0.1, "mmd_p_value": 0.2, "novelty_rate": 0.01}
    record = {
        "ds": ds,
        "run_id": f"scheduled__{ds}",
        "runner": "FnApiRunner",
        "embeddings": {"inputs": 12, "embedded": 12, "failed": 0},
        "projections": {"pca": projection},
    }
    return {"id": day, "timestamp": datetime(2026, 11, day, 4, tzinfo=UTC), "extra": record}


def follow(browser: Browser, text: str) -> None:
    """Click the frame link whose text contains ``text``, as a person would, and wait for the new page.

    Clicked in the middle of its first line box: a link at the end of the wrapped line may break over two.
    """
    where = browser.evaluate(
        "(t => { const a = [...document.querySelectorAll('p.frame a')].find(a => a.textContent.includes(t));"
        " const r = a.getClientRects()[0]; return [r.left + r.width / 2, r.top + r.height / 2]; })"
        f"({text!r})"
    )
    browser.click(*where)
    browser.wait_for(f"location.search.includes('ds={text}') && document.readyState === 'complete'", timeout=30)


def test_frame_links_step_through_the_nights_of_one_frame(tmp_path):
    events = [night(tmp_path, 19, framed=False)] + [night(tmp_path, day, framed=True) for day in (20, 21, 22)]
    with serve_router(events) as base, Browser(width=1200, height=900, loopback=True) as browser:
        browser.open(f"{base}/?ds=2026-11-21&method=pca")
        assert browser.evaluate(FRAME_LINKS) == ["\u2039 2026-11-20", "2026-11-22 \u203a"]
        assert REFERENCE in browser.evaluate("document.querySelector('p.frame').innerText")

        follow(browser, "2026-11-20")
        assert "2026-11-20" in browser.evaluate("document.querySelector('h1').innerText")
        assert browser.evaluate(FRAME_LINKS) == ["2026-11-21 \u203a"]  # the first night in the frame
        in_frame = FrameEval(browser)
        browser_night = in_frame("document.body && document.body.dataset.night")
        assert browser_night == "2026-11-20", "the page frames another night's explorer"

        follow(browser, "2026-11-21")
        follow(browser, "2026-11-22")
        assert browser.evaluate(FRAME_LINKS) == ["\u2039 2026-11-21"]  # the last night in the frame
        assert FrameEval(browser)("document.body && document.body.dataset.night") == "2026-11-22"

        # The night before the frame was refitted on its own: its axes are not comparable, so no links.
        browser.open(f"{base}/?ds=2026-11-19&method=pca")
        assert browser.evaluate("document.querySelector('p.frame')") is None
        assert all(u.startswith((base, "data:", "about:")) for u in browser.requests), browser.requests
        assert not [line for line in browser.console if line.startswith("exception")], browser.console
