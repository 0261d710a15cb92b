"""The output layout: partition folders, file names and globs, Parquet columns, and the path helpers."""

from __future__ import annotations

MANIFEST = "manifest.json"
RUN_RECORD = "run.json"
MAP_PNG = "map.png"
MAP_HTML = "map.html"
MAP_MOSAIC = "map_mosaic.png"  # the night's images laid out on a grid by their 2D position
EMBEDDINGS_PREFIX = "embeddings"  # embeddings-00000-of-00004.parquet
FAILURES_PREFIX = "failures"  # failures-00000-of-00001.jsonl
PROJECTION_PREFIX = "projection"  # projection-00000-of-00001.parquet
EMBEDDING_FILES = f"{EMBEDDINGS_PREFIX}-*.parquet"
FAILURE_FILES = f"{FAILURES_PREFIX}-*.jsonl"
PROJECTION_FILES = f"{PROJECTION_PREFIX}-*.parquet"
NPY_DIR = "npy"

# Parquet columns as (name, Arrow type); ``storage.arrow_schema`` turns them into a pyarrow schema.
EMBEDDING_COLUMNS = (
    ("image_uri", "string"),
    ("embedding", "list<float32>"),
    ("model_id", "string"),  # architecture, pooling, input size and the exact weights
    ("content_sha256", "string"),  # of the input file's bytes
    ("width", "int32"),  # of the source image, after EXIF orientation
    ("height", "int32"),
    ("run_id", "string"),
)
PROJECTION_COLUMNS = (
    ("image_uri", "string"),
    ("x", "float32"),
    ("y", "float32"),
    ("method", "string"),
    ("model_id", "string"),
    ("ds", "string"),  # the partition the row came from
    ("run_id", "string"),
)


def join(base: str, *parts: str) -> str:
    """``base/part/...`` for local paths and object-store URIs alike (one slash between)."""
    return "/".join([base.rstrip("/"), *parts])


def partition(ds: str) -> str:
    """The folder name of one night: ``ds=YYYY-MM-DD``."""
    return f"ds={ds}"


def embeddings_dir(output_root: str, ds: str) -> str:
    return join(output_root, "embeddings", partition(ds))


def projections_dir(output_root: str, method: str, ds: str, model: str | None = None) -> str:
    """A night's map of one method: the primary (first) model's where a single-model night puts it, the other
    models' of a several-model night one level down, under ``model=<name>``."""
    if model:
        return join(output_root, "projections", f"model={model}", f"method={method}", partition(ds))
    return join(output_root, "projections", f"method={method}", partition(ds))


def run_record_path(output_root: str, ds: str) -> str:
    return join(output_root, "runs", partition(ds), RUN_RECORD)


# The similarity index of a night (beam_jobs.build_index): <output_root>/index/ds=YYYY-MM-DD/
INDEX_FILE = "index.faiss"  # faiss index over the window's vectors (ids: ann.py)
INDEX_ROWS = "rows.parquet"  # id -> image_uri, ds, content_sha256 of every indexed row
DUPLICATES_FILE = "duplicates.parquet"  # exact (same content_sha256) and near-duplicate pairs
DUPLICATE_COLUMNS = (
    ("kind", "string"),  # "exact" (same bytes) or "near" (cosine >= the threshold)
    ("image_uri", "string"),  # a row of the night
    ("other_uri", "string"),  # a row of the window (the night included)
    ("other_ds", "string"),
    ("score", "float32"),  # cosine similarity (1.0 for exact duplicates)
)


def index_dir(output_root: str, ds: str) -> str:
    return join(output_root, "index", partition(ds))


# A saved reference reducer (beam_jobs.reduce_dim.reference): one 2D frame across nights, and what
# drift is measured against. <output_root>/references/method=<m>/<label>/ with reference.json.
REFERENCE_FILE = "reference.json"
REFERENCE_FORMAT = "image-embeddings-reducer"
REFERENCE_VERSION = 1
# The DAG's reference_policy: refit every night (no reference), a fixed reference fitted once and
# reused, or a rolling one refitted every K nights on the last N nights.
POLICY_REFIT = "refit"
POLICY_FIXED = "fixed"
POLICY_ROLLING = "rolling"
REFERENCE_POLICIES = (POLICY_REFIT, POLICY_FIXED, POLICY_ROLLING)


def references_dir(output_root: str, method: str, label: str) -> str:
    """``label``: ``fixed``, or ``ds=YYYY-MM-DD`` (a rolling reference, by the night it was fitted for)."""
    return join(output_root, "references", f"method={method}", label)


# How the models of a several-model night differ (beam_jobs.compare): <output_root>/comparisons/ds=YYYY-MM-DD/
COMPARISON_JSON = "comparison.json"  # ComparisonReport
COMPARISON_PNG = "comparison.png"  # per pair, the distribution of per-image kNN overlap


def comparisons_dir(output_root: str, ds: str) -> str:
    return join(output_root, "comparisons", partition(ds))


def store_dir(output_root: str) -> str:
    """The Lance store's default place (param ``store_uri`` unset): one table per model_id inside."""
    return join(output_root, "store")
