"""What the Beam jobs and the Airflow side both rely on, declared once: standard library only.

The DAG, the Airflow plugin (maps page, metrics, run record) and the jobs import
this module. It must stay importable at DAG-parse time without numpy, Pillow,
TensorFlow or Beam (``tests/test_contract.py`` checks that in a fresh interpreter).

It holds:

* the output layout: partition folders, file names and globs;
* the shared vocabulary: reduction methods, models, runners, weights keywords,
  batch and pixel limits, Beam metric namespaces;
* the records that cross the boundary, as ``TypedDict``s: the two job
  manifests (``manifest.json``), a failure record, and the run record
  (``run.json`` and the maps Asset event).
"""

from __future__ import annotations

import enum
from dataclasses import dataclass
from typing import Any, NotRequired, TypedDict

# --------------------------------------------------------------------------- layout

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


# --------------------------------------------------------------------------- vocabulary

JOB_EXTRACT = "extract_embeddings"
JOB_REDUCE = "reduce_dim"
# Beam Metrics namespaces: the job's own name (Airflow reads these back from Dataflow).
JOB_INDEX = "build_index"
JOB_COMPARE = "compare"
METRIC_NAMESPACES = (JOB_EXTRACT, JOB_REDUCE, JOB_INDEX)

METHODS = ("pca", "umap")
DEFAULT_RUNNER = "FnApiRunner"  # local, in-process (Beam's DirectRunner would first try to download Prism)
DATAFLOW_RUNNER = "DataflowRunner"  # needs gs:// paths and a project, region and temp_location
RUNNERS = (DEFAULT_RUNNER, DATAFLOW_RUNNER)
# How a Dataflow worker VM runs the jobs (README, "Performance": threads vs processes). One SDK
# process per VM, so one model copy whose engine uses every vCPU, instead of one process per vCPU
# each running an all-core engine; a few harness threads so that some decode while one infers.
DATAFLOW_WORKER_OPTIONS: dict[str, Any] = {
    "experiments": "no_use_multiple_sdk_containers",
    "number_of_worker_harness_threads": 4,
}
# Dataflow's Flexible Resource Scheduling (Beam's --flexrs_goal); unset (None) leaves it off. COST_OPTIMIZED runs
# on discounted, preemptible-backed capacity and may sit JOB_STATE_QUEUED for up to 6 hours first.
FLEXRS_GOALS = ("COST_OPTIMIZED", "SPEED_OPTIMIZED")
# When the night's input counts as complete (the DAG's wait_for_input): "settled" once the matching
# files' count and sizes have not changed for input_settle_minutes, "marker" once a marker object
# (input_marker, e.g. _SUCCESS) is beside them, "any" as soon as one file matches.
INPUT_READY_RULES = ("settled", "marker", "any")
DEFAULT_INPUT_READY = "settled"
DEFAULT_SETTLE_MINUTES = 10
DEFAULT_INPUT_MARKER = "_SUCCESS"
OUTPUT_FORMATS = ("parquet", "npy")

WEIGHTS_IMAGENET = "imagenet"
WEIGHTS_RANDOM = "random"
WEIGHTS_SUFFIXES = (".weights.h5", ".h5", ".keras")

# Inference engines for the same graph (beam_jobs.extract_embeddings.engines); "auto" picks, on each
# worker, the fastest that passes the accuracy guard there.
ENGINE_AUTO = "auto"
ENGINE_TF = "tf"
ENGINE_OPENVINO = "openvino"
ENGINES = (ENGINE_AUTO, ENGINE_TF, ENGINE_OPENVINO)
DEFAULT_ENGINE = ENGINE_AUTO
PRECISION_AUTO = "auto"  # bf16 where the CPU computes it natively, f32 otherwise
PRECISION_F32 = "f32"
PRECISION_BF16 = "bf16"
PRECISIONS = (PRECISION_AUTO, PRECISION_F32, PRECISION_BF16)
# Vectors from any engine/precision keep the model_id only if every probe vector's cosine to
# TensorFlow's f32 one reaches this: then they are interchangeable in one index or map.
GUARD_MIN_COSINE = 0.999

DEFAULT_BATCH_SIZE = 32
MAX_BATCH_SIZE = 1024
# Pillow's own decompression-bomb limit (~89.5 MP); the extraction job refuses rather than warns.
DEFAULT_MAX_PIXELS = 89_478_485
# 512 MiB: the largest image --max_pixels admits, stored as an uncompressed 16-bit RGB TIFF
# (89.5 MP x 6 bytes), still fits. Larger files are refused before they are read.
DEFAULT_MAX_BYTES = 512 * 1024 * 1024
# An object-store read that has not completed by then fails that input (read/timeout).
DEFAULT_READ_TIMEOUT_S = 300.0


class ResizeMode(enum.StrEnum):
    """How an image becomes the model's square input (see ``beam_jobs.extract_embeddings.images``)."""

    CENTER_CROP = "center_crop"
    SQUASH = "squash"


@dataclass(frozen=True)
class ModelSpec:
    """A model the extraction job can run, described without importing Keras.

    Either a registry entry (a Keras application, ``source="keras"``) or an image feature-vector
    SavedModel given as ``--model savedmodel:PATH`` (``source="savedmodel"``), whose input size,
    dtype and output length are read from its serving signature at launch.

    Args:
        name: the ``--model`` value.
        input_size: (width, height) the model takes.
        embedding_dim: length of the pooled vector.
        pooling: Keras ``pooling=`` argument ("avg" or "max").
        builder: dotted path of the Keras application constructor.
        preprocess: dotted path of its ``preprocess_input``.
        imagenet_file: what ``keras.utils.get_file`` caches for ``weights="imagenet"``.
        imagenet_url: where Keras downloads that file from.
        source: "keras" or "savedmodel".
        path: savedmodel: its directory (local or gs://).
        input_dtype: savedmodel: the signature's input dtype (``uint8``, ``float32``).
        input_range: savedmodel: the pixel values it expects (one of ``INPUT_RANGES``).
        fingerprint: savedmodel: its ``saved_model_checksum`` (part of the model_id).
    """

    name: str
    input_size: tuple[int, int]
    embedding_dim: int
    pooling: str
    builder: str
    preprocess: str
    imagenet_file: str
    imagenet_url: str
    source: str = "keras"
    path: str = ""
    input_dtype: str = "float32"
    input_range: str = ""
    fingerprint: str = ""


# --model savedmodel:PATH (an exported image feature-vector SavedModel, local or gs://) and
# --model hub:HANDLE (TF Hub / Kaggle Models, resolved through tensorflow_hub when installed).
SAVEDMODEL_PREFIX = "savedmodel:"
HUB_PREFIX = "hub:"
# Pixel values a SavedModel expects; the default follows its input dtype (integers: 0-255, floats: 0-1,
# TF Hub's convention for image feature vectors).
INPUT_RANGES = ("0-1", "0-255", "-1-1")


MODEL_SPECS: dict[str, ModelSpec] = {
    spec.name: spec
    for spec in (
        ModelSpec(
            name="resnet50",
            input_size=(224, 224),
            embedding_dim=2048,
            pooling="avg",
            builder="keras.applications.ResNet50",
            preprocess="keras.applications.resnet50.preprocess_input",
            imagenet_file="resnet50_weights_tf_dim_ordering_tf_kernels_notop.h5",
            imagenet_url=(
                "https://storage.googleapis.com/tensorflow/keras-applications/resnet/"
                "resnet50_weights_tf_dim_ordering_tf_kernels_notop.h5"
            ),
        ),
        # The three below normalise inside the Keras model (include_preprocessing=True, their
        # preprocess_input is the identity): the graph still takes 0-255 pixels.
        ModelSpec(
            name="mobilenet_v3_large",  # the cheap one: ~0.22 G multiply-adds an image
            input_size=(224, 224),
            embedding_dim=960,
            pooling="avg",
            builder="keras.applications.MobileNetV3Large",
            preprocess="keras.applications.mobilenet_v3.preprocess_input",
            imagenet_file="weights_mobilenet_v3_large_224_1.0_float_no_top_v2.h5",
            imagenet_url=(
                "https://storage.googleapis.com/tensorflow/keras-applications/mobilenet_v3/"
                "weights_mobilenet_v3_large_224_1.0_float_no_top_v2.h5"
            ),
        ),
        ModelSpec(
            name="efficientnetv2_s",  # the accurate one: ~8.8 G multiply-adds at 384x384
            input_size=(384, 384),
            embedding_dim=1280,
            pooling="avg",
            builder="keras.applications.EfficientNetV2S",
            preprocess="keras.applications.efficientnet_v2.preprocess_input",
            imagenet_file="efficientnetv2-s_notop.h5",
            imagenet_url=(
                "https://storage.googleapis.com/tensorflow/keras-applications/efficientnet_v2/efficientnetv2-s_notop.h5"
            ),
        ),
        ModelSpec(
            name="convnext_tiny",  # a modern CNN at ResNet50's cost: ~4.5 G multiply-adds
            input_size=(224, 224),
            embedding_dim=768,
            pooling="avg",
            builder="keras.applications.ConvNeXtTiny",
            preprocess="keras.applications.convnext.preprocess_input",
            imagenet_file="convnext_tiny_notop.h5",
            imagenet_url="https://storage.googleapis.com/tensorflow/keras-applications/convnext/convnext_tiny_notop.h5",
        ),
    )
}
MODELS = tuple(MODEL_SPECS)
# For --model's help and the trigger form: "resnet50 (2048-d, 224x224), ..."
MODEL_CHOICES_TEXT = ", ".join(
    f"{s.name} ({s.embedding_dim}-d, {s.input_size[0]}x{s.input_size[1]})" for s in MODEL_SPECS.values()
)
DEFAULT_MODEL = "resnet50"


# --------------------------------------------------------------------------- records


class FailureRecord(TypedDict):
    """One line of ``failures-*.jsonl``: an input that did not become an embedding.

    Args:
        image_uri: the input as listed.
        stage: where it failed: ``read``, ``decode`` or ``inference``.
        error: a short stable reason (``not_found``, ``not_an_image``, ...), also a metric name suffix.
        message: the detail, for a person.
        run_id: the run that tried.
    """

    image_uri: str
    stage: str
    error: str
    message: str
    run_id: str


class OutputFiles(TypedDict, total=False):
    embeddings: list[str]
    failures: list[str]
    projections: list[str]
    map_png: str
    map_html: str
    map_mosaic: str


class ModelFigures(TypedDict):
    """One model's entry in an extraction manifest's ``models`` (keyed by its ``--model`` name).

    Args:
        model_id: what its rows carry; dim: its vectors' length; input_size: [width, height].
        weights: the ``--weights`` value it ran with.
        embedded, failed: ``embedded + failed == inputs`` for each model; a read or decode failure
            counts against every model, an inference failure against its own.
        failures_by_reason: ``"<stage>/<error>" -> count``, for this model.
        images_per_second: its rows over the pass's wall time (the models share the pass).
        engines: the engines that ran it (``engines`` entries whose ``model`` is this one).
    """

    model_id: str
    dim: int
    input_size: list[int]
    weights: str
    embedded: int
    failed: int
    failures_by_reason: dict[str, int]
    images_per_second: float
    engines: list[dict[str, Any]]


class ExtractManifest(TypedDict):
    """``manifest.json`` of an embeddings partition; ``inputs == embedded + failed`` always holds.

    Args:
        inputs: distinct input URIs; duplicate_inputs: listed more than once (counted once).
        failures_by_reason: ``"<stage>/<error>" -> count``.
        model_id: names architecture, pooling, input size and the exact weights.
        engine, precision: what was asked (``auto`` or a forced value).
        engines: what ran, one entry per distinct worker set-up: engine, precision, the accuracy
            guard's min cosine, the CPU features that decided, and the fallbacks taken.
        reused, computed: of the embedded rows, those whose vector was reused (``--skip_known``: the same bytes
            embedded with the same model_id in an earlier partition, listed in known_partitions, or under
            another URI this night) and those the model computed (embedded = reused + computed).
            NotRequired: older manifests lack them.
        metrics: the pipeline's Beam counters, added by the launcher once the job is done
            (absent with ``--detach``: then the Airflow sensor reads them from Dataflow).
        models: each model of the pass (``--model a,b``), by name. The top-level model, model_id,
            weights, embedding_dim, embedded, failed, failures_by_reason and images_per_second are
            the primary (first) model's, so single-model readers keep working. Absent in manifests
            written before several models were possible.
    """

    job: str
    run_id: str
    input: str
    output: str
    inputs: int
    duplicate_inputs: int
    embedded: int
    reused: NotRequired[int]
    computed: NotRequired[int]
    failed: int
    failures_by_reason: dict[str, int]
    skip_known: NotRequired[bool]
    known_partitions: NotRequired[list[str]]
    model: str
    model_id: str
    weights: str
    embedding_dim: int
    batch_size: int
    resize_mode: str
    output_format: str
    engine: str
    precision: str
    engines: list[dict[str, Any]]
    npy_files: int
    files: OutputFiles
    started_at: str
    finished_at: str
    seconds: float
    images_per_second: float
    models: NotRequired[dict[str, ModelFigures]]
    metrics: NotRequired[dict[str, Any]]


class ReduceManifest(TypedDict):
    """``manifest.json`` of a projections partition.

    Args:
        rows: rows projected (all rows of ``model_id`` in the inputs, less those dropped); rows_in_input: of any
            model.
        rows_dropped_non_finite: rows of ``model_id`` left out of fit and projection because their embedding
            holds a NaN or an infinity (rows + rows_dropped_non_finite = that model's input rows);
            non_finite_examples: up to 5 of their URIs (the smallest, sorted). Written by every run since
            they were added (0 and [] when none); NotRequired because older manifests lack them.
        parameters: the method's settings as run.
        explained_variance_ratio / explained_variance: PCA only.
        fit_rows: rows the reducer was fitted on (all for PCA, the seeded sample for UMAP).
        trustworthiness: neighbourhood preservation on a seeded sample (None when skipped).
        html_points: points in map.html; thumbnails: of them with an inline thumbnail;
            thumbnail_misses: reads that gave none, by reason (``unreadable``, ``timeout``, ``time_budget``);
            mosaic_images: images in map_mosaic.png (0 when none was drawn).
        reference: with --reference / --save_reference, the saved reducer the coordinates are in (dir, mode
            "loaded" or "fitted", version, method, model_id, partitions fitted on, seed, fit rows, run id).
        drift: with a reference, tonight against it (``reduce_dim.drift.drift_stats``): mean_shift(_relative),
            mmd2 and mmd_p_value, novelty_rate and its threshold, the rows compared.
    """

    job: str
    method: str
    run_id: str
    inputs: list[str]
    input_files: int
    partitions: list[str]
    output: str
    rows: int
    rows_in_input: int
    rows_dropped_non_finite: NotRequired[int]
    non_finite_examples: NotRequired[list[str]]
    model_id: str
    embedding_dim: int
    parameters: dict[str, Any]
    fit_rows: int
    explained_variance_ratio: NotRequired[list[float]]
    explained_variance: NotRequired[list[float]]
    n_neighbors: NotRequired[int]
    pca_dims: NotRequired[int]
    pca_explained_variance_ratio_total: NotRequired[float]
    trustworthiness: float | None
    trustworthiness_rows: int
    html_points: int
    thumbnails: int
    thumbnail_misses: NotRequired[dict[str, int]]
    mosaic_images: NotRequired[int]
    reference: NotRequired[dict[str, Any]]
    drift: NotRequired[dict[str, Any]]
    files: OutputFiles
    started_at: str
    finished_at: str
    seconds: float
    rows_per_second: float
    metrics: NotRequired[dict[str, Any]]


class IndexManifest(TypedDict):
    """``manifest.json`` of an index partition (``beam_jobs.build_index``).

    Args:
        library: e.g. "faiss-cpu 1.15.1"; parameters: kind (flat | ivf), dim, nlist, nprobe, train_rows, storage.
        rows: rows in the index (the whole window); partitions: the nights it holds;
            partitions_read: the nights this run read (only the new ones when it extended an earlier index).
        mode: "rebuilt" or "extended" (then extended_from names the earlier index partition).
        recall_at_10: the index's top 10 against exact search for ``recall_sample`` rows of the nights read,
            excluding the query row itself (None when skipped).
        exact_duplicate_rows: rows of the nights read whose content_sha256 another row of the window shares;
            near_duplicate_pairs: pairs at cosine >= duplicate_threshold (exact duplicates not repeated).
    """

    job: str
    run_id: str
    output: str
    library: str
    parameters: dict[str, Any]
    model_id: str
    embedding_dim: int
    rows: int
    window_days: int
    partitions: list[str]
    partitions_read: list[str]
    mode: str
    extended_from: str | None
    rows_read: int
    rows_dropped: dict[str, int]
    build_seconds: float
    recall_at_10: float | None
    recall_sample: int
    duplicate_threshold: float
    exact_duplicate_rows: int
    exact_duplicate_groups: int
    near_duplicate_pairs: int
    files: dict[str, str]
    started_at: str
    finished_at: str
    seconds: float
    metrics: NotRequired[dict[str, Any]]


class KnnOverlap(TypedDict):
    """Per-image share of the k nearest neighbours two models agree on: mean, quantiles, and
    ``histogram[i]`` = images sharing exactly i of their k neighbours."""

    mean: float
    p10: float
    p50: float
    p90: float
    histogram: list[int]


class PairComparison(TypedDict):
    """Two models on the same images (``beam_jobs.compare``); every figure is 1.0 for a rotated copy.

    Args:
        models: the two model names (``--model`` values) and model_ids: theirs.
        images: common images the figures were computed on (the seeded sample); k: neighbours per image.
        knn_overlap: neighbours both agree on (cosine, the image itself excluded, within the sample).
        distance_spearman: Spearman correlation of the two models' cosine distances over seeded pairs.
        linear_cka: linear centred kernel alignment of the two feature matrices.
    """

    models: list[str]
    model_ids: list[str]
    images: int
    k: int
    knn_overlap: KnnOverlap
    distance_spearman: float
    linear_cka: float


class ComparisonReport(TypedDict):
    """``comparison.json``: every pair of the partition's models.

    Args:
        common_images: images every compared model embedded (by image_uri); sample_size, pairs, seed: as run.
        images_by_model: model_id -> rows it has in the input.
    """

    job: str
    run_id: str
    inputs: list[str]
    output: str
    model_ids: list[str]
    images_by_model: dict[str, int]
    common_images: int
    sample_size: int
    pairs: int
    seed: int
    comparisons: list[PairComparison]
    files: dict[str, str]
    started_at: str
    finished_at: str
    seconds: float


class IndexEntry(TypedDict):
    """The run record's index figures (``beam_jobs.nightly.record.index_entry``); ``partitions``: the nights the
    index holds (in a backfill, the nights a sequential run's index would hold)."""

    dir: str
    rows: int
    mode: str
    recall_at_10: float | None
    build_seconds: float
    exact_duplicate_rows: int
    near_duplicate_pairs: int
    partitions: list[str]


class ExtractionSummary(TypedDict):
    """What the DAG's ``validate_extraction`` task keeps of an extraction manifest."""

    inputs: int
    embedded: int
    failed: int
    failure_rate: float
    failures_by_reason: dict[str, int]
    images_per_second: float | None
    seconds: float | None
    model_id: str | None
    engines: list[dict[str, Any]]
    embeddings_dir: str
    models: dict[str, ModelSummary]


class ModelSummary(TypedDict):
    """One model of the night, as ``validate_extraction`` keeps it (every model's failure rate is checked)."""

    model_id: str
    embedded: int
    failed: int
    failure_rate: float
    images_per_second: float | None


class ModelEntry(TypedDict):
    """The run record's figures of one model, with its maps (``projections``: method -> entry)."""

    model_id: str
    embedded: int
    failed: int
    images_per_second: float | None
    projections: dict[str, ProjectionEntry]


class ComparisonEntry(TypedDict):
    """The run record's model comparison: where it is, and per pair the three figures."""

    dir: str
    comparison_json: str
    comparison_png: str
    pairs: list[dict[str, Any]]


class EmbeddingsEntry(TypedDict):
    """The run record's extraction figures; ``engines`` as ``"openvino f32"`` (see the manifest for detail)."""

    dir: str
    inputs: int
    embedded: int
    failed: int
    images_per_second: float | None
    seconds: float | None
    engines: list[str]


class ProjectionEntry(TypedDict):
    dir: str
    rows: int
    seconds: float
    map_png: str
    map_html: str
    map_mosaic: NotRequired[str]
    reference: NotRequired[dict[str, Any]]
    drift: NotRequired[dict[str, Any]]
    explained_variance_ratio: NotRequired[list[float]]
    trustworthiness: NotRequired[float]


class InputReady(TypedDict):
    """What let the run start (``wait_for_input``'s result, the run record's ``input_ready``).

    Args:
        rule: ``settled``, ``marker`` or ``any``; files, bytes: what matched when it fired.
        newest_change: epoch seconds of the latest change seen (a file, or a folder's entries);
        marker: the marker's path (rule ``marker``); reason: the sensor's words for why it fired.
    """

    rule: str
    files: int
    bytes: int
    newest_change: float | None
    marker: str | None
    reason: str


class RunRecord(TypedDict):
    """``runs/ds=YYYY-MM-DD/run.json``, also the ``extra`` of the maps Asset event.

    Args:
        model_id, embeddings, projections: the primary (first) model's, as a single-model night's.
        projections: one entry per method run, with the paths of its maps.
        models: every model of the night by name, with its figures and maps (the maps page groups by it).
        comparison: the models compared pairwise (nights with two or more models).
        dataflow_jobs: Beam task id -> Dataflow job id, state and metrics (Dataflow runs only).
        input_ready: which rule let the run start, and the files it saw.
        cost: per job the resources used (Dataflow's billing metrics, or a local job's CPU seconds and
            peak memory) and a USD estimate; totals and per 1,000 embedded images (beam_jobs.cost.cost_summary).
    """

    ds: str
    run_id: str
    runner: str
    input: str
    model_id: str | None
    embeddings: EmbeddingsEntry
    projections: dict[str, ProjectionEntry]
    models: NotRequired[dict[str, ModelEntry]]
    comparison: NotRequired[ComparisonEntry]
    dataflow_jobs: NotRequired[dict[str, dict[str, Any]]]
    index: NotRequired[IndexEntry]
    input_ready: NotRequired[InputReady]
    cost: NotRequired[dict[str, Any]]


# =========================================================================== report (issue 32)
# The morning report (beam_jobs.report): what changed tonight, in pictures. <output_root>/reports/ds=YYYY-MM-DD/
# holds the three files below, replaced whole on every run. This block is the report's only part of the contract.

JOB_REPORT = "report"
REPORT_HTML = "report.html"  # one offline page: inline images (data: URIs) and styles only, no script, no network
REPORT_PNG = "report.png"  # one-image summary (numbers and the most novel thumbnails) for chat alerts
REPORT_JSON = "report.json"  # ReportJson: the same facts as data
# The report's sections, in page order (ReportJson.sections is keyed by these).
REPORT_SECTIONS = ("numbers", "new_tonight", "drift", "clusters", "duplicates", "models", "links")


def reports_dir(output_root: str, ds: str) -> str:
    return join(output_root, "reports", partition(ds))


def store_dir(output_root: str) -> str:
    """The Lance store's default place (param ``store_uri`` unset): one table per model_id inside."""
    return join(output_root, "store")


class ReportNovelImage(TypedDict):
    """One of ``new_tonight``: a row of the night and its cosine distance (1 - cosine similarity) to the nearest
    row of the window's seeded sample; ``nearest_uri``/``nearest_ds``: that row."""

    image_uri: str
    score: float
    nearest_uri: NotRequired[str]
    nearest_ds: NotRequired[str]


class ReportCluster(TypedDict):
    """One cluster of the window (k-means, ``ReportJson.clustering``): its share of tonight's rows and of the
    window's sample, ``change`` = share_tonight - share_window, and up to 6 of its most typical images of tonight."""

    cluster: int
    share_tonight: float
    share_window: float
    change: float
    rows_tonight: int
    examples: list[str]


class ReportFailureReason(TypedDict):
    """Failures of one ``<stage>/<error>`` and up to 3 of their URIs."""

    reason: str
    count: int
    examples: list[str]


class ReportDuplicateGroup(TypedDict):
    """Images of the night that are one image: ``exact`` (same bytes) or ``near`` (cosine >= the index's
    threshold, joined through shared members); ``score``: the lowest pair score joining the group."""

    kind: str
    size: int
    image_uris: list[str]
    score: float


class ReportFigure(TypedDict):
    """A figure of ``numbers``: tonight's value beside the median of the earlier nights that have it
    (``nights`` of them, up to the history's length), with those values for the trend (oldest first)."""

    name: str
    label: str
    value: float | None
    median: float | None
    nights: int
    history: list[list[Any]]  # [ds, value] pairs


class ReportJson(TypedDict):
    """``report.json``.

    Args:
        sections: each of REPORT_SECTIONS -> None when it has content, else the one line saying why it is empty.
        window_nights: the earlier nights of ``model_id`` within ``window_days`` before ``ds`` that were read.
        numbers, failures: tonight in numbers and failures by reason (manifest, failures files, run records).
        new_tonight: the most novel rows first; novelty: how (method, dims, sample sizes), the rate, its threshold,
            its usual level and band (each earlier night against the others), and the measured error of the
            reduced search against exact search on the same sample (``check``).
        clusters: the biggest movers first; clustering: k, the space, the sample it was fitted on.
        duplicates: ``exact`` and ``near`` groups, largest first; drift: the night's projection figures against
            its saved reference; models: the comparison's headline figures per pair; links: name -> path.
        thumbnails: how many were shown, misses by reason, seconds; html_bytes: the page's size.
    """

    job: str
    run_id: str
    ds: str
    model_id: str | None
    window_days: int
    window_nights: list[str]
    output: str
    sections: dict[str, str | None]
    numbers: list[ReportFigure]
    failures: list[ReportFailureReason]
    new_tonight: list[ReportNovelImage]
    novelty: dict[str, Any]
    clusters: list[ReportCluster]
    clustering: dict[str, Any]
    duplicates: dict[str, list[ReportDuplicateGroup]]
    drift: dict[str, Any]
    models: list[dict[str, Any]]
    links: dict[str, str]
    thumbnails: dict[str, Any]
    html_bytes: int
    files: dict[str, str]
    started_at: str
    finished_at: str
    seconds: float
