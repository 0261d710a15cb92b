"""The "Embedding maps" page in the Airflow 3 UI: the latest published maps per date and method.

Served by the API server as a FastAPI app (``/image-embeddings``) and shown
inside the Airflow UI as an external view (see ``plugins/image_embeddings_plugin.py``).

Where the maps come from: the published runs, i.e. the events on Asset
``image_embeddings_maps`` that the DAG's ``publish`` task writes. Their
``extra`` is the run record (run.json), which holds each map's path. Only
events emitted by that task count (the REST API lets users create asset
events with any extra), and only files named map.png / map.html in such an
event are read, so the page cannot be made to serve arbitrary files. For a
date published more than once (re-runs, backfills) the newest event wins, as
in the partitions on disk.

Access: the same as reading the DAG's runs (Airflow's own auth dependency; in
the UI the session cookie, from scripts a bearer token from ``/auth/token``).
The interactive map is served with a sandboxing CSP: its inline script runs,
but it can neither reach the network nor see Airflow's cookies.
"""

from __future__ import annotations

import html
from typing import Any
from urllib.parse import urlencode

from image_embeddings_airflow.runs import DAG_ID, MAPS_ASSET, METHODS, PUBLISH_TASK

MAP_CSP = (
    "sandbox allow-scripts; default-src 'none'; img-src data:; style-src 'unsafe-inline'; script-src 'unsafe-inline'"
)


def latest_runs(events: list[dict[str, Any]], method: str | None = None, limit: int = 14) -> list[dict[str, Any]]:
    """Newest published run per date (newest date first), from ``{"id", "timestamp", "extra"}`` events.

    ``method`` keeps only runs that have that method's map.
    """
    by_ds: dict[str, dict[str, Any]] = {}
    for event in sorted(events, key=lambda e: (str(e["timestamp"]), e["id"])):
        record = event.get("extra") or {}
        if not record.get("ds") or not isinstance(record.get("projections"), dict):
            continue  # not a run record (e.g. an event created by hand in the UI)
        by_ds[record["ds"]] = {"event_id": event["id"], "published_at": str(event["timestamp"]), **record}
    runs = sorted(by_ds.values(), key=lambda r: r["ds"], reverse=True)
    if method:
        runs = [r for r in runs if method in r["projections"]]
    return runs[:limit]


def _fmt(value: Any, spec: str = ",") -> str:
    if value is None:
        return "&ndash;"
    try:
        return format(value, spec)
    except (TypeError, ValueError):
        return html.escape(str(value))


def _quality(method: str, p: dict[str, Any]) -> str:
    if method == "pca" and p.get("explained_variance_ratio"):
        shares = [f"{v:.1%}" for v in p["explained_variance_ratio"][:2]]
        return f"PC1 + PC2: {' + '.join(shares)} of variance"
    if p.get("trustworthiness") is not None:
        return f"trustworthiness {p['trustworthiness']:.3f}"
    return ""


STYLE = """
:root { color-scheme: light; --ink:#1f2933; --muted:#616e7c; --line:#d9e2ec; --accent:#017cee; }
* { box-sizing: border-box; }
body { margin: 0; padding: 20px 24px; font: 14px/1.45 system-ui, -apple-system, "Segoe UI", sans-serif;
       color: var(--ink); background: #fff; }
h1 { font-size: 20px; margin: 0 0 4px; }
.sub { color: var(--muted); margin: 0 0 16px; }
nav.filters a { display: inline-block; padding: 4px 12px; margin-right: 6px; border: 1px solid var(--line);
                border-radius: 14px; text-decoration: none; color: var(--ink); }
nav.filters a.on { background: var(--accent); border-color: var(--accent); color: #fff; }
section.run { border-top: 1px solid var(--line); padding: 16px 0; }
section.run h2 { font-size: 16px; margin: 0; }
.facts { color: var(--muted); margin: 2px 0 10px; }
.facts b { color: var(--ink); font-weight: 600; }
.maps { display: flex; flex-wrap: wrap; gap: 16px; }
figure { margin: 0; width: 460px; max-width: 100%; border: 1px solid var(--line); border-radius: 8px;
         overflow: hidden; }
figure img { display: block; width: 100%; height: auto; background: #f5f7fa; }
figcaption { padding: 8px 10px; display: flex; justify-content: space-between; gap: 8px; align-items: baseline; }
figcaption .m { font-weight: 600; text-transform: uppercase; }
figcaption a { color: var(--accent); text-decoration: none; white-space: nowrap; }
.empty { padding: 40px 0; color: var(--muted); }
iframe.map { width: 100%; height: calc(100vh - 150px); min-height: 520px; border: 1px solid var(--line);
             border-radius: 8px; }
a.back, .sub a { color: var(--accent); text-decoration: none; }
"""


def _page(title: str, body: str) -> str:
    return (
        "<!doctype html><html lang='en'><head><meta charset='utf-8'>"
        f"<meta name='viewport' content='width=device-width, initial-scale=1'><title>{html.escape(title)}</title>"
        f"<style>{STYLE}</style></head><body>{body}</body></html>"
    )


def render_index(runs: list[dict[str, Any]], method: str | None = None) -> str:
    """The overview: one section per date, one PNG per method, each linking to its interactive map."""
    filters = "".join(
        f"<a class='{'on' if (m or None) == method else ''}' href='./{('?' + urlencode({'method': m})) if m else ''}'>"
        f"{html.escape(label)}</a>"
        for m, label in (("", "All methods"), *((m, m.upper()) for m in METHODS))
    )
    parts = [
        "<h1>Image embedding maps</h1>",
        f"<p class='sub'>Latest published run per date of DAG <code>{DAG_ID}</code> "
        f"(Asset <code>{MAPS_ASSET}</code>); click a map for the interactive version.</p>",
        f"<nav class='filters'>{filters}</nav>",
    ]
    if not runs:
        parts.append(
            "<p class='empty'>No published runs yet. Maps appear here once a run of "
            f"<code>{DAG_ID}</code> reaches its <code>{PUBLISH_TASK}</code> task.</p>"
        )
    for run in runs:
        e = run.get("embeddings") or {}
        facts = (
            f"<b>{_fmt(e.get('embedded'))}</b> embedded of {_fmt(e.get('inputs'))} inputs · "
            f"{_fmt(e.get('failed'))} failed · {_fmt(e.get('images_per_second'), ',.1f')} images/s · "
            f"runner {html.escape(str(run.get('runner', '-')))} · "
            f"run <code>{html.escape(str(run.get('run_id')))}</code>"
        )
        figures = []
        for m, p in sorted(run["projections"].items()):
            if method and m != method:
                continue
            q = {"event": run["event_id"], "method": m}
            png = f"map.png?{urlencode(q)}"
            view = f"./?{urlencode({'ds': run['ds'], 'method': m})}"
            figures.append(
                f"<figure><a href='{html.escape(view)}'><img loading='lazy' src='{html.escape(png)}' "
                f"alt='{html.escape(m)} map for {html.escape(run['ds'])}'></a>"
                f"<figcaption><span><span class='m'>{html.escape(m)}</span> · {_fmt(p.get('rows'))} rows · "
                f"{html.escape(_quality(m, p))}</span>"
                f"<a href='{html.escape(view)}'>interactive &rsaquo;</a></figcaption></figure>"
            )
        parts.append(
            f"<section class='run'><h2>{html.escape(run['ds'])}</h2><p class='facts'>{facts}</p>"
            f"<div class='maps'>{''.join(figures)}</div></section>"
        )
    return _page("Image embedding maps", "".join(parts))


def render_map(run: dict[str, Any], method: str) -> str:
    """One date and method: the interactive map (sandboxed frame) with its figures."""
    p = run["projections"][method]
    q = urlencode({"event": run["event_id"], "method": method})
    body = (
        f"<p><a class='back' href='./'>&lsaquo; all dates</a></p>"
        f"<h1>{html.escape(method.upper())} map · {html.escape(run['ds'])}</h1>"
        f"<p class='sub'>{_fmt(p.get('rows'))} rows · {html.escape(_quality(method, p))} · "
        f"<a href='map.png?{html.escape(q)}'>PNG</a> · <code>{html.escape(str(p.get('map_html')))}</code></p>"
        f"<iframe class='map' sandbox='allow-scripts' src='map.html?{html.escape(q)}' "
        f"title='{html.escape(method)} map for {html.escape(run['ds'])}'></iframe>"
    )
    return _page(f"{method.upper()} map {run['ds']}", body)


def create_app():
    """The FastAPI app the plugin mounts; imports the API server's pieces only when it is built."""
    import asyncio

    from airflow.api_fastapi.auth.managers.models.resource_details import DagAccessEntity
    from airflow.api_fastapi.core_api.security import requires_access_dag
    from fastapi import Depends, FastAPI, HTTPException, Query
    from fastapi.responses import HTMLResponse, JSONResponse, Response

    from image_embeddings_airflow.paths import read_bytes

    app = FastAPI(
        title="Image embedding maps",
        description="Latest maps published by the image_embeddings DAG.",
        dependencies=[Depends(requires_access_dag("GET", DagAccessEntity.RUN, param_dag_id=DAG_ID))],
    )

    def load_events(event_id: int | None = None) -> list[dict[str, Any]]:
        """The publish task's events on the maps Asset, newest first (or the one with ``event_id``)."""
        from airflow.models.asset import AssetEvent, AssetModel
        from airflow.utils.session import create_session
        from sqlalchemy import select

        query = (
            select(AssetEvent.id, AssetEvent.timestamp, AssetEvent.extra)
            .join(AssetModel, AssetModel.id == AssetEvent.asset_id)
            .where(
                AssetModel.name == MAPS_ASSET,
                AssetEvent.source_dag_id == DAG_ID,
                AssetEvent.source_task_id == PUBLISH_TASK,
            )
            .order_by(AssetEvent.timestamp.desc())
            .limit(2000)
        )
        if event_id is not None:
            query = query.where(AssetEvent.id == event_id)
        with create_session() as session:
            rows = session.execute(query).all()
        return [{"id": r.id, "timestamp": r.timestamp, "extra": r.extra} for r in rows]

    async def runs(method: str | None = None, limit: int = 14) -> list[dict[str, Any]]:
        # The metadata DB session is synchronous: keep it off the event loop.
        return latest_runs(await asyncio.to_thread(load_events), method, limit)

    def check_method(method: str | None) -> None:
        if method is not None and method not in METHODS:
            raise HTTPException(400, f"method must be one of {', '.join(METHODS)}")

    @app.get("/", response_class=HTMLResponse)
    async def index(
        method: str | None = None, ds: str | None = None, limit: int = Query(14, ge=1, le=366)
    ) -> HTMLResponse:
        check_method(method or None)
        if ds and method:
            match = [r for r in await runs(method, 10_000) if r["ds"] == ds]
            if not match:
                raise HTTPException(404, f"no published {method} map for ds={ds}")
            return HTMLResponse(render_map(match[0], method))
        return HTMLResponse(render_index(await runs(method or None, limit), method or None))

    @app.get("/api/latest")
    async def latest(method: str | None = None, limit: int = Query(14, ge=1, le=366)) -> JSONResponse:
        check_method(method)
        return JSONResponse(await runs(method, limit), headers={"Cache-Control": "no-store"})

    async def map_file(event: int, method: str, name: str) -> bytes:
        check_method(method)
        events = await asyncio.to_thread(load_events, event)
        record = events[0]["extra"] if events else None
        path = ((record or {}).get("projections") or {}).get(method, {}).get(name)
        if not isinstance(path, str) or path.rsplit("/", 1)[-1] != name.replace("_", "."):
            raise HTTPException(404, f"event {event} published no {method} {name}")
        try:
            return await asyncio.to_thread(read_bytes, path)
        except FileNotFoundError:
            raise HTTPException(404, f"{path} is gone (partition replaced or deleted)") from None

    @app.get("/map.png")
    async def map_png(event: int, method: str) -> Response:
        return Response(await map_file(event, method, "map_png"), media_type="image/png")

    @app.get("/map.html")
    async def map_html(event: int, method: str) -> Response:
        body = await map_file(event, method, "map_html")
        return Response(body, media_type="text/html", headers={"Content-Security-Policy": MAP_CSP})

    return app
