"""Shared fixtures: real images built from package-shipped photos, and a saved model file.

Nothing here downloads anything: weights are random (seeded) and saved by the
fixture itself, images come from scikit-learn / scikit-image / matplotlib.
"""

from __future__ import annotations

import atexit
import fnmatch
import glob
import os
import shutil
import subprocess
import sys
import tempfile
from pathlib import Path

import pytest

from tests.support.ci import in_ci, unavailable

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
# The deployment's fence for input, output and weights paths (beam_jobs.nightly.allowed_roots): the
# tests' folders live under the temp folder, and their gs:// paths in these made-up buckets.
TEST_BUCKETS = ("gs://b", "gs://bucket", "gs://m", "gs://acme-images", "gs://acme-out", "gs://acme-models")
os.environ["IMAGE_EMBEDDINGS_ALLOWED_ROOTS"] = ",".join(
    [tempfile.gettempdir(), *("/x", "/i", "/o"), *TEST_BUCKETS]  # /x, /i, /o: test_runs' paths never read
)
# What Airflow does for its own processes: the plugins folder is importable.
sys.path.insert(0, os.path.join(ROOT, "plugins"))


# The skips a CI run may report: {node id, or an fnmatch pattern of node ids: why it may skip there}. Under CI=true
# any other skip fails the run (SkipGuard below), so a tier that did not run cannot pass unseen; pytest's -ra prints
# every skip's reason. Keep it short: a missing tool is not a reason (tests/support/ci.py makes it a failure in CI).
ALLOWED_SKIPS: dict[str, str] = {}


def allowed_skip(nodeid: str) -> str | None:
    """The allowlist's reason for a skip of ``nodeid``, or None when it has none."""
    for pattern, reason in ALLOWED_SKIPS.items():
        if nodeid == pattern or fnmatch.fnmatchcase(nodeid, pattern):
            return reason
    return None


class SkipGuard:
    """Records every skip (tests, and modules skipped at collection); under CI=true fails the run on any skip
    outside ALLOWED_SKIPS, naming each in the terminal summary."""

    def __init__(self) -> None:
        self.unexpected: list[tuple[str, str]] = []

    def _record(self, report) -> None:
        if report.skipped and not hasattr(report, "wasxfail") and allowed_skip(report.nodeid) is None:
            longrepr = report.longrepr
            reason = longrepr[2].removeprefix("Skipped: ") if isinstance(longrepr, tuple) else str(longrepr)
            self.unexpected.append((report.nodeid, reason))

    def pytest_runtest_logreport(self, report) -> None:
        self._record(report)

    def pytest_collectreport(self, report) -> None:
        self._record(report)

    @pytest.hookimpl(trylast=True)
    def pytest_sessionfinish(self, session) -> None:
        if in_ci() and self.unexpected and session.exitstatus == pytest.ExitCode.OK:
            session.exitstatus = pytest.ExitCode.TESTS_FAILED

    def pytest_terminal_summary(self, terminalreporter) -> None:
        if not (in_ci() and self.unexpected):
            return
        terminalreporter.section("CI=true: skips outside ALLOWED_SKIPS (tests/conftest.py)", sep="!", red=True)
        for nodeid, reason in self.unexpected:
            terminalreporter.line(f"{nodeid}: {reason}", red=True)
        terminalreporter.line(
            f"{len(self.unexpected)} skip(s) fail this CI run: make the test run here, or allowlist it with its reason."
        )


def pytest_configure(config) -> None:
    config.pluginmanager.register(SkipGuard(), "image-embeddings-skip-guard")


@pytest.fixture(scope="session")
def chromium() -> str:
    """The headless Chromium binary of the browser tests (``tests.support.ci.requires_chromium``): without one,
    its tests skip, or fail under CI=true."""
    from tests.support.browser import find_chromium

    binary = find_chromium()
    if binary is None:
        unavailable("chromium is not installed: apt-get install chromium")
    return binary


@pytest.fixture
def open_tmp_path():
    """A fresh folder any user can enter (mode 755, in the system temp folder), removed after the test: for checks
    run as user nobody (``tests.support.ci.run_unprivileged``). ``tmp_path`` sits under a folder of mode 700."""
    path = Path(tempfile.mkdtemp(prefix="open-tmp-"))
    path.chmod(0o755)
    yield path
    shutil.rmtree(path, ignore_errors=True)


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


@pytest.fixture(scope="session")
def mixed_inputs(sample_dir, edge_dir, tmp_path_factory):
    """Sample photos + every awkward file, in one folder, and a manifest that adds a missing path."""
    folder = str(tmp_path_factory.mktemp("mixed") / "ds=2026-11-20")
    os.makedirs(folder)
    for f in glob.glob(os.path.join(sample_dir, "*")):
        shutil.copy(f, folder)
    _edge_folder, expected = edge_dir
    for f in expected:
        shutil.copy(f, folder)
    expected = {os.path.join(folder, os.path.basename(k)): v for k, v in expected.items()}
    for f in glob.glob(os.path.join(folder, "img_*")):
        expected[f] = "ok"
    missing = os.path.join(folder, "deleted_before_the_run.jpg")
    manifest = os.path.join(os.path.dirname(folder), "manifest.txt")
    with open(manifest, "w") as handle:
        handle.write("\n".join([*sorted(expected), missing, sorted(expected)[0]]) + "\n")  # one duplicate
    return folder, manifest, {**expected, missing: "read/not_found"}


@pytest.fixture(scope="session")
def manifest_run(mixed_inputs, weights_file, tmp_path_factory):
    """The extraction job, launched as a user would, on every kind of input (test_extract_cli checks its
    outputs; test_reduce_dim reduces them). Returns (output folder, {uri: expected outcome}, process)."""
    _, manifest, expected = mixed_inputs
    out = str(tmp_path_factory.mktemp("out") / "embeddings" / "ds=2026-11-20")
    proc = run_cli(
        "beam_jobs.extract_embeddings",
        "--input_manifest",
        manifest,
        "--output",
        out,
        "--weights",
        weights_file,
        "--run_id",
        "scheduled__2026-11-20",
        "--batch_size",
        "4",
        "--output_format",
        "npy",
    )
    assert proc.returncode == 0, proc.stderr[-3000:]
    return out, expected, proc


@pytest.fixture(scope="session")
def photo_index(manifest_run):
    """The index job run as Airflow runs it, on the extraction output of the sample photos (test_build_index
    queries it with the search command, test_search_page from the maps page). Returns (index folder, manifest)."""
    import json

    embeddings, _, _ = manifest_run
    out = os.path.join(os.path.dirname(os.path.dirname(embeddings)), "index", "ds=2026-11-20")
    proc = run_cli("beam_jobs.build_index", "--input", embeddings, "--output", out, "--run_id", "scheduled__x")
    assert proc.returncode == 0, proc.stderr[-3000:]
    with open(os.path.join(out, "manifest.json")) as handle:
        return out, json.load(handle)


def run_cli(module: str, *args: str, env: dict | None = None) -> subprocess.CompletedProcess:
    """Run a job exactly as a user (or Airflow's operator) would: python -m beam_jobs.<job>."""
    full_env = {**os.environ, **(env or {})}
    return subprocess.run(
        [sys.executable, "-m", module, *args], capture_output=True, text=True, cwd=ROOT, env=full_env, timeout=900
    )


@pytest.fixture(scope="session")
def refused_night(airflow_db, sample_dir, tmp_path_factory):
    """One dag.test() night whose plan refuses a weights file that does not exist, with the alerts
    connection pointing at a real loopback webhook. test_dag checks the run's states and that nothing
    was written; test_alerts checks the alert the failure callback posted (one run for both).

    Returns (dag run, task states, output root, webhook bodies received).
    """
    from tests.airflow_support import Webhook, conf_for, load_dagbag, run_dag, stage_images, task_states

    root = tmp_path_factory.mktemp("refused")
    ds = "2026-11-21"
    stage_images(sample_dir, root, ds, 2)
    server = Webhook()
    try:
        with pytest.MonkeyPatch.context() as mp:
            mp.setenv("AIRFLOW_CONN_IMAGE_EMBEDDINGS_ALERTS", server.url)
            dag = load_dagbag().dags["image_embeddings"]
            dr = run_dag(dag, ds, conf_for(root, weights=str(root / "no-such.weights.h5")))
    finally:
        server.close()
    return dr, task_states(dr), root, list(server.received)
