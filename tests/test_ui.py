"""The "Embedding maps" plugin page: which runs it shows and how (served for real in test_scheduler.py)."""

from __future__ import annotations

import os
from datetime import UTC, datetime

import pytest

from tests.conftest import ROOT


def record(ds: str, run_id: str, methods=("pca",), **extra) -> dict:
    return {
        "ds": ds,
        "run_id": run_id,
        "runner": "FnApiRunner",
        "embeddings": {"inputs": 13, "embedded": 12, "failed": 1, "images_per_second": 4.25},
        "projections": {
            m: {
                "rows": 12,
                "map_png": f"/d/{m}/ds={ds}/map.png",
                "map_html": f"/d/{m}/ds={ds}/map.html",
                **({"explained_variance_ratio": [0.31, 0.12]} if m == "pca" else {"trustworthiness": 0.97}),
            }
            for m in methods
        },
        **extra,
    }


def event(i: int, day: int, extra: dict | None) -> dict:
    return {"id": i, "timestamp": datetime(2026, 11, day, 4, tzinfo=UTC), "extra": extra}


def test_latest_run_per_date_wins_newest_date_first():
    from image_embeddings_airflow.ui import latest_runs

    events = [
        event(1, 19, record("2026-11-19", "first")),
        event(2, 20, record("2026-11-20", "night", methods=("pca", "umap"))),
        event(3, 21, record("2026-11-19", "rerun")),  # a re-run of the 19th, published later
        event(4, 21, {"note": "created by hand in the UI"}),
        event(5, 21, None),
    ]
    runs = latest_runs(events)
    assert [(r["ds"], r["run_id"], r["event_id"]) for r in runs] == [
        ("2026-11-20", "night", 2),
        ("2026-11-19", "rerun", 3),
    ]
    assert [r["ds"] for r in latest_runs(events, method="umap")] == ["2026-11-20"]
    assert len(latest_runs(events, limit=1)) == 1


def test_index_page_links_each_map_and_escapes_what_runs_say():
    from image_embeddings_airflow.ui import latest_runs, render_index, render_map

    runs = latest_runs([event(7, 20, record("2026-11-20", "<script>x</script>", methods=("pca", "umap")))])
    page = render_index(runs)
    assert "map.png?event=7&amp;method=pca" in page
    assert "map.png?event=7&amp;method=umap" in page
    assert "./?ds=2026-11-20&amp;method=umap" in page
    assert "PC1 + PC2: 31.0% + 12.0% of variance" in page
    assert "trustworthiness 0.970" in page
    assert "<script>x" not in page
    assert "&lt;script&gt;x" in page
    assert "href='/" not in page
    assert "src='/" not in page
    only_umap = render_index(runs, "umap")
    assert "method=pca" not in only_umap.split("</nav>")[1]
    assert "No published runs yet" in render_index([])
    assert "map_mosaic.png?event=7&amp;method=umap" in page  # the mosaic beside each map
    detail = render_map(runs[0], "umap")
    assert (
        "<iframe class='map' sandbox='allow-scripts allow-downloads' src='map.html?event=7&amp;method=umap'" in detail
    )
    assert "<img src='map_mosaic.png?event=7&amp;method=umap'" in detail


def test_a_two_model_night_shows_a_group_per_model_and_the_comparison(monkeypatch):
    import asyncio

    from image_embeddings_airflow import ui

    night = record("2026-11-20", "two")
    second = {
        "pca": {"rows": 12, "map_png": "/m/pca/ds=2026-11-20/map.png", "map_html": "/m/pca/ds=2026-11-20/map.html"}
    }
    # Keys sorted, as run.json stores them: the primary (the record's model_id) is not the first key.
    night["model_id"] = "resnet50/x"
    night["models"] = {
        "mobilenet_v3_large": {"model_id": "mobilenet/y", "embedded": 11, "failed": 2, "projections": second},
        "resnet50": {"model_id": "resnet50/x", "embedded": 12, "failed": 1, "projections": night["projections"]},
    }
    pair = {"models": ["resnet50", "mobilenet_v3_large"], "knn_overlap_at_10": 0.4213, "distance_spearman": 0.61}
    night["comparison"] = {"pairs": [{**pair, "linear_cka": 0.77}]}
    runs = ui.latest_runs([event(9, 20, night)])
    page = ui.render_index(runs)
    assert page.index("<h3 class='model'>resnet50") < page.index("<h3 class='model'>mobilenet_v3_large")
    # The first model's maps are the record's top-level ones; the other's are addressed by name.
    assert "map.png?event=9&amp;method=pca'" in page
    assert "map.png?event=9&amp;method=pca&amp;model=mobilenet_v3_large" in page
    assert "./?ds=2026-11-20&amp;method=pca&amp;model=mobilenet_v3_large" in page
    assert "kNN overlap@10 0.42 · Spearman 0.61 · CKA 0.77" in page
    detail = ui.render_map(runs[0], "pca", "mobilenet_v3_large")
    assert "src='map.html?event=9&amp;method=pca&amp;model=mobilenet_v3_large'" in detail
    assert "PCA map · 2026-11-20 · mobilenet_v3_large" in detail
    assert ui.projection_of(night, "pca", "mobilenet_v3_large") == second["pca"]
    assert ui.projection_of(night, "umap", "mobilenet_v3_large") == {}
    read: list[str] = []
    monkeypatch.setattr(ui, "load_events", lambda event_id=None: [{"extra": night}])
    monkeypatch.setattr(ui, "read_bytes", lambda path: read.append(path) or b"png")
    assert asyncio.run(ui._map_file(9, "pca", "map_png", "mobilenet_v3_large")) == b"png"
    assert read == ["/m/pca/ds=2026-11-20/map.png"]


def test_each_night_links_its_morning_report_served_from_that_nights_folder_only(tmp_path, monkeypatch):
    import asyncio

    from fastapi import HTTPException

    from image_embeddings_airflow import ui

    folder = tmp_path / "out" / "reports" / "ds=2026-11-20"
    folder.mkdir(parents=True)
    (folder / "report.html").write_text("<html>tonight</html>")
    night = {**record("2026-11-20", "r"), "report_dir": str(folder)}
    runs = ui.latest_runs([event(9, 20, night), event(8, 19, record("2026-11-19", "q"))])
    page = ui.render_index(runs)
    assert page.count("morning report") == 1  # the older night published no report folder
    assert "href='report.html?event=9'" in page
    monkeypatch.setattr(ui, "load_events", lambda event_id=None: [{"extra": night}])
    assert asyncio.run(ui._report_file(9, "report.html")) == b"<html>tonight</html>"
    with pytest.raises(HTTPException) as missing:  # the report task has not written its picture yet
        asyncio.run(ui._report_file(9, "report.png"))
    assert missing.value.status_code == 404
    # Only that night's reports folder, only the report's two names.
    assert ui.report_path({**night, "report_dir": "/etc"}, "report.html") is None
    assert ui.report_path({**night, "report_dir": str(tmp_path / "reports" / "ds=2026-11-21")}, "report.html") is None
    assert ui.report_path(night, "passwd") is None


def test_map_files_are_only_the_three_names_and_the_mosaic_sits_beside_map_png():
    from image_embeddings_airflow.ui import MAP_CSP, map_path

    entry = {"map_png": "/d/pca/ds=1/map.png", "map_html": "/d/pca/ds=1/map.html"}
    assert map_path(entry, "map_mosaic") == "/d/pca/ds=1/map_mosaic.png"
    assert map_path({**entry, "map_mosaic": "/e/map_mosaic.png"}, "map_mosaic") == "/e/map_mosaic.png"
    assert map_path({**entry, "map_mosaic": "/etc/passwd"}, "map_mosaic") is None
    assert map_path({"map_png": "/etc/passwd"}, "map_mosaic") is None
    assert map_path({"map_html": "/x/secret.html"}, "map_html") is None
    assert map_path({}, "map_png") is None
    # The explorer's callbacks are compiled by BokehJS (eval) and it may download a selection; still no network.
    assert "sandbox allow-scripts allow-downloads;" in MAP_CSP
    assert "default-src 'none'" in MAP_CSP
    assert "allow-same-origin" not in MAP_CSP


def test_plugin_registers_the_view_and_skips_the_helper_package():
    """Airflow's plugin scan finds the plugin file and, per .airflowignore, none of the helper modules."""
    from airflow._shared.module_loading import find_path_from_directory

    plugins = os.path.join(ROOT, "plugins")
    scanned = sorted(os.path.relpath(p, plugins) for p in find_path_from_directory(plugins, ".airflowignore"))
    assert [p for p in scanned if p.endswith(".py")] == ["image_embeddings_plugin.py"]

    from image_embeddings_plugin import ImageEmbeddingsPlugin

    views = {v["url_route"]: v for v in ImageEmbeddingsPlugin.external_views}
    assert views["embedding-maps"]["href"] == "image-embeddings/"
    assert views["embedding-maps"]["destination"] == "nav"


@pytest.mark.slow  # ~4 s: building the app imports the API server's auth modules
def test_plugin_serves_the_router_behind_airflows_access_check():
    """The module-level router's routes, mounted by create_app behind requires_access_dag: no token, no page."""
    from fastapi.testclient import TestClient
    from image_embeddings_plugin import ImageEmbeddingsPlugin

    from image_embeddings_airflow.ui import router

    (app,) = ImageEmbeddingsPlugin().fastapi_apps
    assert app["url_prefix"] == "/image-embeddings"
    paths = ["/", "/api/latest", "/map.png", "/map.html", "/report.html", "/report.png", "/map_mosaic.png"]
    paths += ["/api/similar", "/api/similar", "/thumb"]
    assert {r.path for r in app["app"].routes} >= set(paths)
    assert [route.path for route in router.routes] == paths
    client = TestClient(app["app"])
    for path in (
        "/",
        "/?ds=2026-11-20&method=pca",
        "/api/latest",
        "/map.png?event=1&method=pca",
        "/map.html?event=1&method=pca",
        "/map_mosaic.png?event=1&method=pca",
        "/api/similar?event=1&uri=/x.jpg",
        "/thumb?event=1&uri=/x.jpg",
    ):
        response = client.get(path)
        assert response.status_code == 401, path
        assert "map" not in response.text.lower(), path
    assert client.post("/api/similar?event=1", content=b"\xff\xd8 an image").status_code == 401


def test_pages_are_templates_and_autoescaped():
    from image_embeddings_airflow.ui import PAGES

    assert PAGES.autoescape is True
    assert {"index.html", "map_page.html"} <= set(PAGES.list_templates())


def test_search_panel_only_for_runs_with_an_index_and_only_index_partitions_are_opened():
    from image_embeddings_airflow.similar import index_dir_of
    from image_embeddings_airflow.ui import latest_runs, render_map

    with_index = record("2026-11-20", "night", index={"dir": "/d/out/index/ds=2026-11-20", "rows": 12})
    runs = latest_runs([event(7, 20, with_index), event(8, 21, record("2026-11-21", "old"))])
    page = render_map(runs[1], "pca")
    assert "id='similar'" in page
    assert "data-event='7'" in page
    assert "12 images in the index" in page
    assert "id='similar'" not in render_map(runs[0], "pca")
    assert index_dir_of(with_index) == "/d/out/index/ds=2026-11-20"
    for folder in ("/etc", "/d/out/index/ds=2026-11-20/../../secrets", "/d/out/embeddings/ds=2026-11-20", 7):
        assert index_dir_of({"index": {"dir": folder}}) is None, folder
    assert index_dir_of({}) is None


def test_map_page_steps_through_the_nights_of_one_frame():
    from image_embeddings_airflow.ui import frame_neighbours, latest_runs, render_map

    def framed(ds: str, folder: str | None) -> dict:
        run = record(ds, f"r-{ds}")
        if folder:
            run["projections"]["pca"]["reference"] = {"dir": folder, "partitions": ["2026-11-18", "2026-11-19"]}
            run["projections"]["pca"]["drift"] = {
                "mean_shift_relative": 0.12,
                "mmd_p_value": 0.004,
                "novelty_rate": 0.2,
            }
        return run

    runs = latest_runs(
        [
            event(1, 19, framed("2026-11-19", None)),
            event(2, 20, framed("2026-11-20", "/out/references/method=pca/fixed")),
            event(3, 21, framed("2026-11-21", "/out/references/method=pca/fixed")),
            event(4, 22, framed("2026-11-22", "/out/references/method=pca/fixed")),
        ]
    )
    by_ds = {run["ds"]: run for run in runs}
    assert frame_neighbours(runs, by_ds["2026-11-21"], "pca") == ("2026-11-20", "2026-11-22")
    assert frame_neighbours(runs, by_ds["2026-11-20"], "pca") == (None, "2026-11-21")
    assert frame_neighbours(runs, by_ds["2026-11-19"], "pca") == (None, None)  # refitted: its own axes
    page = render_map(by_ds["2026-11-21"], "pca", neighbours=("2026-11-20", "2026-11-22"))
    assert "./?ds=2026-11-20&amp;method=pca" in page
    assert "./?ds=2026-11-22&amp;method=pca" in page
    assert "<code>/out/references/method=pca/fixed</code>" in page
    assert "MMD p-value 0.0040" in page
    assert "novelty 20.0%" in page
    assert "same frame" not in render_map(by_ds["2026-11-19"], "pca")
