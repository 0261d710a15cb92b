"""The jobs' manifest figures as Airflow metrics (StatsD or OpenTelemetry, whatever [metrics] configures).

Off unless the deployment turns Airflow metrics on (``[metrics] statsd_on`` or ``otel_on``); the
same figures are always in the task's XCom and the Asset event.
"""

from __future__ import annotations

from collections.abc import Mapping
from typing import Any

from beam_jobs.contract import ExtractManifest, ReduceManifest

PREFIX = "image_embeddings"
# Keys of ExtractManifest (plus the failure rate derived from it) and of ReduceManifest.
EXTRACTION_FIGURES = (
    "inputs",
    "embedded",
    "reused",
    "computed",
    "failed",
    "images_per_second",
    "seconds",
    "failure_rate",
)
PROJECTION_FIGURES = ("rows", "seconds", "rows_per_second")
# Of ReduceManifest["drift"], emitted as image_embeddings.drift_<method>.<name> when a reference was used.
DRIFT_FIGURES = ("mean_shift", "mean_shift_relative", "mmd2", "mmd_p_value", "novelty_rate")


def emit(stage: str, figures: Mapping[str, Any], names: tuple[str, ...]) -> dict[str, float]:
    """Gauge each numeric figure as ``image_embeddings.<stage>.<name>``; returns what was sent."""
    from airflow.sdk.observability.stats import Stats

    sent = {}
    for name in names:
        value = figures.get(name)
        if isinstance(value, int | float) and not isinstance(value, bool):
            metric = f"{PREFIX}.{stage}.{name}"
            Stats.gauge(metric, value)
            sent[metric] = float(value)
    return sent


def emit_extraction(manifest: ExtractManifest) -> dict[str, float]:
    """The extraction's counts, speed and failure rate (``failed / inputs``; 0 without inputs)."""
    failure_rate = manifest["failed"] / max(manifest["inputs"], 1)
    return emit("extract", {**manifest, "failure_rate": failure_rate}, EXTRACTION_FIGURES)


COST_FIGURES = ("usd", "usd_per_1000_images", "cpu_seconds", "cpu_seconds_per_1000_images")


def emit_cost(cost: Mapping[str, Any]) -> dict[str, float]:
    """The night's cost: ``image_embeddings.cost.usd_per_1000_images`` (Dataflow; None locally), CPU seconds."""
    return emit("cost", cost, COST_FIGURES)


def emit_projection(method: str, manifest: ReduceManifest) -> dict[str, float]:
    sent = emit(f"reduce_{method}", manifest, PROJECTION_FIGURES)
    if manifest.get("drift"):
        sent.update(emit(f"drift_{method}", manifest["drift"], DRIFT_FIGURES))
    return sent
