"""Redraw the screenshots the docs use, from a real demo night, with headless Chromium (``make screenshots``).

1. ``make demo`` in a temporary folder (its own data and Airflow home): the nightly DAG on the bundled sample
   images, random weights, PCA and UMAP, the similarity index.
2. The "Embedding maps" page's router on 127.0.0.1 (as the plugin mounts it, minus Airflow's access check),
   the night's publish event standing in for the metadata DB's (as ``tests/test_search_page.py`` does):
   the maps page (``maps-page.png``), and a night's page with a point of its explorer clicked, showing the
   similar images found in the night's index (``maps-search.png``).
3. The night's UMAP ``map.html`` opened on its own: the explorer (``explorer-overview.png``), a hovered photo
   (``explorer-hover.png``), a box selection (``explorer-selection.png``) and the search box
   (``explorer-search.png``).
4. ``make airflow`` (airflow standalone) on free ports in another temporary folder: the DAG's trigger form,
   its first section open (``trigger-form.png``), then its "Report and store" section (``trigger-form-store.png``).

Every page is checked for images that did not load before its screenshot is kept. The network is off
(loopback only). PNGs are quantised to 128 colours to stay small in the repository.

    python scripts/screenshots.py --out docs/screenshots [--skip-trigger-form] [--keep]
"""

from __future__ import annotations

import argparse
import contextlib
import io
import json
import os
import shutil
import signal
import socket
import subprocess
import sys
import tempfile
import threading
import time
import urllib.request
from pathlib import Path

ROOT = Path(__file__).resolve().parent.parent
sys.path[:0] = [str(ROOT), str(ROOT / "plugins")]  # tests.support, and the plugin's package as Airflow loads it

from tests.support.browser import Browser, BrowserError, FrameEval  # noqa: E402

DS = "2026-11-20"
DAG_ID = "image_embeddings"
READY = "document.body && document.body.dataset.explorerReady === '1'"
# Screen position of a point of the explorer, and its plot frame, from BokehJS's views (as the browser tests).
WHERE = """(() => {
  const doc = Bokeh.documents[0], plot = doc.get_model_by_name('explorer');
  const view = Bokeh.index.find_one(plot), box = view.canvas_view.el.getBoundingClientRect(), f = view.frame;
  const s = doc.get_model_by_name('points:' + PARTITION), i = s.get_column('uri').indexOf(URI);
  const x = s.get_column('x')[i], y = s.get_column('y')[i];
  return {px: box.left + f.x_scale.compute(x), py: box.top + f.y_scale.compute(y)};
})()"""
# Elements inside Bokeh's shadow roots.
DEEP = """((test) => { const out = [];
  const walk = root => { for (const el of root.querySelectorAll('*')) { if (el.shadowRoot) walk(el.shadowRoot);
    if (test(el)) out.push(el); } };
  walk(document); return out; })"""
# The images in view (lazy ones further down have not started loading), and those of them that did not load
# (an image hidden by its own error handler, as the maps page's missing mosaic, has no offsetParent).
IN_VIEW = "[...document.images].filter(i => i.offsetParent !== null && i.getBoundingClientRect().top < innerHeight)"
BROKEN_IMAGES = f"{IN_VIEW}.filter(i => i.complete && i.naturalWidth === 0)"


def log(message: str) -> None:
    print(f"[screenshots] {message}", flush=True)


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def save(png: bytes, out: Path, name: str) -> None:
    from PIL import Image

    out.mkdir(parents=True, exist_ok=True)
    with Image.open(io.BytesIO(png)) as img:
        img.convert("RGB").quantize(colors=128).save(out / name, optimize=True)
    log(f"wrote {out / name}")


def no_broken_images(browser: Browser, what: str) -> None:
    """Every <img> in view has loaded."""
    browser.wait_for(f"{IN_VIEW}.every(i => i.complete)", timeout=60)
    broken = browser.evaluate(f"{BROKEN_IMAGES}.map(i => i.src)")
    if broken:
        raise SystemExit(f"{what}: images that did not load: {broken}")


# --------------------------------------------------------------------------- the demo night


def demo_night(work: Path) -> dict:
    """``make demo`` into ``work``; returns the night's run record."""
    data, home = work / "data", work / "home"
    command = ["make", "--no-print-directory", "demo", f"DATA={data}", f"AIRFLOW_HOME={home}", f"DS={DS}"]
    log("running " + " ".join(command) + " (a few minutes)")
    done = subprocess.run(command, cwd=ROOT, capture_output=True, text=True)
    print(done.stdout[-3000:], flush=True)
    if done.returncode:
        raise SystemExit(f"make demo failed:\n{done.stderr[-3000:]}")
    return json.loads((data / "out" / "runs" / f"ds={DS}" / "run.json").read_text())


@contextlib.contextmanager
def serve_maps(events: list[dict]):
    """The maps router on 127.0.0.1 with ``events`` as the publish events; yields the base URL."""
    import uvicorn
    from fastapi import FastAPI

    from image_embeddings_airflow import ui

    app = FastAPI()
    app.include_router(ui.router)
    port = free_port()
    server = uvicorn.Server(uvicorn.Config(app, host="127.0.0.1", port=port, log_level="warning"))
    original = ui.load_events
    ui.load_events = lambda event_id=None: [e for e in events if event_id in (None, e["id"])]
    thread = threading.Thread(target=server.run, daemon=True)
    thread.start()
    while not server.started:
        time.sleep(0.05)
    try:
        yield f"http://127.0.0.1:{port}"
    finally:
        server.should_exit = True
        thread.join(10)
        ui.load_events = original


def photo_uris(folder: str) -> list[str]:
    """URIs of a projection partition that are sample photos (``img_*``, JPEGs a browser draws)."""
    import pyarrow.parquet as pq

    from beam_jobs.contract import PROJECTION_FILES

    uris = [
        u for f in sorted(Path(folder).glob(PROJECTION_FILES)) for u in pq.read_table(f).column("image_uri").to_pylist()
    ]
    return sorted(u for u in uris if os.path.basename(u).startswith("img_"))


def point_on_screen(evaluate, uri: str) -> dict:
    return evaluate(WHERE.replace("PARTITION", repr(DS)).replace("URI", repr(uri)))


def maps_pages(browser: Browser, base: str, record: dict, out: Path) -> None:
    browser.open(f"{base}/")
    browser.wait_for("document.querySelectorAll('section.run figure').length > 0")
    no_broken_images(browser, "the maps page")
    time.sleep(0.3)
    save(browser.screenshot(), out, "maps-page.png")

    # A night's page: the explorer in its frame, the mosaic, and the similar images of a clicked point.
    browser.open(f"{base}/?ds={DS}&method=pca")
    in_frame = FrameEval(browser)
    end = time.monotonic() + 90
    while not in_frame(READY):
        if time.monotonic() > end:
            raise SystemExit("the explorer in the maps page did not get ready")
        time.sleep(0.2)
    time.sleep(0.5)  # WebGL's first frame
    uris = photo_uris(record["projections"]["pca"]["dir"])
    spot = point_on_screen(in_frame, uris[0])
    frame = browser.evaluate("(r => [r.left, r.top])(document.querySelector('iframe.map').getBoundingClientRect())")
    for _ in range(3):  # a loaded machine may drop a click
        browser.click(frame[0] + spot["px"], frame[1] + spot["py"])
        try:
            browser.wait_for("document.querySelectorAll('#similar-results figure').length > 0", timeout=30)
            break
        except BrowserError:
            continue
    else:
        raise SystemExit("clicking a point of the explorer showed no similar images")
    browser.wait_for("[...document.querySelectorAll('#similar-results img')].every(i => i.complete)", timeout=30)
    no_broken_images(browser, "the night's maps page")
    browser.evaluate("document.getElementById('similar').scrollIntoView({block: 'end'})")
    time.sleep(0.5)
    save(browser.screenshot(), out, "maps-search.png")


def explorer(browser: Browser, record: dict, out: Path) -> None:
    entry = record["projections"]["umap"]
    browser.open(f"file://{entry['map_html']}")
    browser.wait_for(READY, timeout=90)
    browser.wait_for(f"{DEEP}(el => el.tagName === 'CANVAS').length > 0")
    time.sleep(0.8)  # WebGL's first frame
    save(browser.screenshot(), out, "explorer-overview.png")

    uris = photo_uris(entry["dir"])
    known = uris[len(uris) // 2]
    spot = point_on_screen(browser.evaluate, known)
    browser.mouse("mouseMoved", spot["px"] + 1, spot["py"] + 1)
    browser.mouse("mouseMoved", spot["px"], spot["py"])
    browser.wait_for(f"{DEEP}(el => el.tagName === 'IMG' && el.alt === 'thumbnail' && el.offsetParent !== null)"
                     ".length > 0", timeout=15)  # fmt: skip
    time.sleep(0.3)
    save(browser.screenshot(), out, "explorer-hover.png")

    def centre(test: str) -> list[float]:
        return browser.evaluate(
            f"(() => {{ const el = {DEEP}({test})[0]; const r = el.getBoundingClientRect();"
            " return [r.left + r.width / 2, r.top + r.height / 2]; })()"
        )

    browser.click(*centre("el => (el.title || '').startsWith('Box Select')"))
    x, y = spot["px"], spot["py"]
    for _ in range(3):
        browser.drag([(x - 60, y - 60), (x - 10, y - 10), (x + 10, y + 10), (x + 60, y + 60)])
        try:
            browser.wait_for("/^[0-9,]+ selected/.test(Bokeh.documents[0].get_model_by_name('selection_info').text)",
                             timeout=10)  # fmt: skip
            break
        except BrowserError:
            continue
    else:
        raise SystemExit("a box selection around a point selected nothing")
    browser.mouse("mouseMoved", 5, 5)  # the hover card away from the selection
    time.sleep(0.5)
    save(browser.screenshot(), out, "explorer-selection.png")

    browser.click(*centre("el => el.tagName === 'INPUT' && el.placeholder.startsWith('search')"))
    browser.type_text(os.path.basename(known))
    browser.wait_for("/match/.test(Bokeh.documents[0].get_model_by_name('search_info').text)")
    time.sleep(0.5)
    save(browser.screenshot(), out, "explorer-search.png")


# --------------------------------------------------------------------------- the trigger form


def get(base: str, path: str):
    with urllib.request.urlopen(base + path, timeout=30) as response:
        return json.loads(response.read())


@contextlib.contextmanager
def standalone(work: Path):
    """``make airflow`` on free ports in ``work``; yields the base URL; stopped with its process group."""
    port = free_port()
    env = {
        **os.environ,
        "AIRFLOW__API__PORT": str(port),
        "AIRFLOW__API__BASE_URL": f"http://127.0.0.1:{port}",
        "AIRFLOW__CORE__EXECUTION_API_SERVER_URL": f"http://127.0.0.1:{port}/execution/",
        "AIRFLOW__LOGGING__WORKER_LOG_SERVER_PORT": str(free_port()),
        "AIRFLOW__LOGGING__TRIGGER_LOG_SERVER_PORT": str(free_port()),
    }
    work.mkdir(parents=True, exist_ok=True)
    log_path = work / "standalone.log"
    command = ["make", "--no-print-directory", "airflow", f"AIRFLOW_HOME={work / 'home'}", f"DATA={work / 'data'}",
               "N=4"]  # fmt: skip
    log("starting " + " ".join(command))
    with open(log_path, "wb") as log_file:
        proc = subprocess.Popen(command, cwd=ROOT, env=env, stdout=log_file, stderr=subprocess.STDOUT,
                                start_new_session=True)  # fmt: skip
        base = f"http://127.0.0.1:{port}"
        try:
            deadline = time.monotonic() + 300
            while True:
                if proc.poll() is not None:
                    raise SystemExit("make airflow stopped:\n" + log_path.read_text()[-3000:])
                with contextlib.suppress(OSError, KeyError, ValueError):
                    if get(base, f"/api/v2/dags/{DAG_ID}")["dag_id"] == DAG_ID:
                        break
                if time.monotonic() > deadline:
                    raise SystemExit("the DAG did not appear in 5 minutes:\n" + log_path.read_text()[-3000:])
                time.sleep(2)
            yield base
        finally:
            os.killpg(proc.pid, signal.SIGTERM)
            try:
                proc.wait(timeout=60)
            except subprocess.TimeoutExpired:
                os.killpg(proc.pid, signal.SIGKILL)
                proc.wait(timeout=10)


def click_text(browser: Browser, selector: str, text: str) -> None:
    where = browser.wait_for(
        f"""(() => {{
          const all = [...document.querySelectorAll({json.dumps(selector)})];
          const e = all.find(x => x.innerText.trim() === {json.dumps(text)});
          if (!e) return null;
          const r = e.getBoundingClientRect();
          return [r.x + r.width / 2, r.y + r.height / 2];
        }})()""",
        timeout=60,
    )
    browser.click(*where)


def trigger_form(work: Path, out: Path) -> None:
    from beam_jobs.nightly.params import NIGHT, REPORT

    with standalone(work) as base, Browser(loopback=True, width=1300, height=1700) as browser:
        browser.open(f"{base}/dags/{DAG_ID}")
        click_text(browser, "button", "Trigger")
        browser.wait_for("[...document.querySelectorAll('[role=dialog] button')].some(x => x.innerText.trim() === "
                         "'Trigger')", timeout=60)  # fmt: skip
        click_text(browser, "[role=dialog] button", NIGHT)
        browser.wait_for("[...document.querySelectorAll('[role=dialog] label')].some(x => "
                         "x.innerText.includes('Input images'))")  # fmt: skip
        time.sleep(1.5)  # the section's opening animation
        no_broken_images(browser, "the trigger form")
        save(browser.screenshot(), out, "trigger-form.png")
        # The store's params (docs/store.md): the first section closed, "Report and store" open.
        click_text(browser, "[role=dialog] button", NIGHT)
        time.sleep(1.5)  # the section's closing animation moves the buttons below it
        click_text(browser, "[role=dialog] button", REPORT)
        # Shown, not only present: a closed section keeps its fields in the page.
        browser.wait_for("[...document.querySelectorAll('[role=dialog] label')].some(x => "
                         "x.innerText.includes('Vector store') && x.getBoundingClientRect().height > 0)")  # fmt: skip
        time.sleep(1.5)
        save(browser.screenshot(), out, "trigger-form-store.png")


# --------------------------------------------------------------------------- main


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--out", default=str(ROOT / "docs" / "screenshots"), help="folder for the PNGs")
    parser.add_argument("--skip-trigger-form", action="store_true", help="no airflow standalone (saves ~3 min)")
    parser.add_argument("--keep", action="store_true", help="keep the temporary folder (demo night, logs)")
    parser.add_argument(
        "--demo-data",
        help="reuse the DATA folder of an earlier demo night (its out/runs/ds=DS/run.json) instead of make demo",
    )
    args = parser.parse_args(argv)
    out = Path(args.out).resolve()
    work = Path(tempfile.mkdtemp(prefix="screenshots-"))
    try:
        if args.demo_data:
            record = json.loads((Path(args.demo_data) / "out" / "runs" / f"ds={DS}" / "run.json").read_text())
        else:
            record = demo_night(work / "demo")
        events = [{"id": 1, "timestamp": f"{DS}T04:00:00+00:00", "extra": record}]
        with serve_maps(events) as base, Browser(width=1360, height=1100, loopback=True) as browser:
            maps_pages(browser, base, record, out)
        with Browser(width=1360, height=860) as browser:
            explorer(browser, record, out)
        if not args.skip_trigger_form:
            trigger_form(work / "standalone", out)
    finally:
        if args.keep:
            log(f"kept {work}")
        else:
            shutil.rmtree(work, ignore_errors=True)
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
