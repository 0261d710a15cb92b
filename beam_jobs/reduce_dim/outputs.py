"""Stage WriteOutputs (projection Parquet + what the maps need) and the commit step's ``finish_reduction``.

WriteOutputs writes ``projection-*.parquet`` into the staging directory and
gathers, as side inputs for ``runtime.Commit``: the row count, every point's
coordinates (for map.png), a seeded sample (map.html and trustworthiness) and
the sampled points with their thumbnails. ``finish_reduction`` runs once in the
commit step: it checks the row count, renders map.png and map.html into the
staging directory and returns the job's manifest fields; Commit writes
manifest.json and swaps the directory in.

Drift statistics against a reference run (a later issue) belong beside
``sample_trustworthiness``: computed from the same seeded sample, passed to
Commit as one more side input, recorded as one more manifest block.
"""

from __future__ import annotations

import os
from dataclasses import dataclass
from typing import Any

import apache_beam as beam
import numpy as np
from apache_beam.io.filesystems import FileSystems
from apache_beam.metrics import Metrics

from beam_jobs import storage
from beam_jobs.contract import MAP_HTML, MAP_PNG, PROJECTION_PREFIX, ReduceManifest
from beam_jobs.reduce_dim.fit import SampleFn
from beam_jobs.reduce_dim.inputs import InputSummary
from beam_jobs.reduce_dim.maps import MapLabels, render_html, render_png, thumbnail_data_uri
from beam_jobs.reduce_dim.records import METRICS_NAMESPACE, NO_PARTITION, DroppedRows, Projected, projection_schema
from beam_jobs.reduce_dim.reduction import Sample, trustworthiness
from beam_jobs.runtime import AccountingError


@dataclass(frozen=True)
class MapParams:
    """The seeded sample behind map.html and the trustworthiness figure.

    Args:
        html_points: points plotted in map.html.
        thumbnail_size: thumbnail pixels in map.html.
        thumbnails: read the sampled images for thumbnails (False: URIs only).
        trust_sample_size: rows of the sample used for trustworthiness; 0 = skip.
        seed: salts the sample.
    """

    html_points: int
    thumbnail_size: int
    thumbnails: bool
    trust_sample_size: int
    seed: int


def to_table(item: Projected, method: str, run_id: str):
    import pyarrow as pa

    rows = len(item.uris)
    return pa.Table.from_arrays(
        [
            pa.array(item.uris, pa.string()),
            pa.array(item.xy[:, 0], pa.float32()),
            pa.array(item.xy[:, 1], pa.float32()),
            pa.array([method] * rows, pa.string()),
            pa.array([item.model_id] * rows, pa.string()),
            pa.array([item.ds] * rows, pa.string()),
            pa.array([run_id] * rows, pa.string()),
        ],
        schema=projection_schema(),
    )


class CoordsFn(beam.CombineFn):
    """All (x, y, partition) for the PNG: 8 bytes a row plus a label per block."""

    def create_accumulator(self):
        return []

    def add_input(self, acc, item: Projected):
        acc.append((item.ds or NO_PARTITION, item.xy))
        return acc

    def merge_accumulators(self, accs):
        return [part for acc in accs for part in acc]

    def extract_output(self, acc):
        if not acc:
            return np.empty((0, 2), np.float32), np.empty(0, dtype=object)
        xy = np.concatenate([a for _, a in acc])
        groups = np.concatenate([np.full(len(a), ds, dtype=object) for ds, a in acc])
        return xy, groups


def add_thumbnail(point: dict[str, Any], size: int, enabled: bool = True) -> dict[str, Any]:
    if not enabled:
        return {**point, "thumbnail": None}
    try:
        with FileSystems.open(point["image_uri"], compression_type="uncompressed") as handle:
            data = handle.read()
    except Exception:  # noqa: BLE001 - the image may have moved since extraction
        data = b""
    thumb = thumbnail_data_uri(data, size) if data else None
    Metrics.counter(METRICS_NAMESPACE, "thumbnails_ok" if thumb else "thumbnails_missing").inc()
    return {**point, "thumbnail": thumb}


def sample_points(sample: Sample, count: int) -> list[dict[str, Any]]:
    """The first ``count`` rows of the seeded sample as map.html points, numbered in sample order."""
    c = sample.columns
    return [
        {
            "image_uri": str(c["image_uri"][i]),
            "x": float(c["xy"][i, 0]),
            "y": float(c["xy"][i, 1]),
            "ds": c["ds"][i],
            "order": i,
        }
        for i in range(min(count, len(sample)))
    ]


class WriteOutputs(beam.PTransform):
    """Projected blocks -> staged ``projection-*.parquet``; returns the commit step's side inputs."""

    def __init__(self, staging: str, method: str, run_id: str, num_shards: int, maps: MapParams):
        super().__init__()
        self._staging = staging
        self._method = method
        self._run_id = run_id
        self._num_shards = num_shards
        self._maps = maps

    def expand(self, projected):
        maps = self._maps
        files = (
            projected
            | "ToArrow" >> beam.Map(to_table, self._method, self._run_id)
            | "WriteParquet"
            >> beam.io.WriteToParquetBatched(
                storage.join(self._staging, PROJECTION_PREFIX),
                projection_schema(),
                file_name_suffix=".parquet",
                num_shards=self._num_shards,
            )
        )
        rows = projected | "RowCount" >> beam.Map(lambda b: len(b.uris)) | "SumRows" >> beam.CombineGlobally(sum)
        coords = projected | "AllCoordinates" >> beam.CombineGlobally(CoordsFn())
        sample_size = max(maps.html_points, maps.trust_sample_size)
        sample = projected | "MapSample" >> beam.CombineGlobally(SampleFn(sample_size, maps.seed, ("x", "xy")))
        points = (
            sample
            | "HtmlPoints" >> beam.FlatMap(sample_points, maps.html_points)
            | "SpreadThumbnails" >> beam.Reshuffle()
            | "Thumbnails" >> beam.Map(add_thumbnail, maps.thumbnail_size, maps.thumbnails)
        )
        return {
            "rows": beam.pvalue.AsSingleton(rows),
            "coords": beam.pvalue.AsSingleton(coords),
            "sample": beam.pvalue.AsSingleton(sample),
            "points": beam.pvalue.AsList(points),
            "files": beam.pvalue.AsList(files),
        }


# --------------------------------------------------------------------------- commit step


def sample_trustworthiness(sample: Sample, trust_sample_size: int) -> tuple[float | None, int]:
    """(trustworthiness of the 2D layout on the first rows of the seeded sample or None, rows used)."""
    if not trust_sample_size or not len(sample):
        return None, 0
    used = min(trust_sample_size, len(sample))
    trust = trustworthiness(sample.columns["x"][:used], sample.columns["xy"][:used])
    return trust, (used if trust is not None else 0)


def axis_labels(method: str, info: dict[str, Any]) -> tuple[str, str]:
    if method == "pca":
        ratio = info["explained_variance_ratio"] + [0.0, 0.0]
        return f"PC1 ({ratio[0]:.1%} of variance)", f"PC2 ({ratio[1]:.1%} of variance)"
    return "UMAP 1", "UMAP 2"


def map_labels(
    method: str, run_id: str, seed: int, summary: InputSummary, info: dict[str, Any], rows: int, trust: float | None
) -> MapLabels:
    parts = summary.partitions
    span = parts[0] if len(parts) == 1 else f"{parts[0]} .. {parts[-1]} ({len(parts)} partitions)"
    x_label, y_label = axis_labels(method, info)
    footer = f"run {run_id} · seed {seed}"
    if trust is not None:
        footer += f" · trustworthiness {trust:.3f}"
    if method == "umap":
        footer += f" · fit on {info['fit_rows']:,} sampled rows"
    return MapLabels(
        title=f"{method.upper()} map of {rows:,} image embeddings",
        subtitle=f"{span} · model {summary.model_id}",
        x_label=x_label,
        y_label=y_label,
        footer=footer,
    )


def write_maps(staging: str, labels: MapLabels, coords, points: list[dict[str, Any]], rows: int, seed: int) -> None:
    """map.png (every point) and map.html (the sampled ``points``, in sample order) into ``staging``."""
    xy, groups = coords
    storage.write_bytes(storage.join(staging, MAP_PNG), render_png(xy[:, 0], xy[:, 1], groups, labels))
    shown = len(points)
    note = f"Hover a point for its image. Showing {shown:,} of {rows:,} rows" + (
        f" (seeded sample, seed {seed})." if shown < rows else "."
    )
    page = render_html(
        np.array([p["x"] for p in points]),
        np.array([p["y"] for p in points]),
        [p["ds"] for p in points],
        [p["image_uri"] for p in points],
        [p["thumbnail"] for p in points],
        labels,
        note,
    )
    storage.write_text(storage.join(staging, MAP_HTML), page)


def finish_reduction(
    staging: str,
    *,
    seconds: float,
    settings: dict[str, Any],
    summary: InputSummary,
    method: str,
    run_id: str,
    maps: MapParams,
    info: dict[str, Any],
    dropped: DroppedRows,
    rows: int,
    coords: tuple[np.ndarray, np.ndarray],
    sample: Sample,
    points: list[dict[str, Any]],
    files: list[str],
) -> ReduceManifest:
    """The commit step's check, maps and manifest fields.

    Every input row of the model is projected once, or dropped for NaN/inf values:
    ``rows + dropped.count == summary.rows`` exactly.
    """
    if rows + dropped.count != summary.rows:
        raise AccountingError(
            f"row count mismatch: {summary.rows} input rows of {summary.model_id!r} but {rows} projected"
            f" + {dropped.count} dropped for NaN/inf values"
        )
    trust, trust_rows = sample_trustworthiness(sample, maps.trust_sample_size)
    points = sorted(points, key=lambda p: p["order"])
    write_maps(
        staging, map_labels(method, run_id, maps.seed, summary, info, rows, trust), coords, points, rows, maps.seed
    )
    return {
        **settings,
        "rows": rows,
        "rows_dropped_non_finite": dropped.count,
        "non_finite_examples": list(dropped.examples),
        **info,
        "trustworthiness": None if trust is None else round(trust, 4),
        "trustworthiness_rows": trust_rows,
        "html_points": len(points),
        "thumbnails": sum(1 for p in points if p["thumbnail"]),
        "files": {
            "projections": sorted(os.path.basename(f) for f in files),
            "map_png": MAP_PNG,
            "map_html": MAP_HTML,
        },
        "rows_per_second": round(rows / seconds, 1),
    }  # type: ignore[typeddict-item]  # job, run_id, output and timings come from runtime.Commit
