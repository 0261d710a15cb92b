"""Beam job: embeddings (extraction output) -> 2D coordinates, map.png and map.html.

    python -m beam_jobs.reduce_dim --method pca \\
        --input /data/out/embeddings/ds=2026-11-20 --output /data/out/projections/method=pca/ds=2026-11-20

Stages (each a composite PTransform):

  ReadEmbeddings  Parquet files -> blocks of rows (uris, float32 matrix, partition date), read
                  file by file so memory holds a few blocks, never the data set
  FitPCA          a CombineFn sums count, sum and X^T X (float64) across workers; one
                  eigendecomposition of the covariance gives the components
  FitUMAP         a seeded bounded sample (smallest hash of the URI) of raw rows -> optional PCA
                  to --pca_dims and umap-learn, both fitted on that sample on one worker
  Project         a second read of the files; every block is projected in parallel with the
                  fitted model as a side input
  WriteOutputs    projection-*.parquet, then map.png, map.html and manifest.json in the commit
                  step, which swaps the staged directory in for --output whole

The data are read twice rather than held between the fit and the projection:
that keeps memory flat in the number of rows on every runner.
"""

from __future__ import annotations

import json
import logging
import pickle
import re
import time
from collections.abc import Iterator
from dataclasses import dataclass, field
from typing import Any, NamedTuple

import apache_beam as beam
import numpy as np
from apache_beam.io.filesystems import FileSystems
from apache_beam.metrics import Metrics
from apache_beam.runners.worker.statecache import CacheAware

from beam_jobs import storage
from beam_jobs.config import ConfigError, ReduceConfig, parse_reduce_args
from beam_jobs.maps import MapLabels, render_html, render_png, thumbnail_data_uri
from beam_jobs.reduction import GramStats, PCAModel, Sample, UmapModel, fit_pca, fit_umap, row_priority, trustworthiness
from beam_jobs.runtime import attach_metrics, configure_logging, detached, pipeline_options, refuse_local_detach

LOG = logging.getLogger(__name__)
METRICS_NAMESPACE = "reduce_dim"
EMBEDDING_FILES = "embeddings-*.parquet"
REQUIRED_COLUMNS = ("image_uri", "embedding", "model_id")
NO_PARTITION = "(no ds)"
_PARTITION = re.compile(r"(?:^|/)ds=(\d{4}-\d{2}-\d{2})(?=/|$)")


class InputError(ValueError):
    """The inputs cannot be reduced as asked (nothing there, mixed models or lengths)."""


def projection_schema():
    import pyarrow as pa

    return pa.schema(
        [
            ("image_uri", pa.string()),
            ("x", pa.float32()),
            ("y", pa.float32()),
            ("method", pa.string()),
            ("model_id", pa.string()),
            ("ds", pa.string()),
            ("run_id", pa.string()),
        ]
    )


class Block(NamedTuple):
    """Consecutive rows of one file: the unit that moves through the pipeline."""

    uris: np.ndarray  # (n,) object (str)
    x: np.ndarray  # (n, d) float32
    ds: str | None
    model_id: str


class Projected(NamedTuple):
    uris: np.ndarray
    xy: np.ndarray  # (n, 2) float32
    ds: str | None
    model_id: str
    x: np.ndarray  # kept for the trustworthiness sample; dropped before writing


class _ArrayTupleCoder(beam.coders.Coder):
    """Coder for the NamedTuples of arrays above (one per element type).

    Beam's default for them is pickle, and its size sampling pickles each sampled
    element just to count bytes: for 8192 x 2048 blocks that was ~4.6 s of a 100k-row
    PCA run. Here the size comes from the arrays' lengths without copying anything,
    and the encoding itself is pickle protocol 5 (a single copy of each array).
    """

    element_type: type = tuple

    def encode(self, value) -> bytes:
        return pickle.dumps(tuple(value), protocol=5)

    def decode(self, encoded: bytes):
        return self.element_type(*pickle.loads(encoded))

    def estimate_size(self, value) -> int:
        size = 0
        for part in value:
            if isinstance(part, np.ndarray):
                # Object arrays hold URIs: count their characters, not the pointers.
                size += sum(len(s) + 5 for s in part.flat) if part.dtype == object else part.nbytes
            elif isinstance(part, str):
                size += len(part) + 5
        return size

    def to_type_hint(self):
        return self.element_type


class BlockCoder(_ArrayTupleCoder):
    element_type = Block


class ProjectedCoder(_ArrayTupleCoder):
    element_type = Projected


beam.coders.registry.register_coder(Block, BlockCoder)
beam.coders.registry.register_coder(Projected, ProjectedCoder)


# --------------------------------------------------------------------------- inputs


def partition_of(path: str) -> str | None:
    """The ``ds=YYYY-MM-DD`` partition a file sits in, if any."""
    found = _PARTITION.findall(path)
    return found[-1] if found else None


def file_pattern(spec: str) -> str:
    """A partition directory (or a glob of them) -> the glob of its embeddings files."""
    last = spec.rstrip("/").rsplit("/", 1)[-1]
    if last.endswith(".parquet"):
        return spec
    return storage.join(spec, EMBEDDING_FILES)


def _hidden(path: str) -> bool:
    # Staging and trash directories of running or killed jobs start with a dot.
    return any(part.startswith(".") and part not in (".", "..") for part in path.split("/"))


@dataclass
class InputSummary:
    files: list[str]
    rows_total: int
    rows: int  # rows of the selected model
    model_id: str
    dim: int
    partitions: list[str]
    model_rows: dict[str, int] = field(default_factory=dict)


def _open_parquet(path: str):
    import pyarrow.parquet as pq

    handle = FileSystems.open(path, compression_type="uncompressed")
    return handle, pq.ParquetFile(handle)


def inspect_inputs(cfg: ReduceConfig) -> InputSummary:
    """Check the inputs before any work: reads Parquet footers, the model_id column and one row per file."""
    import pyarrow.compute as pc

    files: list[str] = []
    for spec in cfg.inputs:
        pattern = file_pattern(spec)
        try:
            matched = FileSystems.match([pattern])[0].metadata_list
        except Exception as exc:
            raise InputError(f"--input {spec!r}: cannot list {pattern!r}: {exc}") from exc
        found = sorted(m.path for m in matched if not _hidden(m.path) and m.size_in_bytes > 0)
        if not found:
            raise InputError(f"--input {spec!r} matches no embeddings files ({pattern!r})")
        files.extend(found)
    files = sorted(set(files))
    model_rows: dict[str, int] = {}
    dims: dict[int, list[str]] = {}
    rows_total = 0
    for path in files:
        handle, pf = _open_parquet(path)
        with handle:
            missing = [c for c in REQUIRED_COLUMNS if c not in pf.schema_arrow.names]
            if missing:
                raise InputError(f"{path} is not extraction output: it lacks column(s) {', '.join(missing)}")
            n = pf.metadata.num_rows
            rows_total += n
            if n == 0:
                continue
            for entry in pc.value_counts(pf.read(columns=["model_id"]).column("model_id")).to_pylist():
                model_rows[entry["values"]] = model_rows.get(entry["values"], 0) + entry["counts"]
            first = next(pf.iter_batches(batch_size=1, columns=["embedding"]))
            dims.setdefault(len(first.column(0)[0]), []).append(path)
    if rows_total == 0:
        raise InputError(f"no input rows: {len(files)} embeddings file(s) matched but all are empty")
    if len(dims) > 1:
        detail = "; ".join(f"length {d} in {len(p)} file(s), e.g. {p[0]}" for d, p in sorted(dims.items()))
        raise InputError(f"input rows have different embedding lengths: {detail}")
    listing = ", ".join(f"{m!r} ({n} rows)" for m, n in sorted(model_rows.items()))
    if cfg.model_id is not None:
        if cfg.model_id not in model_rows:
            raise InputError(f"--model_id {cfg.model_id!r} has no rows in the input; it holds {listing}")
        chosen = cfg.model_id
    elif len(model_rows) > 1:
        raise InputError(
            f"input mixes embeddings of {len(model_rows)} models: {listing}. "
            "Their vectors are not comparable; pick one with --model_id"
        )
    else:
        chosen = next(iter(model_rows))
    partitions = sorted({partition_of(f) or NO_PARTITION for f in files})
    return InputSummary(files, rows_total, model_rows[chosen], chosen, next(iter(dims)), partitions, model_rows)


class ReadBlocksFn(beam.DoFn):
    """A Parquet file -> Blocks of ``block_rows`` rows of the selected model."""

    def __init__(self, model_id: str, dim: int, block_rows: int):
        self._model_id = model_id
        self._dim = dim
        self._block_rows = block_rows

    def setup(self):
        ns = METRICS_NAMESPACE
        self._files = Metrics.counter(ns, "files_read")
        self._rows = Metrics.counter(ns, "rows_read")
        self._skipped = Metrics.counter(ns, "rows_skipped_other_model")
        self._block_size = Metrics.distribution(ns, "block_rows")

    def process(self, path: str) -> Iterator[Block]:
        import pyarrow.compute as pc

        ds = partition_of(path)
        handle, pf = _open_parquet(path)
        with handle:
            self._files.inc()
            for batch in pf.iter_batches(batch_size=self._block_rows, columns=list(REQUIRED_COLUMNS)):
                keep = pc.equal(batch.column("model_id"), self._model_id)
                matching = pc.sum(keep).as_py() or 0
                # Filtering copies every column (the embeddings too): only when some rows are skipped.
                kept = batch if matching == batch.num_rows else batch.filter(keep)
                self._skipped.inc(batch.num_rows - kept.num_rows)
                n = kept.num_rows
                if n == 0:
                    continue
                emb = kept.column("embedding")
                if emb.null_count:
                    raise ValueError(f"{path}: {emb.null_count} row(s) have no embedding")
                lengths = pc.min_max(pc.list_value_length(emb)).as_py()
                if lengths["min"] != self._dim or lengths["max"] != self._dim:
                    raise ValueError(
                        f"{path}: rows with embedding lengths {lengths['min']}..{lengths['max']}, "
                        f"expected {self._dim} (every row must have the same length)"
                    )
                x = emb.flatten().to_numpy(zero_copy_only=False).astype(np.float32, copy=False).reshape(n, self._dim)
                uris = kept.column("image_uri").to_numpy(zero_copy_only=False)
                self._rows.inc(n)
                self._block_size.update(n)
                yield Block(uris, x, ds, self._model_id)


class ReadEmbeddings(beam.PTransform):
    def __init__(self, summary: InputSummary, block_rows: int):
        super().__init__()
        self._summary = summary
        self._block_rows = block_rows

    def expand(self, pbegin):
        s = self._summary
        return (
            pbegin
            | "Files" >> beam.Create(s.files)
            # Spread files over workers (Create alone puts them all in one bundle).
            | "SpreadFiles" >> beam.Reshuffle()
            | "ReadBlocks" >> beam.ParDo(ReadBlocksFn(s.model_id, s.dim, self._block_rows)).with_output_types(Block)
        )


# --------------------------------------------------------------------------- fit


class GramStatsFn(beam.CombineFn):
    """Sufficient statistics for PCA; accumulator size is d^2, whatever the number of rows."""

    def create_accumulator(self) -> GramStats:
        return GramStats()

    def add_input(self, acc: GramStats, block: Block) -> GramStats:
        return acc.add_block(block.x)

    def merge_accumulators(self, accs) -> GramStats:
        out = GramStats()
        for acc in accs:
            out = out.merge(acc)
        return out

    def extract_output(self, acc: GramStats) -> GramStats:
        return acc


class SampleFn(beam.CombineFn):
    """Seeded bounded sample: the k rows whose hashed URI is smallest (order- and split-independent)."""

    def __init__(self, k: int, seed: int, columns: tuple[str, ...]):
        self._k = k
        self._seed = seed
        self._columns = columns

    def create_accumulator(self) -> Sample:
        return Sample(self._k)

    def add_input(self, acc: Sample, item) -> Sample:
        if self._k == 0 or len(item.uris) == 0:
            return acc
        n = len(item.uris)
        cols = {
            "image_uri": np.asarray(item.uris, dtype=object),
            "ds": np.full(n, item.ds or NO_PARTITION, dtype=object),
        }
        for name in self._columns:
            cols[name] = getattr(item, name)
        return acc.add(row_priority(item.uris, self._seed), **cols)

    def merge_accumulators(self, accs) -> Sample:
        out = Sample(self._k)
        for acc in accs:
            out = out.merge(acc)
        return out

    def extract_output(self, acc: Sample) -> Sample:
        return acc.sorted()


class FitPCA(beam.PTransform):
    def __init__(self, n_components: int):
        super().__init__()
        self._k = n_components

    def expand(self, blocks):
        return (
            blocks
            | "SufficientStats" >> beam.CombineGlobally(GramStatsFn())
            | "Eigendecomposition" >> beam.Map(fit_pca, self._k)
        )


def fit_umap_on_sample(sample: Sample, cfg: ReduceConfig, use_pca: bool) -> UmapModel:
    """PCA (optional) and UMAP, both fitted on the seeded sample, on one worker.

    The pre-PCA is fitted on the sample, not on all rows: a 50-d subspace is well
    estimated from thousands of rows, and a fit that only sees the sample (in its
    fixed order) is bit-for-bit reproducible, which a sum over workers in arrival
    order is not. UMAP amplifies last-digit differences into a different layout.
    """
    x = sample.columns["x"]
    start = time.perf_counter()
    pca = None
    if use_pca:
        stats = GramStats()
        for i in range(0, len(x), 8192):
            stats.add_block(x[i : i + 8192])
        pca = fit_pca(stats, cfg.pca_dims)
    model = fit_umap(x, pca, cfg.seed, cfg.n_neighbors, cfg.min_dist)
    Metrics.distribution(METRICS_NAMESPACE, "umap_fit_ms").update(int((time.perf_counter() - start) * 1000))
    return model


class FitUMAP(beam.PTransform):
    def __init__(self, cfg: ReduceConfig, use_pca: bool):
        super().__init__()
        self._cfg = cfg
        self._use_pca = use_pca

    def expand(self, blocks):
        cfg = self._cfg
        return (
            blocks
            | "FitSample" >> beam.CombineGlobally(SampleFn(cfg.fit_sample_size, cfg.seed, ("x",)))
            | "Fit" >> beam.Map(fit_umap_on_sample, cfg, self._use_pca)
        )


def describe_model(model: PCAModel | UmapModel) -> dict[str, Any]:
    """The small, JSON-able facts about a fitted model that go in the manifest."""
    if isinstance(model, PCAModel):
        return {
            "explained_variance_ratio": [round(float(v), 6) for v in model.explained_variance_ratio],
            "explained_variance": [round(float(v), 6) for v in model.explained_variance],
            "fit_rows": model.n_rows,
        }
    out: dict[str, Any] = {"fit_rows": model.fit_rows, "n_neighbors": int(model.umap.n_neighbors)}
    if model.pca is not None:
        out["pca_dims"] = int(model.pca.components.shape[0])
        # Of the fit sample's variance (the pre-PCA is fitted on the sample).
        out["pca_explained_variance_ratio_total"] = round(float(model.pca.explained_variance_ratio.sum()), 6)
    return out


# --------------------------------------------------------------------------- project


class SideModel(CacheAware):
    """The fitted model as a side input.

    Beam's worker state cache weighs every cached side input by walking its object
    graph; for a fitted UMAP (nearest-neighbour index, numba structures) that walk
    took minutes. The model is one object per worker and small next to the data,
    so it is weighed by its arrays alone.
    """

    def __init__(self, model: PCAModel | UmapModel):
        self.model = model

    def get_referents_for_cache(self) -> list[Any]:
        return [v for v in vars(self.model).values() if isinstance(v, np.ndarray)]


class ProjectFn(beam.DoFn):
    def __init__(self):
        self._projected = Metrics.counter(METRICS_NAMESPACE, "rows_projected")
        self._ms = Metrics.distribution(METRICS_NAMESPACE, "project_ms_per_block")

    def process(self, block: Block, shared: SideModel) -> Iterator[Projected]:
        start = time.perf_counter()
        xy = np.asarray(shared.model.transform(block.x), np.float32)[:, :2]
        self._ms.update(int((time.perf_counter() - start) * 1000))
        self._projected.inc(len(xy))
        yield Projected(block.uris, xy, block.ds, block.model_id, block.x)


def to_table(item: Projected, method: str, run_id: str):
    import pyarrow as pa

    n = len(item.uris)
    return pa.Table.from_arrays(
        [
            pa.array(item.uris, pa.string()),
            pa.array(item.xy[:, 0], pa.float32()),
            pa.array(item.xy[:, 1], pa.float32()),
            pa.array([method] * n, pa.string()),
            pa.array([item.model_id] * n, pa.string()),
            pa.array([item.ds] * n, pa.string()),
            pa.array([run_id] * n, pa.string()),
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


def sample_points(sample: Sample, n: int) -> list[dict[str, Any]]:
    c = sample.columns
    return [
        {"image_uri": str(c["image_uri"][i]), "x": float(c["xy"][i, 0]), "y": float(c["xy"][i, 1]), "ds": c["ds"][i]}
        for i in range(min(n, len(sample)))
    ]


# --------------------------------------------------------------------------- commit


def axis_labels(method: str, info: dict[str, Any]) -> tuple[str, str]:
    if method == "pca":
        r = info["explained_variance_ratio"] + [0.0, 0.0]
        return f"PC1 ({r[0]:.1%} of variance)", f"PC2 ({r[1]:.1%} of variance)"
    return "UMAP 1", "UMAP 2"


def map_labels(cfg: ReduceConfig, summary: InputSummary, info: dict[str, Any], rows: int, trust) -> MapLabels:
    parts = summary.partitions
    span = parts[0] if len(parts) == 1 else f"{parts[0]} .. {parts[-1]} ({len(parts)} partitions)"
    x_label, y_label = axis_labels(cfg.method, info)
    footer = f"run {cfg.run_id} · seed {cfg.seed}"
    if trust is not None:
        footer += f" · trustworthiness {trust:.3f}"
    if cfg.method == "umap":
        footer += f" · fit on {info['fit_rows']:,} sampled rows"
    return MapLabels(
        title=f"{cfg.method.upper()} map of {rows:,} image embeddings",
        subtitle=f"{span} · model {summary.model_id}",
        x_label=x_label,
        y_label=y_label,
        footer=footer,
    )


class CommitFn(beam.DoFn):
    """Runs once after every shard is final: pictures, manifest, then the directory swap."""

    def __init__(self, cfg: ReduceConfig, summary: InputSummary, staging: str):
        self._cfg = cfg
        self._summary = summary
        self._staging = staging

    def process(self, _, rows, info, coords, sample, points, files):
        cfg, summary, staging = self._cfg, self._summary, self._staging
        if rows != summary.rows:
            raise RuntimeError(
                f"row count mismatch: {summary.rows} input rows of {summary.model_id!r} but {rows} projected; "
                f"output left unpublished in {staging}"
            )
        trust = None
        if cfg.trust_sample_size and len(sample):
            m = min(cfg.trust_sample_size, len(sample))
            trust = trustworthiness(sample.columns["x"][:m], sample.columns["xy"][:m])
        labels = map_labels(cfg, summary, info, rows, trust)
        xy, groups = coords
        png = render_png(xy[:, 0], xy[:, 1], groups, labels)
        with FileSystems.create(storage.join(staging, "map.png"), mime_type="image/png") as handle:
            handle.write(png)
        points = sorted(points, key=lambda p: p["order"])
        shown = len(points)
        note = f"Hover a point for its image. Showing {shown:,} of {rows:,} rows" + (
            f" (seeded sample, seed {cfg.seed})." if shown < rows else "."
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
        storage.write_text(storage.join(staging, "map.html"), page)
        seconds = max(time.time() - cfg.started_at, 1e-9)
        manifest = {
            "job": "reduce_dim",
            "method": cfg.method,
            "run_id": cfg.run_id,
            "inputs": list(cfg.inputs),
            "input_files": len(summary.files),
            "partitions": summary.partitions,
            "output": cfg.output,
            "rows": rows,
            "rows_in_input": summary.rows_total,
            "model_id": summary.model_id,
            "embedding_dim": summary.dim,
            "parameters": parameters(cfg),
            **info,
            "trustworthiness": None if trust is None else round(trust, 4),
            "trustworthiness_rows": min(cfg.trust_sample_size, len(sample)) if trust is not None else 0,
            "html_points": shown,
            "thumbnails": sum(1 for p in points if p["thumbnail"]),
            "files": {
                "projections": sorted(f.rsplit("/", 1)[-1] for f in files),
                "map_png": "map.png",
                "map_html": "map.html",
            },
            "started_at": time.strftime("%Y-%m-%dT%H:%M:%SZ", time.gmtime(cfg.started_at)),
            "finished_at": time.strftime("%Y-%m-%dT%H:%M:%SZ", time.gmtime()),
            "seconds": round(seconds, 3),
            "rows_per_second": round(rows / seconds, 1),
        }
        storage.write_json(storage.join(staging, storage.MANIFEST), manifest)
        storage.replace_directory(staging, cfg.output)
        yield manifest


def parameters(cfg: ReduceConfig) -> dict[str, Any]:
    out: dict[str, Any] = {"seed": cfg.seed, "block_rows": cfg.block_rows, "model_id_filter": cfg.model_id}
    if cfg.method == "umap":
        out.update(
            pca_dims=cfg.pca_dims,
            fit_sample_size=cfg.fit_sample_size,
            n_neighbors=cfg.n_neighbors,
            min_dist=cfg.min_dist,
        )
    out.update(html_points=cfg.html_points, thumbnails=cfg.thumbnails, trust_sample_size=cfg.trust_sample_size)
    return out


class WriteOutputs(beam.PTransform):
    def __init__(self, cfg: ReduceConfig, summary: InputSummary, staging: str):
        super().__init__()
        self._cfg = cfg
        self._summary = summary
        self._staging = staging

    def expand(self, pcolls):
        cfg, staging = self._cfg, self._staging
        projected, info = pcolls["projected"], pcolls["info"]
        p = projected.pipeline
        files = (
            projected
            | "ToArrow" >> beam.Map(to_table, cfg.method, cfg.run_id)
            | "WriteParquet"
            >> beam.io.WriteToParquetBatched(
                storage.join(staging, "projection"),
                projection_schema(),
                file_name_suffix=".parquet",
                num_shards=cfg.num_shards,
            )
        )
        rows = projected | "RowCount" >> beam.Map(lambda b: len(b.uris)) | "SumRows" >> beam.CombineGlobally(sum)
        coords = projected | "AllCoordinates" >> beam.CombineGlobally(CoordsFn())
        k = max(cfg.html_points, cfg.trust_sample_size)
        sample = projected | "MapSample" >> beam.CombineGlobally(SampleFn(k, cfg.seed, ("x", "xy")))
        points = (
            sample
            | "HtmlPoints"
            >> beam.FlatMap(lambda s: [{**pt, "order": i} for i, pt in enumerate(sample_points(s, cfg.html_points))])
            | "SpreadThumbnails" >> beam.Reshuffle()
            | "Thumbnails" >> beam.Map(add_thumbnail, cfg.thumbnail_size, cfg.thumbnails)
        )
        return (
            p
            | "CommitTrigger" >> beam.Create([None])
            | "Commit"
            >> beam.ParDo(
                CommitFn(cfg, self._summary, staging),
                rows=beam.pvalue.AsSingleton(rows),
                info=beam.pvalue.AsSingleton(info),
                coords=beam.pvalue.AsSingleton(coords),
                sample=beam.pvalue.AsSingleton(sample),
                points=beam.pvalue.AsList(points),
                files=beam.pvalue.AsList(files),
            )
        )


# --------------------------------------------------------------------------- wiring


def build_pipeline(p: beam.Pipeline, cfg: ReduceConfig, summary: InputSummary, staging: str):
    """Wire the graph; returns the PCollection holding the committed manifest."""
    fit_blocks = p | "ReadEmbeddings" >> ReadEmbeddings(summary, cfg.block_rows)
    if cfg.method == "pca":
        model = fit_blocks | "FitPCA" >> FitPCA(2)
    else:
        use_pca = 0 < cfg.pca_dims < summary.dim
        model = fit_blocks | "FitUMAP" >> FitUMAP(cfg, use_pca)
    info = model | "DescribeModel" >> beam.Map(describe_model)
    projected = (
        p
        | "ReadEmbeddingsAgain" >> ReadEmbeddings(summary, cfg.block_rows)
        | "Project"
        >> beam.ParDo(
            ProjectFn(), beam.pvalue.AsSingleton(model | "ShareModel" >> beam.Map(SideModel))
        ).with_output_types(Projected)
    )
    return {"projected": projected, "info": info} | "WriteOutputs" >> WriteOutputs(cfg, summary, staging)


def run(argv: list[str] | None = None) -> dict[str, Any]:
    """Parse, check, run and wait; returns the manifest. Raises on bad input before any work."""
    cfg, beam_args = parse_reduce_args(argv)
    # in_memory: the block math already uses every core through BLAS. With multi_threading the
    # 100k-row PCA was slower (17.6 s vs 16.0 s) and some runs' RSS grew to the machine's 24 GB.
    options = pipeline_options(beam_args, running_mode="in_memory")
    refuse_local_detach(options, cfg.detach)
    summary = inspect_inputs(cfg)
    staging = storage.staging_dir_for(cfg.output)
    LOG.info(
        "reduce_dim run_id=%s method=%s rows=%d files=%d model_id=%s partitions=%s output=%s",
        cfg.run_id,
        cfg.method,
        summary.rows,
        len(summary.files),
        summary.model_id,
        summary.partitions,
        cfg.output,
    )
    pipeline = beam.Pipeline(options=options)
    build_pipeline(pipeline, cfg, summary, staging)
    result = pipeline.run()
    if cfg.detach:
        return detached(result, cfg.output)
    result.wait_until_finish()
    manifest, metrics = attach_metrics(result, cfg.output, METRICS_NAMESPACE)
    LOG.info(
        "reduce_dim done: method=%s rows=%d in %.1fs (%.0f rows/s) trustworthiness=%s map=%s",
        cfg.method,
        manifest["rows"],
        manifest["seconds"],
        manifest["rows_per_second"],
        manifest["trustworthiness"],
        storage.join(cfg.output, "map.png"),
    )
    LOG.info("metrics: %s", json.dumps(metrics, sort_keys=True))
    return manifest


def main(argv: list[str] | None = None) -> int:
    try:
        run(argv)
    except (ConfigError, InputError) as exc:
        LOG.error("%s", exc)
        return 2
    return 0


if __name__ == "__main__":
    configure_logging()
    raise SystemExit(main())
