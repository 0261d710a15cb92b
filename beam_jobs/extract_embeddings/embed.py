"""Stage EmbedImages: (ImageMeta, pixels) -> embedding rows through RunInference; a failed batch -> records."""

from __future__ import annotations

from typing import Any

import apache_beam as beam
import numpy as np
from apache_beam.metrics import Metrics
from apache_beam.ml.inference.base import KeyedModelHandler, PredictionResult, RunInference

from beam_jobs.extract_embeddings.decode import FAILURES_TAG, ImageMeta, failure_record
from beam_jobs.extract_embeddings.inference import METRICS_NAMESPACE, KerasEmbeddingModelHandler, count_through
from beam_jobs.extract_embeddings.models import ResolvedWeights


def to_row(item: tuple[ImageMeta, PredictionResult], run_id: str) -> dict[str, Any]:
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
        model: str,
        weights: ResolvedWeights,
        embedding_model_id: str,
        batch_size: int,
        run_id: str,
        intra_op_threads: int = 0,
    ):
        super().__init__()
        self._run_id = run_id
        self._handler = KeyedModelHandler(
            KerasEmbeddingModelHandler(
                model,
                weights,
                embedding_model_id,
                # min == max: fixed-size batches; adaptive sizing starts at 1 and wastes the first bundles.
                min_batch_size=batch_size,
                max_batch_size=batch_size,
                intra_op_threads=intra_op_threads,
            )
        )

    def expand(self, images):
        run_id = self._run_id
        main, other = images | "RunInference" >> RunInference(self._handler).with_exception_handling()
        checked = main | "ToRow" >> beam.Map(to_row, run_id).with_outputs(FAILURES_TAG, main="rows")
        rows = checked.rows | "CountEmbedded" >> beam.Map(count_through("embedded"))
        failed_batches = other.failed_inferences | "FailedBatchToRecords" >> beam.FlatMap(failed_batch_records, run_id)
        failures = (checked[FAILURES_TAG], failed_batches) | "InferenceFailures" >> beam.Flatten()
        return {"rows": rows, FAILURES_TAG: failures}
