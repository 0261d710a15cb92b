"""Shared fixtures: real images built from package-shipped photos, and a saved model file.

Nothing here downloads anything: weights are random (seeded) and saved by the
fixture itself, images come from scikit-learn / scikit-image / matplotlib.
"""

from __future__ import annotations

import atexit
import os
import shutil
import subprocess
import sys
import tempfile

import pytest

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
os.environ.setdefault("TF_CPP_MIN_LOG_LEVEL", "2")

# Airflow reads its configuration at import: point it at a throwaway home (SQLite) and this
# project's dags/ and plugins/ before any test imports it.
AIRFLOW_HOME = tempfile.mkdtemp(prefix="airflow-home-")
atexit.register(shutil.rmtree, AIRFLOW_HOME, ignore_errors=True)
os.environ.update(
    {
        "AIRFLOW_HOME": AIRFLOW_HOME,
        "AIRFLOW__CORE__DAGS_FOLDER": os.path.join(ROOT, "dags"),
        "AIRFLOW__CORE__PLUGINS_FOLDER": os.path.join(ROOT, "plugins"),
        "AIRFLOW__CORE__LOAD_EXAMPLES": "False",
        "AIRFLOW__LOGGING__LOGGING_LEVEL": "INFO",
    }
)
# What Airflow does for its own processes: the plugins folder is importable.
sys.path.insert(0, os.path.join(ROOT, "plugins"))


@pytest.fixture(scope="session")
def airflow_db() -> str:
    """A migrated SQLite metadata database in the session's AIRFLOW_HOME."""
    airflow = os.path.join(os.path.dirname(sys.executable), "airflow")
    subprocess.run([airflow, "db", "migrate"], check=True, capture_output=True, cwd=ROOT, timeout=600)
    return AIRFLOW_HOME


@pytest.fixture(scope="session")
def sample_dir(tmp_path_factory) -> str:
    from devtools.samples import SampleSpec, build_sample_images

    out = str(tmp_path_factory.mktemp("samples") / "images")
    # Sizes span small to multi-megapixel so JPEG draft decoding is exercised.
    build_sample_images(out, SampleSpec(n=12, seed=3, min_mp=0.2, max_mp=3.0))
    return out


@pytest.fixture(scope="session")
def edge_dir(tmp_path_factory) -> tuple[str, dict[str, str]]:
    from devtools.samples import write_edge_cases

    out = str(tmp_path_factory.mktemp("edge"))
    return out, write_edge_cases(out)


@pytest.fixture(scope="session")
def weights_file(tmp_path_factory) -> str:
    """A ResNet50 weights file saved by the test run itself (seeded random init)."""
    path = str(tmp_path_factory.mktemp("model") / "resnet50-seed7.weights.h5")
    # In a subprocess so the test process does not pay for TensorFlow unless it needs it.
    code = (
        "import keras, sys; keras.utils.set_random_seed(7);"
        "m = keras.applications.ResNet50(include_top=False, pooling='avg', weights=None, input_shape=(224, 224, 3));"
        "m.save_weights(sys.argv[1])"
    )
    subprocess.run([sys.executable, "-c", code, path], check=True, cwd=ROOT)
    return path


def run_cli(module: str, *args: str, env: dict | None = None) -> subprocess.CompletedProcess:
    """Run a job exactly as a user (or Airflow's operator) would: python -m beam_jobs.<job>."""
    full_env = {**os.environ, **(env or {})}
    return subprocess.run(
        [sys.executable, "-m", module, *args], capture_output=True, text=True, cwd=ROOT, env=full_env, timeout=900
    )
