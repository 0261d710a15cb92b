"""A RunInference model handler for Keras 3 image feature extractors.

Beam's stock TensorFlow handler imports tensorflow_hub (broken on TF 2.21)
and calls the model eagerly; this one loads the model once per worker
process (RunInference shares it between the process's threads through
``shared.Shared``) and calls a ``tf.function`` compiled once for a
``[None, H, W, 3]`` uint8 input, with ``preprocess_input`` inside the graph.
Keeping uint8 until the graph means 4x less data crosses pipeline steps.
"""

from __future__ import annotations

import logging
from collections.abc import Iterable, Sequence
from typing import Any

import numpy as np
from apache_beam.metrics import Metrics
from apache_beam.ml.inference.base import ModelHandler, PredictionResult

from beam_jobs.contract import JOB_EXTRACT
from beam_jobs.extract_embeddings.models import ResolvedWeights, build_keras_model, get_spec, resolve_attr

LOG = logging.getLogger(__name__)
METRICS_NAMESPACE = JOB_EXTRACT


class LoadedModel:
    """The compiled uint8 -> embedding function (it holds the Keras model) and its model_id."""

    def __init__(self, fn: Any, model_id: str):
        self.fn = fn
        self.model_id = model_id

    def __call__(self, pixels: np.ndarray) -> np.ndarray:
        return self.fn(pixels).numpy()


def compile_embedding_fn(keras_model: Any, preprocess: Any, input_size: tuple[int, int]):
    """uint8 NHWC batch -> float32 embeddings, traced once for any batch size."""
    import tensorflow as tf

    w, h = input_size

    @tf.function(input_signature=[tf.TensorSpec([None, h, w, 3], tf.uint8)], reduce_retracing=True)
    def embed(pixels):
        x = preprocess(tf.cast(pixels, tf.float32))
        return keras_model(x, training=False)

    return embed


def load_embedding_model(model_name: str, weights: ResolvedWeights, model_id: str) -> LoadedModel:
    spec = get_spec(model_name)
    keras_model = build_keras_model(spec, weights)
    fn = compile_embedding_fn(keras_model, resolve_attr(spec.preprocess), spec.input_size)
    # Trace now so the first real batch is not charged for graph building.
    w, h = spec.input_size
    fn(np.zeros((1, h, w, 3), dtype=np.uint8))
    return LoadedModel(fn, model_id)


class KerasEmbeddingModelHandler(ModelHandler[np.ndarray, PredictionResult, LoadedModel]):
    """Examples are (H, W, 3) uint8 arrays; inferences are 1-D float32 embeddings."""

    def __init__(
        self,
        model_name: str,
        weights: ResolvedWeights,
        model_id: str,
        *,
        min_batch_size: int = 1,
        max_batch_size: int = 32,
        intra_op_threads: int = 0,
    ):
        super().__init__(min_batch_size=min_batch_size, max_batch_size=max_batch_size)
        self._model_name = model_name
        self._weights = weights
        self._model_id = model_id
        self._intra_op_threads = intra_op_threads
        self._batch_size = Metrics.distribution(METRICS_NAMESPACE, "batch_size")

    def load_model(self) -> LoadedModel:
        import tensorflow as tf

        if self._intra_op_threads:
            try:
                tf.config.threading.set_intra_op_parallelism_threads(self._intra_op_threads)
            except RuntimeError:
                # TF refuses once its runtime is initialised; the first setting stays.
                LOG.debug("TensorFlow threads already configured")
        LOG.info("loading %s", self._model_id)
        return load_embedding_model(self._model_name, self._weights, self._model_id)

    def run_inference(
        self,
        batch: Sequence[np.ndarray],
        model: LoadedModel,
        inference_args: dict[str, Any] | None = None,
    ) -> Iterable[PredictionResult]:
        self._batch_size.update(len(batch))
        embeddings = model(np.stack(batch))
        # The example is not echoed back: holding the pixels would keep each
        # batch's 150 KB per image alive downstream for nothing.
        return [PredictionResult(None, vec, self._model_id) for vec in embeddings]

    def get_num_bytes(self, batch: Sequence[np.ndarray]) -> int:
        # The default pickles the whole batch just to measure it.
        return int(sum(x.nbytes for x in batch))

    def get_metrics_namespace(self) -> str:
        return METRICS_NAMESPACE


def count_through(name: str):
    """A function that counts each element passing through it (for ``beam.Map``)."""
    counter = Metrics.counter(METRICS_NAMESPACE, name)

    def inc(x):
        counter.inc()
        return x

    return inc
