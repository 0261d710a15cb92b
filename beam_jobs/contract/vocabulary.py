"""The shared vocabulary: job names and metric namespaces, reduction methods, runners, engines, weights
keywords, batch and pixel limits, and the model registry (``MODEL_SPECS``)."""

from __future__ import annotations

import enum
from dataclasses import dataclass
from typing import Any

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
