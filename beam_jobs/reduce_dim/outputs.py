"""Stage WriteOutputs (projection Parquet + what the maps need) and the commit step's ``finish_reduction``.

WriteOutputs writes ``projection-*.parquet`` into the staging directory and
gathers, as side inputs for ``runtime.Commit``: the row count, every point's
coordinates (for map.png), a seeded sample with embeddings (trustworthiness),
the explorer's points (every row up to ``html_points``, else a seeded sample)
and their thumbnails (``thumbnails.gather_thumbnails``: parallel reads within a
size budget, a per-read timeout and a total time budget). ``finish_reduction``
runs once in the commit step: it checks the row count, renders map.png,
map.html (the explorer) and map_mosaic.png into the staging directory and
returns the job's manifest fields; Commit writes manifest.json and swaps the
directory in.

With a reference (``--reference`` / ``--save_reference``) the commit step also takes the frame's
manifest blocks and grey layer from ``reference.reference_and_drift`` (the reducer fitted by this run
saved, tonight's seeded sample and moments compared with the reference) and draws the reference's
cloud in grey beneath tonight's points.
"""

from __future__ import annotations

import dataclasses
import os
from dataclasses import dataclass
from typing import Any

import apache_beam as beam
import numpy as np
from apache_beam.metrics import Metrics

from beam_jobs import storage
from beam_jobs.contract import MAP_HTML, MAP_MOSAIC, MAP_PNG, PROJECTION_PREFIX, ReduceManifest
from beam_jobs.partitions import NO_PARTITION, InputSummary, folder_of, read_manifest
from beam_jobs.reduce_dim.explorer import ExplorerPoints, render_explorer
from beam_jobs.reduce_dim.fit import SampleFn
from beam_jobs.reduce_dim.maps import Layer, MapLabels, render_png
from beam_jobs.reduce_dim.mosaic import render_mosaic
from beam_jobs.reduce_dim.records import METRICS_NAMESPACE, DroppedRows, Projected, projection_schema
from beam_jobs.reduce_dim.reduction import Sample, row_priority, trustworthiness
from beam_jobs.reduce_dim.reference import reference_and_drift
from beam_jobs.runtime import AccountingError
from beam_jobs.thumbnails import ThumbnailParams, Thumbnails, gather_thumbnails


@dataclass(frozen=True)
class MapParams:
    """What the maps show: the explorer's points, thumbnails, the mosaic, and the trustworthiness sample.

    Args:
        html_points: points in map.html: every row up to this many, else a seeded sample of this many.
        thumbnail_size: thumbnail pixels in map.html (and the mosaic's source images).
        thumbnails: read the sampled images for thumbnails (False: URIs only, no mosaic).
        trust_sample_size: rows of the sample used for trustworthiness; 0 = skip.
        seed: salts the samples.
        thumbnail_budget_bytes: inline thumbnail bytes in map.html.
        thumbnail_timeout_s / thumbnail_time_budget_s: one read / all reads.
        mosaic_grid: cells per side of map_mosaic.png; 0 = none. mosaic_cell: pixels per cell.
    """

    html_points: int
    thumbnail_size: int
    thumbnails: bool
    trust_sample_size: int
    seed: int
    thumbnail_budget_bytes: int = 8_000_000
    thumbnail_timeout_s: float = 10.0
    thumbnail_time_budget_s: float = 120.0
    mosaic_grid: int = 24
    mosaic_cell: int = 48

    def thumbnail_params(self) -> ThumbnailParams:
        return ThumbnailParams(
            size=self.thumbnail_size,
            budget_bytes=self.thumbnail_budget_bytes,
            min_count=self.mosaic_grid**2,
            read_timeout_s=self.thumbnail_timeout_s,
            time_budget_s=self.thumbnail_time_budget_s,
        )


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


class MapSamplesFn(beam.CombineFn):
    """Two seeded samples from one hash of each URI: (trust sample with embeddings, map sample without).

    The same seed orders both alike, so the trust sample is the map sample's first rows. The map
    sample (up to 200k+ rows) trims lazily (``Sample.slack``).
    """

    def __init__(self, trust_size: int, map_size: int, seed: int):
        self._trust = SampleFn(trust_size, seed, ("x", "xy"))
        self._map_size = map_size
        self._seed = seed

    def create_accumulator(self) -> tuple[Sample, Sample]:
        return self._trust.create_accumulator(), Sample(self._map_size, slack=2.0)

    def add_input(self, acc: tuple[Sample, Sample], item: Projected) -> tuple[Sample, Sample]:
        trust, points = acc
        rows = len(item.uris)
        if rows == 0:
            return acc
        priority = row_priority(item.uris, self._seed)
        uris = np.asarray(item.uris, dtype=object)
        ds = np.full(rows, item.ds or NO_PARTITION, dtype=object)
        if trust.capacity:
            trust.add(priority, image_uri=uris, ds=ds, x=item.x, xy=item.xy)
        if points.capacity:
            points.add(priority, image_uri=uris, ds=ds, xy=item.xy)
        return trust, points

    def merge_accumulators(self, accs) -> tuple[Sample, Sample]:
        trust, points = self.create_accumulator()
        for a, b in accs:
            trust = trust.merge(a)
            points = points.merge(b)
        return trust, points

    def extract_output(self, acc: tuple[Sample, Sample]) -> tuple[Sample, Sample]:
        return acc[0].sorted(), acc[1].sorted()


def sample_thumbnails(sample: Sample, maps: MapParams) -> Thumbnails:
    """Thumbnails for the explorer's points, in sample order (``thumbnails.gather_thumbnails``)."""
    if not maps.thumbnails or not len(sample):
        return Thumbnails()
    got = gather_thumbnails([str(u) for u in sample.columns["image_uri"]], maps.thumbnail_params())
    Metrics.counter(METRICS_NAMESPACE, "thumbnails_ok").inc(len(got.images))
    Metrics.counter(METRICS_NAMESPACE, "thumbnails_missing").inc(sum(got.misses.values()))
    return got


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
        samples = projected | "MapSamples" >> beam.CombineGlobally(
            MapSamplesFn(maps.trust_sample_size, maps.html_points, maps.seed)
        )
        sample = samples | "TrustSample" >> beam.Map(lambda both: both[0])
        points = samples | "MapSample" >> beam.Map(lambda both: both[1])
        thumbs = points | "Thumbnails" >> beam.Map(sample_thumbnails, maps)
        return {
            "rows": beam.pvalue.AsSingleton(rows),
            "coords": beam.pvalue.AsSingleton(coords),
            "sample": beam.pvalue.AsSingleton(sample),
            "points": beam.pvalue.AsSingleton(points),
            "thumbs": beam.pvalue.AsSingleton(thumbs),
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


def extraction_figures(files: list[str]) -> dict[str, int] | None:
    """Inputs and failures summed over the extraction manifests beside the input files; None if any is missing."""
    totals = {"inputs": 0, "failed": 0}
    for folder in sorted({folder_of(f) for f in files}):
        manifest = read_manifest(folder) or {}
        try:
            for key in totals:
                totals[key] += int(manifest[key])
        except (KeyError, TypeError, ValueError):  # a figure for the header, not a reason to fail the map
            return None
    return totals


def header_facts(rows: int, dropped: int, extraction: dict[str, int] | None, shown: int, thumbs: int) -> list:
    facts = [("rows", f"{rows:,}")]
    if extraction is not None:
        facts += [("failed extraction", f"{extraction['failed']:,}"), ("inputs", f"{extraction['inputs']:,}")]
    if dropped:
        facts.append(("dropped (NaN/inf)", f"{dropped:,}"))
    facts += [("points shown", f"{shown:,}"), ("with thumbnails", f"{thumbs:,}")]
    return facts


def explorer_note(shown: int, rows: int, seed: int, thumbs: Thumbnails) -> str:
    note = (
        f"All {rows:,} rows are drawn."
        if shown >= rows
        else f"Showing a seeded sample of {shown:,} of {rows:,} rows (seed {seed}; --html_points sets the size)."
    )
    missed = {reason: n for reason, n in thumbs.misses.items() if n}
    if missed:
        note += " Thumbnails missed: " + ", ".join(f"{n:,} {reason}" for reason, n in missed.items()) + "."
    return note + " Hover for the image; box/lasso select to list URIs; search rings matches; legend hides nights."


def write_maps(
    staging: str,
    labels: MapLabels,
    coords,
    points: Sample,
    thumbs: Thumbnails,
    maps: MapParams,
    *,
    rows: int,
    facts: list,
    reference: Layer | None = None,
    query: Layer | None = None,
) -> int:
    """map.png (every point), map.html (the explorer) and map_mosaic.png into ``staging``; returns mosaic images."""
    xy, groups = coords
    png = render_png(xy[:, 0], xy[:, 1], groups, labels, reference)
    storage.write_bytes(storage.join(staging, MAP_PNG), png)
    c = points.columns
    shown = len(points)
    explorer = ExplorerPoints(
        x=c["xy"][:, 0] if shown else np.empty(0),
        y=c["xy"][:, 1] if shown else np.empty(0),
        groups=list(c.get("ds", [])),
        uris=list(c.get("image_uri", [])),
        thumbnails=[thumbs.data_uri(i) for i in range(shown)],
    )
    note = explorer_note(shown, rows, maps.seed, thumbs)
    page = render_explorer(explorer, labels, facts=facts, note=note, reference=reference, query=query)
    storage.write_text(storage.join(staging, MAP_HTML), page)
    order = sorted(thumbs.images)[: maps.mosaic_grid**2]
    if maps.mosaic_grid < 2 or len(order) < 4:
        return 0
    png, used = render_mosaic(
        c["xy"][order, 0], c["xy"][order, 1], [thumbs.images[i] for i in order], maps.mosaic_grid, maps.mosaic_cell
    )
    storage.write_bytes(storage.join(staging, MAP_MOSAIC), png)
    return used


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
    points: Sample,
    thumbs: Thumbnails,
    files: list[str],
    frame=None,
    model=None,
    reference_sample: Sample | None = None,
    reference_moments=None,
    tonight_sample: Sample | None = None,
    tonight_moments=None,
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
    shown, with_thumbs = len(points), len(thumbs.html)
    facts = header_facts(rows, dropped.count, extraction_figures(summary.files), shown, with_thumbs)
    labels = map_labels(method, run_id, maps.seed, summary, info, rows, trust)
    frame_fields, layer = (
        reference_and_drift(
            frame,
            settings,
            run_id,
            maps.seed,
            model,
            reference_sample,
            reference_moments,
            tonight_sample,
            tonight_moments,
        )
        if frame is not None
        else ({}, None)
    )
    if layer is not None:
        labels = dataclasses.replace(labels, footer=labels.footer + f" · frame: {frame_fields['reference']['dir']}")
    mosaic = write_maps(staging, labels, coords, points, thumbs, maps, rows=rows, facts=facts, reference=layer)
    outputs = {"map_png": MAP_PNG, "map_html": MAP_HTML, **({"map_mosaic": MAP_MOSAIC} if mosaic else {})}
    return {
        **settings,
        "rows": rows,
        "rows_dropped_non_finite": dropped.count,
        "non_finite_examples": list(dropped.examples),
        **info,
        "trustworthiness": None if trust is None else round(trust, 4),
        "trustworthiness_rows": trust_rows,
        "html_points": shown,
        "thumbnails": with_thumbs,
        "thumbnail_misses": dict(thumbs.misses),
        "mosaic_images": mosaic,
        **frame_fields,
        "files": {"projections": sorted(os.path.basename(f) for f in files), **outputs},
        "rows_per_second": round(rows / seconds, 1),
    }  # type: ignore[typeddict-item]  # job, run_id, output and timings come from runtime.Commit
