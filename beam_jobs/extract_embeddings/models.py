"""Weights and model loading for the models declared in ``beam_jobs.contract.MODEL_SPECS``.

Adding another Keras application is one ``ModelSpec`` entry there (the
trigger form's model list and the ``--model`` choices follow from it).

TensorFlow and Keras are imported inside functions only, so importing this
module (for validation in a launcher) stays cheap.
"""

from __future__ import annotations

import hashlib
import importlib
import logging
import os
import socket
import tempfile
from dataclasses import dataclass
from typing import Any

from beam_jobs.config import UsageError
from beam_jobs.contract import MODEL_SPECS, WEIGHTS_IMAGENET, WEIGHTS_RANDOM, WEIGHTS_SUFFIXES, ModelSpec

LOG = logging.getLogger(__name__)

# Keras keeps downloaded application weights here.
KERAS_CACHE_DIR = os.path.join(os.environ.get("KERAS_HOME", os.path.expanduser("~/.keras")), "models")


class WeightsError(UsageError):
    """The requested weights cannot be used; the message says how to fix it."""


def resolve_attr(dotted: str) -> Any:
    """``keras.applications.ResNet50`` -> the object (imports its module on first use)."""
    module, _, name = dotted.rpartition(".")
    return getattr(importlib.import_module(module), name)


def get_spec(name: str) -> ModelSpec:
    try:
        return MODEL_SPECS[name]
    except KeyError:
        raise ValueError(f"unknown --model {name!r}; known models: {', '.join(sorted(MODEL_SPECS))}") from None


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
    if weights.kind == "file":
        tag = f"file-sha256:{weights.sha256[:16]}"
    elif weights.kind == "random":
        tag = f"random-seed{weights.seed}"
    else:
        tag = "imagenet"
    return f"{spec.name}/pool={spec.pooling}/in={w}x{h}/weights={tag}"


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


def build_keras_model(spec: ModelSpec, weights: ResolvedWeights):
    """Build the pooled feature extractor with the resolved weights loaded."""
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
