"""Weights and model loading for the models declared in ``beam_jobs.contract.MODEL_SPECS``,
and for image feature-vector SavedModels (``--model savedmodel:PATH``).

Adding another Keras application is one ``ModelSpec`` entry there (the
trigger form's model list and the ``--model`` choices follow from it).
A SavedModel needs no entry: its spec is read from its serving signature.

TensorFlow and Keras are imported inside functions only, so importing this
module (for validation in a launcher) stays cheap.
"""

from __future__ import annotations

import functools
import hashlib
import importlib
import logging
import os
import shutil
import socket
import tempfile
from dataclasses import dataclass
from typing import Any

from beam_jobs.config import UsageError
from beam_jobs.contract import (
    HUB_PREFIX,
    INPUT_RANGES,
    MODEL_SPECS,
    SAVEDMODEL_PREFIX,
    WEIGHTS_IMAGENET,
    WEIGHTS_RANDOM,
    WEIGHTS_SUFFIXES,
    ModelSpec,
)

LOG = logging.getLogger(__name__)

# Keras keeps downloaded application weights here.
KERAS_CACHE_DIR = os.path.join(os.environ.get("KERAS_HOME", os.path.expanduser("~/.keras")), "models")


class WeightsError(UsageError):
    """The requested weights cannot be used; the message says how to fix it."""


def resolve_attr(dotted: str) -> Any:
    """``keras.applications.ResNet50`` -> the object (imports its module on first use)."""
    module, _, name = dotted.rpartition(".")
    return getattr(importlib.import_module(module), name)


class ModelError(UsageError):
    """The --model cannot be used as an image feature extractor; the message says why."""


def get_spec(name: str, input_range: str | None = None) -> ModelSpec:
    """The registry entry, or the spec read from a SavedModel's signature (cached per process)."""
    if name.startswith(SAVEDMODEL_PREFIX):
        return savedmodel_spec(name[len(SAVEDMODEL_PREFIX) :], input_range)
    if name.startswith(HUB_PREFIX):
        return savedmodel_spec(resolve_hub(name[len(HUB_PREFIX) :]), input_range)
    try:
        return MODEL_SPECS[name]
    except KeyError:
        raise ValueError(f"unknown --model {name!r}; known models: {', '.join(sorted(MODEL_SPECS))}") from None


def resolve_hub(handle: str) -> str:
    """A TF Hub / Kaggle Models handle -> a local SavedModel directory, through tensorflow_hub."""
    try:
        import tensorflow_hub as hub
    except ImportError:
        raise ModelError(
            f"--model hub:{handle} needs the tensorflow_hub package of the [hub] extra "
            "(pip install 'image-embeddings-pipeline[hub]'; the lock leaves it out), or download the model as a "
            "SavedModel on a machine with internet and pass --model savedmodel:PATH (local or gs://)"
        ) from None
    if not _internet_reachable("www.kaggle.com"):
        raise ModelError(
            f"--model hub:{handle} cannot be downloaded: this machine has no internet access. Download it "
            "elsewhere and pass --model savedmodel:PATH"
        )
    return hub.resolve(handle)


def local_directory(path: str) -> tuple[str, bool]:
    """A SavedModel directory on this machine: the path itself, or a temporary copy of a remote one."""
    from apache_beam.io.filesystems import FileSystems

    if FileSystems.get_scheme(path) in (None, "file"):
        return path, False
    root = path.rstrip("/")
    local = tempfile.mkdtemp(prefix="savedmodel-")
    for match in FileSystems.match([root + "/**"])[0].metadata_list:
        target = os.path.join(local, os.path.relpath(match.path, root))
        os.makedirs(os.path.dirname(target), exist_ok=True)
        with FileSystems.open(match.path, compression_type="uncompressed") as src, open(target, "wb") as out:
            shutil.copyfileobj(src, out, 1 << 20)
    return local, True


def serving_signature(loaded: Any, where: str) -> Any:
    signatures = dict(loaded.signatures)
    if "serving_default" in signatures:
        return signatures["serving_default"]
    if len(signatures) == 1:
        return next(iter(signatures.values()))
    raise ModelError(f"{where}: no 'serving_default' signature (it has {sorted(signatures) or 'none'})")


def _only(specs: dict[str, Any], what: str, where: str) -> tuple[str, Any]:
    if len(specs) != 1:
        raise ModelError(f"{where}: its serving signature must have one {what}, it has {sorted(specs)}")
    return next(iter(specs.items()))


@functools.lru_cache(maxsize=8)
def savedmodel_spec(path: str, input_range: str | None = None) -> ModelSpec:
    """Read input size, dtype and output length from the serving signature; refuse anything else."""
    import tensorflow as tf

    where = f"--model {SAVEDMODEL_PREFIX}{path}"
    from apache_beam.io.filesystems import FileSystems

    if not FileSystems.exists(path.rstrip("/") + "/saved_model.pb"):
        raise ModelError(f"{where}: no saved_model.pb there (give the directory a SavedModel was exported to)")
    local, is_temp = local_directory(path)
    try:
        signature = serving_signature(tf.saved_model.load(local), where)
        _args, kwargs = signature.structured_input_signature
        _name, spec_in = _only(kwargs, "input", where)
        shape = spec_in.shape.as_list()
        if len(shape) != 4 or shape[3] != 3 or not shape[1] or not shape[2]:
            raise ModelError(
                f"{where}: its input must be a batch of RGB images [batch, height, width, 3] with a fixed "
                f"height and width, it is {shape}"
            )
        _out, spec_out = _only(signature.structured_outputs, "output", where)
        out_shape = spec_out.shape.as_list()
        if len(out_shape) != 2 or not out_shape[1]:
            raise ModelError(f"{where}: its output must be one vector per image [batch, dim], it is {out_shape}")
        checksum = tf.saved_model.experimental.read_fingerprint(local).saved_model_checksum
    finally:
        if is_temp:
            shutil.rmtree(local, ignore_errors=True)
    dtype = spec_in.dtype.name
    if input_range is None:
        input_range = "0-255" if spec_in.dtype.is_integer else "0-1"
    if input_range not in INPUT_RANGES:
        raise ModelError(f"{where}: --input_range must be one of {', '.join(INPUT_RANGES)}")
    return ModelSpec(
        name=f"{SAVEDMODEL_PREFIX}{path}",
        input_size=(shape[2], shape[1]),
        embedding_dim=out_shape[1],
        pooling="signature",
        builder="",
        preprocess="",
        imagenet_file="",
        imagenet_url="",
        source="savedmodel",
        path=path,
        input_dtype=dtype,
        input_range=input_range,
        fingerprint=f"{checksum:016x}",
    )


def _internet_reachable(host: str = "storage.googleapis.com", timeout: float = 3.0) -> bool:
    try:
        with socket.create_connection((host, 443), timeout=timeout):
            return True
    except OSError:
        return False


def file_sha256(path: str) -> str:
    from apache_beam.io.filesystems import FileSystems

    digest = hashlib.sha256()
    with FileSystems.open(path, compression_type="uncompressed") as handle:
        for chunk in iter(lambda: handle.read(1 << 20), b""):
            digest.update(chunk)
    return digest.hexdigest()


@dataclass(frozen=True)
class ResolvedWeights:
    """What the launcher decided about weights; travels to workers in the config."""

    kind: str  # "imagenet" | "random" | "file"
    path: str | None  # for "file"
    sha256: str | None  # for "file"
    seed: int


def resolve_weights(spec: ModelSpec, weights: str, seed: int = 0) -> ResolvedWeights:
    """Check the weights before any work starts; fail at once with a fix in the message."""
    if spec.source == "savedmodel":
        if weights != WEIGHTS_IMAGENET:  # the flag's default: not given
            raise WeightsError(f"--weights {weights!r} does not apply to {spec.name}: its weights are inside it")
        return ResolvedWeights("savedmodel", spec.path, spec.fingerprint, seed)
    if weights == WEIGHTS_RANDOM:
        return ResolvedWeights("random", None, None, seed)
    if weights == WEIGHTS_IMAGENET:
        cached = os.path.join(KERAS_CACHE_DIR, spec.imagenet_file)
        if os.path.exists(cached) or _internet_reachable():
            return ResolvedWeights("imagenet", None, None, seed)
        raise WeightsError(
            f"--weights imagenet needs {spec.imagenet_file}, which is not in the Keras cache "
            f"({cached}) and cannot be downloaded: this machine has no internet access. "
            f"On a machine with internet, download {spec.imagenet_url} and either copy it to "
            f"{cached} or pass its path (local or gs://) as --weights /path/to/{spec.imagenet_file}."
        )
    from apache_beam.io.filesystems import FileSystems

    if not weights.endswith(WEIGHTS_SUFFIXES):
        raise WeightsError(
            f"--weights {weights!r} is not 'imagenet', 'random' or a weights file "
            f"ending in one of {', '.join(WEIGHTS_SUFFIXES)}"
        )
    if not FileSystems.exists(weights):
        raise WeightsError(f"--weights file {weights!r} does not exist")
    return ResolvedWeights("file", weights, file_sha256(weights), seed)


def model_id(spec: ModelSpec, weights: ResolvedWeights) -> str:
    """Names architecture, pooling, input size and the exact weights loaded."""
    w, h = spec.input_size
    if spec.source == "savedmodel":
        # The fingerprint names the graph and the weights together, wherever the directory is copied.
        return f"savedmodel/fingerprint={spec.fingerprint}/in={w}x{h}/range={spec.input_range}"
    if weights.kind == "file":
        tag = f"file-sha256:{weights.sha256[:16]}"
    elif weights.kind == "random":
        tag = f"random-seed{weights.seed}"
    else:
        tag = "imagenet"
    return f"{spec.name}/pool={spec.pooling}/in={w}x{h}/weights={tag}"


@dataclass(frozen=True)
class ModelRun:
    """One model of the pass: its ``--model`` name, spec, resolved weights and the model_id its rows carry."""

    name: str
    spec: ModelSpec
    weights: ResolvedWeights
    model_id: str


def resolve_models(
    names: tuple[str, ...], weights: dict[str, str], input_range: str | None = None, seed: int = 0
) -> list[ModelRun]:
    """Each model's spec and weights, checked before any work; the primary (first) one first.

    Two entries whose vectors would carry one model_id (the same SavedModel under two paths)
    are refused: their rows could not be told apart in the one partition.
    """
    runs = []
    for name in names:
        spec = get_spec(name, input_range)
        resolved = resolve_weights(spec, weights[name], seed)
        runs.append(ModelRun(name, spec, resolved, model_id(spec, resolved)))
    seen: dict[str, str] = {}
    for run in runs:
        if run.model_id in seen:
            raise ModelError(
                f"--model {seen[run.model_id]} and {run.name} are the same model ({run.model_id}): "
                "their rows could not be told apart; give it once"
            )
        seen[run.model_id] = run.name
    return runs


def _local_copy(path: str) -> tuple[str, bool]:
    """h5py needs a local file; copy remote weights to a temp file first."""
    from apache_beam.io.filesystems import FileSystems

    if FileSystems.get_scheme(path) in (None, "file"):
        return path, False
    suffix = next(s for s in WEIGHTS_SUFFIXES if path.endswith(s))
    fd, local = tempfile.mkstemp(suffix=suffix)
    with os.fdopen(fd, "wb") as out, FileSystems.open(path, compression_type="uncompressed") as src:
        for chunk in iter(lambda: src.read(1 << 20), b""):
            out.write(chunk)
    return local, True


class SavedModelExtractor:
    """A SavedModel's serving signature called like a Keras model: float pixels in, vectors out."""

    def __init__(self, spec: ModelSpec):
        import tensorflow as tf

        local, is_temp = local_directory(spec.path)
        try:
            self._loaded = tf.saved_model.load(local)  # keeps its variables alive
        finally:
            if is_temp:
                shutil.rmtree(local, ignore_errors=True)
        self._signature = serving_signature(self._loaded, spec.name)
        ((self._input, tensor_spec),) = self._signature.structured_input_signature[1].items()
        self._dtype = tensor_spec.dtype
        (self._output,) = self._signature.structured_outputs

    def __call__(self, x: Any, training: bool = False) -> Any:
        import tensorflow as tf

        x = tf.cast(tf.round(x), self._dtype) if self._dtype.is_integer else tf.cast(x, self._dtype)
        return tf.cast(self._signature(**{self._input: x})[self._output], tf.float32)


def preprocess_for(spec: ModelSpec):
    """0-255 float pixels -> what the model expects (inside the compiled graph)."""
    if spec.source != "savedmodel":
        return resolve_attr(spec.preprocess)
    return {
        "0-255": lambda x: x,
        "0-1": lambda x: x / 255.0,
        "-1-1": lambda x: x / 127.5 - 1.0,
    }[spec.input_range]


def build_keras_model(spec: ModelSpec, weights: ResolvedWeights):
    """Build the pooled feature extractor with the resolved weights loaded."""
    if spec.source == "savedmodel":
        return SavedModelExtractor(spec)
    import keras

    builder = resolve_attr(spec.builder)
    w, h = spec.input_size
    shape = (h, w, 3)
    if weights.kind == "imagenet":
        return builder(include_top=False, pooling=spec.pooling, weights="imagenet", input_shape=shape)
    if weights.kind == "random":
        keras.utils.set_random_seed(weights.seed)
        return builder(include_top=False, pooling=spec.pooling, weights=None, input_shape=shape)
    local, is_temp = _local_copy(weights.path)
    try:
        if local.endswith(".keras"):
            return keras.models.load_model(local, compile=False)
        model = builder(include_top=False, pooling=spec.pooling, weights=None, input_shape=shape)
        model.load_weights(local)
        return model
    finally:
        if is_temp:
            os.unlink(local)
