"""The "Embedding maps" page in the Airflow 3 UI: the latest published maps per date, model and method.

Served by the API server as a FastAPI app (``/image-embeddings``) and shown
inside the Airflow UI as an external view (see ``plugins/image_embeddings_plugin.py``).
The routes live on the module-level ``router``; ``create_app`` wraps them in an
app with Airflow's access check. The pages are Jinja2 templates in
``templates/`` (autoescaped: what a run record says is never markup).

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
The interactive map (map.html, a Bokeh explorer) is served with a sandboxing
CSP: its inline script runs (BokehJS compiles the page's callbacks, hence
'unsafe-eval'; the sandbox gives it an opaque origin), it may download the
selection it builds (``allow-downloads``), but it can neither reach the
network nor see Airflow's cookies. map_mosaic.png (the night's images on a
grid) is read from the folder of the run's map.png: run records written
before it existed have no field for it.

Several models in a night (the DAG's ``models``): the record's ``models`` holds each
model's maps, and the page shows one group per model, with the night's model
comparison; a map of a model other than the first is addressed with ``model=<name>``.

The map page's similar-images search (``/api/similar``, ``/thumb``) is ``similar.py``;
its routes are included in ``router``.
"""

from __future__ import annotations

import asyncio
import os
from typing import Any
from urllib.parse import urlencode

import jinja2
from fastapi import APIRouter, HTTPException, Query
from fastapi.responses import HTMLResponse, JSONResponse, Response
from markupsafe import Markup

from beam_jobs.contract import MAP_HTML, MAP_MOSAIC, MAP_PNG, METHODS, REPORT_HTML, REPORT_PNG, RunRecord, partition
from image_embeddings_airflow import DAG_ID, MAPS_ASSET, PUBLISH_TASK, similar
from image_embeddings_airflow.paths import read_bytes

MAP_SANDBOX = "allow-scripts allow-downloads"
MAP_CSP = (
    f"sandbox {MAP_SANDBOX}; default-src 'none'; img-src data: blob:; style-src 'unsafe-inline'; "
    "script-src 'unsafe-inline' 'unsafe-eval'"
)
# The run record's fields that name a map file, and the one file name each may hold.
MAP_FILES = {"map_png": MAP_PNG, "map_html": MAP_HTML, "map_mosaic": MAP_MOSAIC}


def map_path(projection: dict[str, Any], field: str) -> str | None:
    """The path of a map file named in a run record's projection entry, or None.

    map_mosaic.png sits beside map.png: when the record has no ``map_mosaic`` field,
    its path is derived from ``map_png`` (only ever that one file name in that folder).
    """
    path = projection.get(field)
    if path is None and field == "map_mosaic" and isinstance(projection.get("map_png"), str):
        folder, _, name = projection["map_png"].rpartition("/")
        path = f"{folder}/{MAP_MOSAIC}" if name == MAP_PNG else None
    if not isinstance(path, str) or path.rsplit("/", 1)[-1] != MAP_FILES[field]:
        return None
    return path


def projection_of(record: dict[str, Any], method: str, model: str | None = None) -> dict[str, Any]:
    """The record's entry for ``method``'s map: the first model's (``projections``), or ``model``'s."""
    if model:
        entry = (((record.get("models") or {}).get(model) or {}).get("projections") or {}).get(method)
    else:
        entry = (record.get("projections") or {}).get(method)
    return entry if isinstance(entry, dict) else {}


def model_groups(run: dict[str, Any]) -> list[tuple[str | None, dict[str, Any], dict[str, Any], str | None]]:
    """(model name or None, its figures, its projections, the ``model`` its links carry) per model of the run.

    One unnamed group for a single-model night (and records from before there could be several); else
    one per model, the primary first. The primary is the model whose model_id is the record's top-level
    one (JSON sorts the keys, so the order says nothing): its maps are the record's top-level ones and
    its links carry no ``model``.
    """
    models = run.get("models") or {}
    if len(models) < 2:
        return [(None, run.get("embeddings") or {}, run.get("projections") or {}, None)]
    groups = [
        (
            name,
            figures,
            figures.get("projections") or {},
            None if figures.get("model_id") == run.get("model_id") else name,
        )
        for name, figures in models.items()
    ]
    return sorted(groups, key=lambda group: group[3] is not None)


def _query(**values: Any) -> str:
    """A query string of the values given, leaving out the None ones."""
    return urlencode({key: value for key, value in values.items() if value is not None})


def latest_runs(events: list[dict[str, Any]], method: str | None = None, limit: int = 14) -> list[dict[str, Any]]:
    """Newest published run per date (newest date first), from ``{"id", "timestamp", "extra"}`` events.

    ``method`` keeps only runs that have that method's map.
    """
    by_ds: dict[str, dict[str, Any]] = {}
    for event in sorted(events, key=lambda event: (str(event["timestamp"]), event["id"])):
        record = event.get("extra") or {}
        if not record.get("ds") or not isinstance(record.get("projections"), dict):
            continue  # not a run record (e.g. an event created by hand in the UI)
        by_ds[record["ds"]] = {"event_id": event["id"], "published_at": str(event["timestamp"]), **record}
    runs = sorted(by_ds.values(), key=lambda run: run["ds"], reverse=True)
    if method:
        runs = [run for run in runs if method in run["projections"]]
    return runs[:limit]


def _number(value: Any, spec: str = ",") -> str:
    """A figure for the page; a dash when the record does not have it."""
    if value is None or isinstance(value, jinja2.Undefined):
        return Markup("&ndash;")
    try:
        return format(value, spec)
    except (TypeError, ValueError):
        return str(value)


def _quality(method: str, projection: dict[str, Any]) -> str:
    if method == "pca" and projection.get("explained_variance_ratio"):
        shares = [f"{share:.1%}" for share in projection["explained_variance_ratio"][:2]]
        return f"PC1 + PC2: {' + '.join(shares)} of variance"
    if projection.get("trustworthiness") is not None:
        return f"trustworthiness {projection['trustworthiness']:.3f}"
    return ""


PAGES = jinja2.Environment(
    loader=jinja2.FileSystemLoader(os.path.join(os.path.dirname(__file__), "templates")),
    autoescape=True,
    undefined=jinja2.ChainableUndefined,  # a record without a field shows a dash, not an error
    trim_blocks=True,
    lstrip_blocks=True,
)
PAGES.filters.update(num=_number, query=urlencode)
PAGES.globals.update(
    quality=_quality,
    dag_id=DAG_ID,
    maps_asset=MAPS_ASSET,
    publish_task=PUBLISH_TASK,
    map_sandbox=MAP_SANDBOX,
    q=_query,
    model_groups=model_groups,
)


def render_index(runs: list[dict[str, Any]], method: str | None = None) -> str:
    """The overview: one section per date, one PNG per method, each linking to its interactive map."""
    return PAGES.get_template("index.html").render(runs=runs, method=method, methods=METHODS)


def frame_of(run: dict[str, Any], method: str) -> str | None:
    """The saved reference a run's ``method`` map (of the primary model) is in (its folder), or None when that
    night was refitted."""
    reference = ((run.get("projections") or {}).get(method) or {}).get("reference") or {}
    return reference.get("dir") if isinstance(reference, dict) else None


def frame_neighbours(runs: list[dict[str, Any]], run: dict[str, Any], method: str) -> tuple[str | None, str | None]:
    """(the previous, the next) date whose ``method`` map is in the same frame as ``run`'s; None at either end
    or when ``run`` has no reference (then no two nights share axes)."""
    frame = frame_of(run, method)
    if not frame:
        return None, None
    dates = sorted(r["ds"] for r in runs if frame_of(r, method) == frame)
    at = dates.index(run["ds"]) if run["ds"] in dates else -1
    if at < 0:
        return None, None
    return (dates[at - 1] if at > 0 else None), (dates[at + 1] if at + 1 < len(dates) else None)


def render_map(
    run: dict[str, Any],
    method: str,
    model: str | None = None,
    neighbours: tuple[str | None, str | None] = (None, None),
) -> str:
    """One date, method (and model): the interactive map (sandboxed frame) with its figures; with a reference
    (the primary model's maps), links to the previous and next nights in the same frame and the night's drift."""
    projection = projection_of(run, method, model)
    previous, following = neighbours
    return PAGES.get_template("map_page.html").render(
        run=run, method=method, model=model, projection=projection, previous=previous, following=following
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
    return [{"id": row.id, "timestamp": row.timestamp, "extra": row.extra} for row in rows]


async def _runs(method: str | None = None, limit: int = 14) -> list[dict[str, Any]]:
    # The metadata DB session is synchronous: keep it off the event loop.
    return latest_runs(await asyncio.to_thread(load_events), method, limit)


def _check_method(method: str | None) -> None:
    if method is not None and method not in METHODS:
        raise HTTPException(400, f"method must be one of {', '.join(METHODS)}")


router = APIRouter()


@router.get("/", response_class=HTMLResponse)
async def index(
    method: str | None = None,
    ds: str | None = None,
    model: str | None = None,
    limit: int = Query(14, ge=1, le=366),
) -> HTMLResponse:
    _check_method(method or None)
    if ds and method:
        runs = await _runs(None, 10_000)
        match = [run for run in runs if run["ds"] == ds and projection_of(run, method, model)]
        if not match:
            raise HTTPException(404, f"no published {method} map{f' of {model}' if model else ''} for ds={ds}")
        neighbours = (None, None) if model else frame_neighbours(runs, match[0], method)
        return HTMLResponse(render_map(match[0], method, model or None, neighbours))
    return HTMLResponse(render_index(await _runs(method or None, limit), method or None))


@router.get("/api/latest")
async def latest(method: str | None = None, limit: int = Query(14, ge=1, le=366)) -> JSONResponse:
    _check_method(method)
    return JSONResponse(await _runs(method, limit), headers={"Cache-Control": "no-store"})


async def _map_file(event: int, method: str, field: str, model: str | None = None) -> bytes:
    """The bytes of the map file that the publish task's event ``event`` names in ``field`` (of ``model``)."""
    _check_method(method)
    events = await asyncio.to_thread(load_events, event)
    record: RunRecord | dict = (events[0]["extra"] if events else None) or {}
    path = map_path(projection_of(record, method, model), field)
    if path is None:
        raise HTTPException(404, f"event {event} published no {method} {field}")
    try:
        return await asyncio.to_thread(read_bytes, path)
    except FileNotFoundError:
        raise HTTPException(404, f"{path} is gone (partition replaced or deleted)") from None


@router.get("/map.png")
async def map_png(event: int, method: str, model: str | None = None) -> Response:
    return Response(await _map_file(event, method, "map_png", model), media_type="image/png")


@router.get("/map.html")
async def map_html(event: int, method: str, model: str | None = None) -> Response:
    body = await _map_file(event, method, "map_html", model)
    return Response(body, media_type="text/html", headers={"Content-Security-Policy": MAP_CSP})


def report_path(record: dict[str, Any], name: str) -> str | None:
    """The path of the night's morning report file ``name``: in the folder the publish event names, which
    must be that night's ``reports/ds=<ds>`` (only ever these two file names there)."""
    folder = record.get("report_dir")
    if name not in (REPORT_HTML, REPORT_PNG) or not isinstance(folder, str) or not record.get("ds"):
        return None
    if not folder.rstrip("/").endswith(f"/reports/{partition(str(record['ds']))}"):
        return None
    return f"{folder.rstrip('/')}/{name}"


async def _report_file(event: int, name: str) -> bytes:
    events = await asyncio.to_thread(load_events, event)
    path = report_path((events[0]["extra"] if events else None) or {}, name)
    if path is None:
        raise HTTPException(404, f"event {event} names no morning report")
    try:
        return await asyncio.to_thread(read_bytes, path)
    except FileNotFoundError:
        raise HTTPException(404, f"{path} is not there (the report runs after publish, or it failed)") from None


@router.get("/report.html")
async def report_html(event: int) -> Response:
    """The night's morning report: one offline page (inline images), served under the maps' CSP."""
    body = await _report_file(event, REPORT_HTML)
    return Response(body, media_type="text/html", headers={"Content-Security-Policy": MAP_CSP})


@router.get("/report.png")
async def report_png(event: int) -> Response:
    return Response(await _report_file(event, REPORT_PNG), media_type="image/png")


@router.get("/map_mosaic.png")
async def map_mosaic(event: int, method: str, model: str | None = None) -> Response:
    return Response(await _map_file(event, method, "map_mosaic", model), media_type="image/png")


# The similar-images API (its own module): GET/POST /api/similar and /thumb, behind the same access check.
router.include_router(similar.router)


def create_app():
    """The FastAPI app the plugin mounts: the routes behind Airflow's check that the user may read the DAG's runs."""
    from airflow.api_fastapi.auth.managers.models.resource_details import DagAccessEntity
    from airflow.api_fastapi.core_api.security import requires_access_dag
    from fastapi import Depends, FastAPI

    app = FastAPI(
        title="Image embedding maps",
        description="Latest maps published by the image_embeddings DAG.",
        dependencies=[Depends(requires_access_dag("GET", DagAccessEntity.RUN, param_dag_id=DAG_ID))],
    )
    app.include_router(router)
    return app
