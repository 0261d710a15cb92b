"""Stage EmbedImages: (ImageMeta, pixels) -> embedding rows through RunInference; a failed batch -> records.

Besides rows and failures it outputs ``engines``: the distinct descriptions of the
engines that computed the rows (JSON strings; one per worker set-up), which the
commit step writes into the manifest.
"""

from __future__ import annotations

import json
import re
from collections.abc import Sequence
from typing import Any

import apache_beam as beam
import numpy as np
from apache_beam.metrics import Metrics
from apache_beam.ml.inference.base import KeyedModelHandler, RunInference
from apache_beam.transforms.window import GlobalWindows

from beam_jobs.contract import ModelSpec
from beam_jobs.extract_embeddings.decode import FAILURES_TAG, ImageMeta, failure_record
from beam_jobs.extract_embeddings.engines import EngineChoice
from beam_jobs.extract_embeddings.inference import (
    METRICS_NAMESPACE,
    Embedding,
    KerasEmbeddingModelHandler,
    count_through,
)
from beam_jobs.extract_embeddings.models import ModelRun, ResolvedWeights, get_spec

ENGINES_TAG = "engines"


def to_row(item: tuple[ImageMeta, Embedding], run_id: str) -> dict[str, Any]:
    """An embedding row, or (on the failures output) a record when the vector has NaN or inf.

    A non-finite vector must never be written: one would poison every mean, PCA and
    distance computed downstream, night after night.
    """
    meta, result = item
    vector = np.asarray(result.inference, dtype=np.float32)
    if not np.isfinite(vector).all():
        bad = int((~np.isfinite(vector)).sum())
        Metrics.counter(METRICS_NAMESPACE, "failed").inc()
        Metrics.counter(METRICS_NAMESPACE, "failed_inference_non_finite").inc()
        message = f"the model returned {bad} non-finite value(s) (NaN or inf) of {vector.size}"
        return beam.pvalue.TaggedOutput(
            FAILURES_TAG, failure_record(meta.image_uri, "inference", "non_finite", message, run_id)
        )
    return {
        "image_uri": meta.image_uri,
        "embedding": vector,
        "model_id": result.model_id,
        "content_sha256": meta.content_sha256,
        "width": meta.width,
        "height": meta.height,
        "run_id": run_id,
    }


class ToRows(beam.DoFn):
    """``to_row`` for each result; at the end of a bundle, each engine description it saw, once."""

    def __init__(self, run_id: str):
        self._run_id = run_id
        self._engines: set[str] = set()

    def start_bundle(self):
        self._engines = set()

    def process(self, item: tuple[ImageMeta, Embedding]):
        self._engines.add(item[1].engine)
        yield to_row(item, self._run_id)

    def finish_bundle(self):
        for engine in sorted(self._engines):
            yield beam.pvalue.TaggedOutput(ENGINES_TAG, GlobalWindows.windowed_value(engine))


def failed_batch_records(item: tuple[list, BaseException], run_id: str) -> list[dict[str, str]]:
    batch, exc = item
    Metrics.counter(METRICS_NAMESPACE, "failed").inc(len(batch))
    Metrics.counter(METRICS_NAMESPACE, f"failed_inference_{type(exc).__name__}").inc(len(batch))
    return [
        failure_record(meta.image_uri, "inference", type(exc).__name__, str(exc)[:2000], run_id)
        for meta, _pixels in batch
    ]


class EmbedImages(beam.PTransform):
    """(ImageMeta, pixels) -> embedding rows; main output rows, ``failures`` records."""

    def __init__(
        self,
        model: str | ModelSpec,
        weights: ResolvedWeights,
        embedding_model_id: str,
        batch_size: int,
        run_id: str,
        engine: EngineChoice | None = None,
    ):
        super().__init__()
        self._run_id = run_id
        self._handler = KeyedModelHandler(
            KerasEmbeddingModelHandler(
                get_spec(model) if isinstance(model, str) else model,
                weights,
                embedding_model_id,
                # min == max: fixed-size batches; adaptive sizing starts at 1 and wastes the first bundles.
                min_batch_size=batch_size,
                max_batch_size=batch_size,
                engine=engine,
            )
        )

    def expand(self, images):
        run_id = self._run_id
        main, other = images | "RunInference" >> RunInference(self._handler).with_exception_handling()
        checked = main | "ToRow" >> beam.ParDo(ToRows(run_id)).with_outputs(FAILURES_TAG, ENGINES_TAG, main="rows")
        rows = checked.rows | "CountEmbedded" >> beam.Map(count_through("embedded"))
        failed_batches = other.failed_inferences | "FailedBatchToRecords" >> beam.FlatMap(failed_batch_records, run_id)
        failures = (checked[FAILURES_TAG], failed_batches) | "InferenceFailures" >> beam.Flatten()
        engines = checked[ENGINES_TAG] | "DistinctEngines" >> beam.Distinct()
        return {"rows": rows, FAILURES_TAG: failures, ENGINES_TAG: engines}


def branch_label(run: ModelRun, index: int) -> str:
    """A step label for one model's branch: readable, unique in the graph, no '/' or ':' (a path's)."""
    safe = re.sub(r"[^A-Za-z0-9_]+", "_", run.name.rsplit("/", 1)[-1]).strip("_")[:40]
    return f"{index}_{safe}"


def pixels_for(item: tuple[ImageMeta, Any], size: tuple[int, int]) -> tuple[ImageMeta, np.ndarray]:
    """One model's pixels out of a several-size decode (``DecodeParams.more_sizes``)."""
    meta, pixels = item
    return meta, pixels[size] if isinstance(pixels, dict) else pixels


def tag_failure(record: dict[str, Any], model_id: str) -> dict[str, Any]:
    """An inference failure belongs to one model; read and decode failures (untagged) to every model."""
    return {**record, "model_id": model_id}


def tag_engine(engine: str, name: str) -> str:
    return json.dumps({**json.loads(engine), "model": name}, sort_keys=True)


class EmbedModels(beam.PTransform):
    """Decoded images -> one RunInference branch per model; each branch's rows and failures, and the engines.

    The input is (ImageMeta, pixels), or (ImageMeta, {(width, height): pixels}) when the
    models take different sizes: each branch picks its own size from the one decode. Every
    row carries its model's model_id, every inference failure record too, and every engine
    description the model's name, so the commit step accounts each model on its own.

    Output keys: ``rows_<source>`` and ``failures_<source>`` per model (source ``embed`` for a one-model
    pass, ``embed_<label>`` per model otherwise; WriteOutputs writes each where it is made, without a
    Flatten the local runner would hold whole), and ``engines``.
    """

    def __init__(
        self,
        runs: Sequence[ModelRun],
        batch_size: int,
        run_id: str,
        engine: EngineChoice | None = None,
    ):
        super().__init__()
        self._runs = list(runs)
        self._batch_size = batch_size
        self._run_id = run_id
        self._engine = engine

    def expand(self, images):
        out, engines = {}, []
        for index, run in enumerate(self._runs):
            label = branch_label(run, index)
            source = "embed" if len(self._runs) == 1 else f"embed_{label}"
            pixels = images | f"PixelsFor_{label}" >> beam.Map(pixels_for, tuple(run.spec.input_size))
            branch = pixels | f"Embed_{label}" >> EmbedImages(
                run.spec, run.weights, run.model_id, self._batch_size, self._run_id, self._engine
            )
            out[f"rows_{source}"] = branch["rows"]
            out[f"{FAILURES_TAG}_{source}"] = branch[FAILURES_TAG] | f"TagFailures_{label}" >> beam.Map(
                tag_failure, run.model_id
            )
            engines.append(branch[ENGINES_TAG] | f"TagEngines_{label}" >> beam.Map(tag_engine, run.name))
        out[ENGINES_TAG] = engines | "AllEngines" >> beam.Flatten()
        return out
