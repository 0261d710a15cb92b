"""image_embeddings_airflow.metrics: the manifests' figures as Airflow gauges, through a real StatsD socket."""

from __future__ import annotations

import os
import subprocess
import sys

import pytest

from tests.conftest import ROOT


def test_figures_are_fields_of_the_manifests():
    from beam_jobs.contract import ExtractManifest, ReduceManifest
    from image_embeddings_airflow.metrics import EXTRACTION_FIGURES, PROJECTION_FIGURES

    assert set(EXTRACTION_FIGURES) - {"failure_rate"} <= set(ExtractManifest.__annotations__)
    assert set(PROJECTION_FIGURES) <= set(ReduceManifest.__annotations__)


def test_drift_figures_are_emitted_with_the_projections(monkeypatch):
    from airflow.sdk.observability.stats import Stats

    from beam_jobs.reduce_dim.drift import Moments, build_drift_space, drift_stats
    from image_embeddings_airflow import metrics

    sent: dict[str, float] = {}
    monkeypatch.setattr(Stats, "gauge", lambda name, value, *a, **k: sent.__setitem__(name, value))
    import numpy as np

    x = np.random.default_rng(0).normal(size=(40, 8)).astype(np.float32)
    drift = drift_stats(build_drift_space(x[:20], Moments().add(x[:20])), x[20:], Moments().add(x[20:]))
    assert set(metrics.DRIFT_FIGURES) <= set(drift)
    out = metrics.emit_projection("pca", {"rows": 20, "seconds": 1.0, "rows_per_second": 20.0, "drift": drift})
    assert out["image_embeddings.drift_pca.mmd_p_value"] == drift["mmd_p_value"]
    assert sent["image_embeddings.drift_pca.novelty_rate"] == drift["novelty_rate"]
    assert "image_embeddings.drift_umap.mmd2" not in metrics.emit_projection("umap", {"rows": 3})


@pytest.mark.slow  # a fresh interpreter importing Airflow: 3-8 s
def test_manifest_figures_reach_statsd_when_metrics_are_on():
    """A real UDP socket on loopback as the StatsD server; a fresh process with [metrics] statsd_on."""
    import socket

    sock = socket.socket(socket.AF_INET, socket.SOCK_DGRAM)
    sock.bind(("127.0.0.1", 0))
    sock.settimeout(20)
    env = {
        **os.environ,
        "AIRFLOW__METRICS__STATSD_ON": "True",
        "AIRFLOW__METRICS__STATSD_HOST": "127.0.0.1",
        "AIRFLOW__METRICS__STATSD_PORT": str(sock.getsockname()[1]),
        "PYTHONPATH": os.path.join(ROOT, "plugins"),
    }
    code = (
        # What Airflow's task runner does at start-up: build the metrics backend from [metrics].
        "from airflow.sdk._shared.observability.metrics import stats;"
        "from airflow.sdk.observability.metrics import stats_utils;"
        "stats.initialize(factory=stats_utils.get_stats_factory(), export_legacy_names=True);"
        "from image_embeddings_airflow.metrics import emit_extraction;"
        "print(emit_extraction({'inputs': 13, 'embedded': 12, 'failed': 1, 'images_per_second': 4.5,"
        " 'seconds': 3.0, 'model_id': 'not a number'}))"
    )
    proc = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, env=env, timeout=120)
    assert proc.returncode == 0, proc.stderr[-2000:]
    lines: set[str] = set()
    try:
        # Six gauges, in any order, with Airflow's own metrics in between.
        while sum(".image_embeddings.extract." in line for line in lines) < 6:
            lines.update(sock.recv(4096).decode().splitlines())
    finally:
        sock.close()
    assert "airflow.image_embeddings.extract.embedded:12|g" in lines
    assert "airflow.image_embeddings.extract.failed:1|g" in lines
    assert "airflow.image_embeddings.extract.images_per_second:4.5|g" in lines
    assert any(line.startswith("airflow.image_embeddings.extract.failure_rate:0.0769") for line in lines), lines
    assert not any("model_id" in line for line in lines)
