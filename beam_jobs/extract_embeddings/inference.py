"""A RunInference model handler for Keras 3 image feature extractors, on a choice of engines.

Beam's stock TensorFlow handler imports tensorflow_hub (broken on TF 2.21)
and calls the model eagerly; this one loads the model once per worker
process (RunInference shares it between the process's threads through
``shared.Shared``) as a ``tf.function`` compiled once for a ``[None, H, W, 3]``
uint8 input, with ``preprocess_input`` inside the graph, and hands that graph
to the engine that will run it (``engines.load_engine``: TensorFlow, or
OpenVINO converted from the same graph). Keeping uint8 until the graph means
4x less data crosses pipeline steps.
"""

from __future__ import annotations

import json
import logging
from collections.abc import Iterable, Sequence
from typing import Any, NamedTuple

import numpy as np
from apache_beam.metrics import Metrics
from apache_beam.ml.inference.base import ModelHandler

from beam_jobs.contract import JOB_EXTRACT, ModelSpec
from beam_jobs.extract_embeddings.engines import EngineChoice, EngineModel, load_engine
from beam_jobs.extract_embeddings.models import ResolvedWeights, build_keras_model, get_spec, preprocess_for

LOG = logging.getLogger(__name__)
METRICS_NAMESPACE = JOB_EXTRACT


class Embedding(NamedTuple):
    """What the handler returns per image (not the input pixels: holding them would keep
    each batch's 150 KB per image alive downstream for nothing)."""

    inference: np.ndarray  # the vector (Beam's name for a model's output)
    model_id: str
    engine: str  # JSON description of the engine that computed it; one shared string per process


def compile_embedding_fn(keras_model: Any, preprocess: Any, input_size: tuple[int, int]):
    """uint8 NHWC batch -> float32 embeddings, traced once for any batch size."""
    import tensorflow as tf

    w, h = input_size

    @tf.function(input_signature=[tf.TensorSpec([None, h, w, 3], tf.uint8)], reduce_retracing=True)
    def embed(pixels):
        x = preprocess(tf.cast(pixels, tf.float32))
        return keras_model(x, training=False)

    return embed


def load_embedding_model(
    model: str | ModelSpec, weights: ResolvedWeights, choice: EngineChoice | None = None
) -> EngineModel:
    """Build the model and load it on the chosen engine (``auto``: decided for this CPU)."""
    spec = get_spec(model) if isinstance(model, str) else model
    keras_model = build_keras_model(spec, weights)
    fn = compile_embedding_fn(keras_model, preprocess_for(spec), spec.input_size)
    return load_engine(fn, spec, choice or EngineChoice())


class KerasEmbeddingModelHandler(ModelHandler[np.ndarray, Embedding, EngineModel]):
    """Examples are (H, W, 3) uint8 arrays; inferences are ``Embedding`` (1-D float32 vectors)."""

    def __init__(
        self,
        spec: ModelSpec,
        weights: ResolvedWeights,
        model_id: str,
        *,
        engine: EngineChoice | None = None,
        min_batch_size: int = 1,
        max_batch_size: int = 32,
    ):
        super().__init__(min_batch_size=min_batch_size, max_batch_size=max_batch_size)
        self._spec = spec
        self._weights = weights
        self._model_id = model_id
        self._engine = engine or EngineChoice()
        self._batch_size = Metrics.distribution(METRICS_NAMESPACE, "batch_size")

    def load_model(self) -> EngineModel:
        import tensorflow as tf

        if self._engine.threads:
            try:
                tf.config.threading.set_intra_op_parallelism_threads(self._engine.threads)
            except RuntimeError:
                # TF refuses once its runtime is initialised; the first setting stays.
                LOG.debug("TensorFlow threads already configured")
        LOG.info("loading %s (engine %s, precision %s)", self._model_id, self._engine.engine, self._engine.precision)
        model = load_embedding_model(self._spec, self._weights, self._engine)
        LOG.info("model %s runs on %s", self._model_id, model.info)
        Metrics.counter(METRICS_NAMESPACE, f"engine_{model.info['engine']}_{model.info['precision']}").inc()
        return model

    def run_inference(
        self,
        batch: Sequence[np.ndarray],
        model: EngineModel,
        inference_args: dict[str, Any] | None = None,
    ) -> Iterable[Embedding]:
        self._batch_size.update(len(batch))
        vectors = model(np.stack(batch))
        # After the call: the first real batch's check may have changed what runs the model.
        engine = json.dumps(model.info, sort_keys=True)
        return [Embedding(vec, self._model_id, engine) for vec in vectors]

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
