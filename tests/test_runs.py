"""image_embeddings_airflow.runs: the plan's cross-field checks and paths, the extraction check, the run record."""

from __future__ import annotations

import json
import os
import shutil
import subprocess
import sys

import pytest

from tests.conftest import ROOT

OK = {
    "methods": ["pca"],
    "runner": "FnApiRunner",
    "model": "resnet50",
    "batch_size": 32,
    "max_failure_rate": 0.1,
    "weights": "random",
}
DATAFLOW = {"project": "p", "region": "europe-west4", "temp_location": "gs://b/tmp"}


def test_plan_refuses_combinations_the_form_cannot_check(tmp_path):
    from beam_jobs.nightly.paths import PlanError
    from beam_jobs.nightly.plan import build_plan

    ok = {**OK, "output_root": str(tmp_path / "out")}
    plan = build_plan(ok, "2026-11-20", "r", str(tmp_path / "images/ds=2026-11-20/*"))
    assert plan["embeddings_dir"] == str(tmp_path / "out/embeddings/ds=2026-11-20")
    assert plan["projections"] == {"pca": str(tmp_path / "out/projections/method=pca/ds=2026-11-20")}
    assert plan["input_varies_by_date"] is True
    folder = build_plan(ok, "2026-11-20", "r", str(tmp_path / "images/ds=2026-11-20") + "/")
    assert folder["input"] == str(tmp_path / "images/ds=2026-11-20/*")
    prefix = build_plan({**ok, "output_root": "gs://b/out"}, "2026-11-20", "r", "gs://b/images/ds=2026-11-20/")
    assert prefix["input"] == "gs://b/images/ds=2026-11-20/*"
    with pytest.raises(PlanError, match=r"weights file .* does not exist"):
        build_plan({**ok, "weights": str(tmp_path / "missing.h5")}, "2026-11-20", "r", "/x/*")
    with pytest.raises(PlanError, match="must be a gs:// path with DataflowRunner") as err:
        build_plan({**ok, "runner": "DataflowRunner"}, "2026-11-20", "r", "/x/*", {"project": "p", "region": "r"})
    assert "needs temp_location" in str(err.value)
    on_dataflow = build_plan(
        {**ok, "runner": "DataflowRunner", "output_root": "gs://b/out"},
        "2026-11-20",
        "r",
        "gs://b/images/ds=2026-11-20/*",
        {**DATAFLOW, "setup_file": "/app/setup.py"},
    )
    assert on_dataflow["dataflow"] == {
        "project": "p",
        "region": "europe-west4",
        "temp_location": "gs://b/tmp",
        "staging_location": "gs://b/tmp",
        "setup_file": "/app/setup.py",
        "experiments": "no_use_multiple_sdk_containers",
        "number_of_worker_harness_threads": 4,
    }
    assert on_dataflow["embeddings_dir"] == "gs://b/out/embeddings/ds=2026-11-20"
    assert (on_dataflow["engine"], on_dataflow["precision"]) == ("auto", "auto")


def test_plan_with_a_worker_image_needs_no_setup_file_and_refuses_a_bad_reference(monkeypatch):
    from beam_jobs.nightly.paths import PlanError
    from beam_jobs.nightly.plan import SETUP_FILE_ENV, build_plan

    # No setup.py to be found: with a worker image none is needed.
    monkeypatch.setenv(SETUP_FILE_ENV, "/nowhere/setup.py")
    params = {**OK, "runner": "DataflowRunner", "output_root": "gs://b/out"}
    image = "europe-west4-docker.pkg.dev/acme/images/embeddings-worker:2026-12-01"
    plan = build_plan(params, "2026-11-20", "r", "gs://b/i/*", {**DATAFLOW, "sdk_container_image": image})
    assert plan["dataflow"]["sdk_container_image"] == image
    assert "setup_file" not in plan["dataflow"]
    with pytest.raises(PlanError, match="no such file"):
        build_plan(params, "2026-11-20", "r", "gs://b/i/*", DATAFLOW)
    with pytest.raises(PlanError, match="is not a container image reference"):
        build_plan(params, "2026-11-20", "r", "gs://b/i/*", {**DATAFLOW, "sdk_container_image": "img --evil=1"})
    with pytest.raises(PlanError, match="precision bf16 needs engine openvino or auto"):
        build_plan({**params, "engine": "tf", "precision": "bf16"}, "2026-11-20", "r", "gs://b/i/*", DATAFLOW)


def test_plan_refuses_what_rendering_or_stripping_leaves_empty(tmp_path):
    from beam_jobs.nightly.paths import PlanError
    from beam_jobs.nightly.plan import build_plan

    ok = {**OK, "output_root": str(tmp_path / "out")}
    with pytest.raises(PlanError, match="output_root is required"):
        build_plan({**ok, "output_root": "/"}, "2026-11-20", "r", "/x/*")
    with pytest.raises(PlanError, match="input is required"):
        build_plan(ok, "2026-11-20", "r", "  ")
    with pytest.raises(PlanError, match="still holds template syntax"):
        build_plan(ok, "2026-11-20", "r", "/x/ds={{ ds_typo }}/*")
    with pytest.raises(PlanError, match="Dataflow workers need a gs:// path to the weights"):
        build_plan(
            {**ok, "weights": "/x/w.h5", "runner": "DataflowRunner", "output_root": "gs://b/o"},
            "d",
            "r",
            "gs://b/i/*",
            DATAFLOW,
        )


def test_plan_gives_each_reduce_task_its_partition_as_a_top_level_key(tmp_path):
    """The reduce tasks take plan[projections_key(method)] as an XComArg (one XCom per key)."""
    from beam_jobs.nightly.plan import build_plan, projections_key

    plan = build_plan({**OK, "methods": ["umap", "pca"], "output_root": str(tmp_path)}, "2026-11-20", "r", "/x/*")
    for method in ("pca", "umap"):
        assert plan[projections_key(method)] == plan["projections"][method]
    assert plan["methods"] == ["umap", "pca"]
    json.dumps(plan)  # an XCom: plain JSON


def test_check_extraction_summarises_or_rejects():
    from beam_jobs.contract import ExtractionSummary
    from beam_jobs.nightly.record import ExtractionRejected, check_extraction

    manifest = {
        "inputs": 13,
        "embedded": 12,
        "failed": 1,
        "failures_by_reason": {"decode/not_an_image": 1},
        "images_per_second": 4.5,
        "seconds": 3.0,
        "model_id": "resnet50-avg-224-random",
    }
    summary = check_extraction(manifest, 0.1, "/o/embeddings/ds=2026-11-20")
    assert set(summary) == set(ExtractionSummary.__annotations__)
    assert (summary["failure_rate"], summary["embeddings_dir"]) == (0.0769, "/o/embeddings/ds=2026-11-20")
    with pytest.raises(ExtractionRejected, match=r"1 of 13 inputs failed \(7.7%\).*failures-\*\.jsonl"):
        check_extraction(manifest, 0.05, "/o/embeddings/ds=2026-11-20")
    with pytest.raises(ExtractionRejected, match="nothing was embedded"):
        check_extraction({**manifest, "embedded": 0, "failed": 13}, 1.0, "/o")


def test_run_record_has_the_contract_shape():
    from beam_jobs.contract import EmbeddingsEntry, IndexEntry, InputReady, RunRecord
    from beam_jobs.nightly.cost import cost_summary
    from beam_jobs.nightly.plan import build_plan
    from beam_jobs.nightly.record import check_extraction, run_record

    plan = build_plan({**OK, "methods": ["pca", "umap"], "output_root": "/o"}, "2026-11-20", "r1", "/i/*")
    ran = [{"engine": "openvino", "precision": "bf16", "guard_min_cosine": 0.99998, "cpu_features": ["amx_bf16"]}]
    extraction = check_extraction(
        {"inputs": 2, "embedded": 2, "failed": 0, "engines": ran}, 0.1, plan["embeddings_dir"]
    )
    projections = {
        "pca": {"rows": 2, "seconds": 1.0, "explained_variance_ratio": [0.5, 0.25], "trustworthiness": None},
        "umap": {"rows": 2, "seconds": 2.0, "trustworthiness": 0.97},
    }
    jobs = {"extract_embeddings": {"job_id": "j1", "state": "JOB_STATE_DONE"}, "reduce_pca": {"job_id": None}}
    index = {
        "rows": 2,
        "mode": "rebuilt",
        "recall_at_10": None,
        "build_seconds": 0.1,
        "exact_duplicate_rows": 1,
        "near_duplicate_pairs": 3,
        "parameters": {"kind": "flat"},
    }
    ready = {"rule": "settled", "files": 2, "bytes": 9, "newest_change": 1.0, "marker": None, "reason": "quiet"}
    cost = cost_summary(jobs, extraction["embedded"])
    record = run_record(plan, extraction, projections, jobs, index=index, input_ready=ready, cost=cost)
    assert set(record) == set(RunRecord.__annotations__) - {"comparison"}  # one model: nothing compared
    assert set(record["input_ready"]) == set(InputReady.__annotations__)
    assert set(record["embeddings"]) == set(EmbeddingsEntry.__annotations__)
    assert set(record["index"]) == set(IndexEntry.__annotations__)
    assert record["index"]["dir"] == "/o/index/ds=2026-11-20"
    assert (record["index"]["exact_duplicate_rows"], record["index"]["near_duplicate_pairs"]) == (1, 3)
    assert plan["index"] is True  # params of runs from before the index existed: on, with the defaults
    assert (plan["index_window_days"], plan["duplicate_threshold"]) == (1, 0.95)
    assert record["embeddings"]["engines"] == ["openvino bf16"]
    assert record["projections"]["pca"] == {
        "dir": "/o/projections/method=pca/ds=2026-11-20",
        "rows": 2,
        "seconds": 1.0,
        "map_png": "/o/projections/method=pca/ds=2026-11-20/map.png",
        "map_html": "/o/projections/method=pca/ds=2026-11-20/map.html",
        "explained_variance_ratio": [0.5, 0.25],
    }
    assert record["projections"]["umap"]["trustworthiness"] == 0.97
    assert record["dataflow_jobs"] == {"extract_embeddings": {"job_id": "j1", "state": "JOB_STATE_DONE"}}
    assert "dataflow_jobs" not in run_record(plan, extraction, projections)


# --------------------------------------------------------------------------- Dataflow's setup_file default


def test_a_two_model_night_plans_every_pair_and_records_each_model():
    from beam_jobs.contract import ModelEntry, RunRecord
    from beam_jobs.nightly.plan import build_plan, reduction_key
    from beam_jobs.nightly.record import ExtractionRejected, check_extraction, run_record

    models = ["resnet50", "mobilenet_v3_large"]
    params = {**OK, "models": models, "methods": ["pca", "umap"], "output_root": "/o"}
    plan = build_plan(params, "2026-11-20", "r", "/i")
    assert (plan["model"], plan["compare"]) == (",".join(models), True)
    assert plan["comparison_dir"] == "/o/comparisons/ds=2026-11-20"
    dirs = {reduction_key(r): r["dir"] for r in plan["reductions"]}
    assert dirs == {
        "reduce_pca": "/o/projections/method=pca/ds=2026-11-20",
        "reduce_umap": "/o/projections/method=umap/ds=2026-11-20",
        "reduce_mobilenet_v3_large_pca": "/o/projections/model=mobilenet_v3_large/method=pca/ds=2026-11-20",
        "reduce_mobilenet_v3_large_umap": "/o/projections/model=mobilenet_v3_large/method=umap/ds=2026-11-20",
    }
    figures = {"resnet50": ("R", 10, 0), "mobilenet_v3_large": ("M", 9, 1)}
    per_model = {
        n: {"model_id": i, "embedded": e, "failed": f, "images_per_second": 2.0} for n, (i, e, f) in figures.items()
    }
    manifest = {"inputs": 10, "embedded": 10, "failed": 0, "model_id": "R", "models": per_model}
    extraction = check_extraction(manifest, 0.1, plan["embeddings_dir"])
    assert extraction["models"]["mobilenet_v3_large"]["failure_rate"] == 0.1
    with pytest.raises(ExtractionRejected, match=r"model mobilenet_v3_large: 10\.0% failed"):
        check_extraction(manifest, 0.05, plan["embeddings_dir"])
    reduced = {key: {"rows": 9, "seconds": 1.0, "trustworthiness": 0.9} for key in dirs}
    overlap = {"mean": 0.5, "p10": 0, "p50": 0.5, "p90": 1, "histogram": []}
    pair = {"models": models, "images": 9, "k": 8, "distance_spearman": 0.7, "linear_cka": 0.8, "knn_overlap": overlap}
    projections = {m: reduced[f"reduce_{m}"] for m in ("pca", "umap")}
    record = run_record(plan, extraction, projections, reductions=reduced, comparison={"comparisons": [pair]})
    assert set(record) == set(RunRecord.__annotations__) - {"dataflow_jobs", "index", "input_ready", "cost"}
    assert list(record["models"]) == models
    assert set(record["models"]["resnet50"]) == set(ModelEntry.__annotations__)
    assert record["models"]["resnet50"]["projections"] == record["projections"]
    umap = record["models"]["mobilenet_v3_large"]["projections"]["umap"]
    assert umap["dir"] == dirs["reduce_mobilenet_v3_large_umap"]
    assert record["comparison"]["pairs"] == [
        {"models": models, "images": 9, "knn_overlap_at_8": 0.5, "distance_spearman": 0.7, "linear_cka": 0.8}
    ]
    assert record["comparison"]["comparison_png"] == "/o/comparisons/ds=2026-11-20/comparison.png"


def test_setup_file_defaults_to_the_checkout_and_follows_the_environment(tmp_path, monkeypatch):
    from beam_jobs.nightly.paths import PlanError
    from beam_jobs.nightly.plan import SETUP_FILE_ENV, build_plan, default_setup_file

    monkeypatch.delenv(SETUP_FILE_ENV, raising=False)
    assert default_setup_file() == os.path.join(ROOT, "setup.py")  # this venv: an editable install
    setup = tmp_path / "setup.py"
    setup.write_text("from setuptools import setup\nsetup()\n")
    monkeypatch.setenv(SETUP_FILE_ENV, str(setup))
    params = {**OK, "runner": "DataflowRunner", "output_root": "gs://b/out"}
    plan = build_plan(params, "2026-11-20", "r", "gs://b/i/*", DATAFLOW)
    assert plan["dataflow"]["setup_file"] == str(setup)
    # A param or Airflow Variable still wins over the deployment's default.
    plan = build_plan(params, "2026-11-20", "r", "gs://b/i/*", {**DATAFLOW, "setup_file": "/app/setup.py"})
    assert plan["dataflow"]["setup_file"] == "/app/setup.py"
    monkeypatch.setenv(SETUP_FILE_ENV, str(tmp_path / "gone.py"))
    with pytest.raises(PlanError, match=r"IMAGE_EMBEDDINGS_SETUP_FILE='.*gone\.py': no such file"):
        build_plan(params, "2026-11-20", "r", "gs://b/i/*", DATAFLOW)


@pytest.fixture(scope="module")
def installed_copy(tmp_path_factory) -> str:
    """The project installed the way the Docker image does it: `pip install` (not editable), into a folder."""
    source = tmp_path_factory.mktemp("source")
    for name in ("pyproject.toml", "setup.py", "README.md"):
        shutil.copy(os.path.join(ROOT, name), source)
    shutil.copytree(os.path.join(ROOT, "beam_jobs"), source / "beam_jobs", ignore=shutil.ignore_patterns("__pycache__"))
    target = str(tmp_path_factory.mktemp("site-packages"))
    subprocess.run(
        [
            sys.executable,
            "-m",
            "pip",
            "install",
            "-q",
            "--no-deps",
            "--no-build-isolation",
            "--target",
            target,
            str(source),
        ],
        check=True,
        capture_output=True,
        timeout=300,
    )
    return target


PLAN_ON_DATAFLOW = """
import json, os, sys
import beam_jobs
from beam_jobs.nightly.paths import PlanError
from beam_jobs.nightly.plan import build_plan
params = {"methods": ["pca"], "runner": "DataflowRunner", "model": "resnet50", "batch_size": 32,
          "max_failure_rate": 0.1, "weights": "random", "output_root": "gs://b/out"}
dataflow = {"project": "p", "region": "europe-west4", "temp_location": "gs://b/tmp"}
# What the DAG used before: a setup.py beside the package's parent folder.
derived = os.path.join(os.path.dirname(os.path.dirname(beam_jobs.__file__)), "setup.py")
try:
    result = {"setup_file": build_plan(params, "2026-11-20", "r", "gs://b/i/*", dataflow)["dataflow"]["setup_file"]}
except PlanError as exc:
    result = {"error": str(exc)}
print(json.dumps({**result, "package": beam_jobs.__file__, "derived_exists": os.path.exists(derived)}))
"""


@pytest.mark.slow
def test_setup_file_default_in_a_non_editable_install(installed_copy, tmp_path):
    """The Docker image installs the project into site-packages: no setup.py there, so the default must not be one."""
    from beam_jobs.nightly.plan import SETUP_FILE_ENV

    def plan_in(env_extra: dict[str, str]) -> dict:
        env = {k: v for k, v in os.environ.items() if k != SETUP_FILE_ENV}
        # The installed copy first, then the plugins folder (as Airflow puts it on sys.path).
        env["PYTHONPATH"] = os.pathsep.join([installed_copy, os.path.join(ROOT, "plugins")])
        env.update(env_extra)
        proc = subprocess.run(
            [sys.executable, "-c", PLAN_ON_DATAFLOW], capture_output=True, text=True, cwd=tmp_path, env=env, timeout=120
        )
        assert proc.returncode == 0, proc.stderr[-3000:]
        return json.loads(proc.stdout.strip().splitlines()[-1])

    unset = plan_in({})
    assert unset["package"].startswith(installed_copy), unset  # the installed copy, not this checkout
    assert unset["derived_exists"] is False  # the old default named a file that is not there
    assert "setup_file" not in unset, unset
    assert SETUP_FILE_ENV in unset["error"]
    assert "'setup_file' param" in unset["error"]  # the DAG adds its Airflow Variable to this hint

    # The Docker image sets the variable to the setup.py it copies next to the sources.
    setup = tmp_path / "setup.py"
    shutil.copy(os.path.join(ROOT, "setup.py"), setup)
    assert plan_in({SETUP_FILE_ENV: str(setup)}) == {
        "setup_file": str(setup),
        "package": unset["package"],
        "derived_exists": False,
    }


ROOTS = ["/srv/data", "gs://acme-images/nightly", "gs://acme-out"]


def test_plan_confines_input_output_and_weights_to_the_allowed_roots(tmp_path):
    from beam_jobs.nightly.paths import PlanError
    from beam_jobs.nightly.plan import build_plan

    ok = {**OK, "output_root": "/srv/data/out/"}
    plan = build_plan(ok, "2026-11-20", "r", "/srv/data/images/x/../ds=2026-11-20/", roots=ROOTS)
    assert (plan["input"], plan["output_root"]) == ("/srv/data/images/ds=2026-11-20/*", "/srv/data/out")
    on_gcs = build_plan(
        {**ok, "output_root": "gs://acme-out/n//o"}, "2026-11-20", "r", "gs://acme-images/nightly/ds=1/*", roots=ROOTS
    )
    assert (on_gcs["input"], on_gcs["output_root"]) == ("gs://acme-images/nightly/ds=1/*", "gs://acme-out/n/o")

    def refusal(input_glob: str, **params) -> str:
        with pytest.raises(PlanError) as err:
            build_plan({**ok, **params}, "2026-11-20", "r", input_glob, roots=ROOTS)
        return str(err.value)

    roots_named = (
        "allowed roots (/srv/data, gs://acme-images/nightly, gs://acme-out; set by IMAGE_EMBEDDINGS_ALLOWED_ROOTS)"
    )
    assert roots_named in refusal("/etc/*")
    assert "input '/srv/data/../etc/*' is outside the allowed roots" in refusal("/srv/data/../etc/*")
    assert "input '/srv/database/*' is outside" in refusal("/srv/database/*")  # a prefix, not a folder of it
    assert "relative path" in refusal("images/ds=2026-11-20/*")
    assert "control characters" in refusal("/srv/data/images/a\nb/*")
    assert "output_root '/tmp/out' is outside" in refusal("/srv/data/i/*", output_root="/tmp/out")
    assert "'..' segments are not allowed" in refusal("gs://acme-images/nightly/../private/*")
    assert "input 'gs://acme-images/other/*' is outside" in refusal("gs://acme-images/other/*")
    assert "weights '/root/w.h5' is outside" in refusal("/srv/data/i/*", weights="/root/w.h5")
    assert "weights 'w.h5' is a relative path" in refusal("/srv/data/i/*", weights="w.h5")
    # Every problem at once: a person fixes the form in one go.
    both = refusal("relative/*", output_root="/etc")
    assert "input 'relative/*' is a relative path" in both
    assert "output_root '/etc' is outside" in both


def test_a_symlink_out_of_an_allowed_root_counts_where_it_points(tmp_path):
    from beam_jobs.nightly.paths import PlanError
    from beam_jobs.nightly.plan import build_plan

    data, outside = tmp_path / "data", tmp_path / "outside"
    data.mkdir()
    outside.mkdir()
    (data / "images").symlink_to(outside)
    ok = {**OK, "output_root": str(data / "out")}
    with pytest.raises(PlanError, match=r"input .* is outside the allowed roots"):
        build_plan(ok, "2026-11-20", "r", str(data / "images" / "*.jpg"), roots=[str(data)])
    assert build_plan(ok, "2026-11-20", "r", str(data / "night" / "*.jpg"), roots=[str(data)])["input"]


def test_allowed_roots_default_to_the_data_folder(monkeypatch):
    from beam_jobs.nightly.paths import ALLOWED_ROOTS_ENV, PlanError, allowed_roots

    monkeypatch.delenv(ALLOWED_ROOTS_ENV)
    monkeypatch.setenv("IMAGE_EMBEDDINGS_DATA", "/srv/data")
    assert allowed_roots() == ["/srv/data"]
    monkeypatch.delenv("IMAGE_EMBEDDINGS_DATA")
    assert allowed_roots() == ["/opt/airflow/data"]
    assert allowed_roots(" /srv/a/ , gs://b/p/ ,") == ["/srv/a", "gs://b/p"]
    for bad in ("relative/dir", "gs:///p", "gs://b/../c", "/srv/*"):
        with pytest.raises(PlanError, match=ALLOWED_ROOTS_ENV):
            allowed_roots(bad)


def test_flexrs_goal_reaches_dataflow_only():
    from beam_jobs.nightly.params import validate
    from beam_jobs.nightly.plan import build_plan

    params = {**OK, "runner": "DataflowRunner", "output_root": "gs://b/out", "flexrs_goal": "COST_OPTIMIZED"}
    dataflow = {**DATAFLOW, "setup_file": "/app/setup.py"}
    assert build_plan(params, "2026-11-20", "r", "gs://b/i/*", dataflow)["dataflow"]["flexrs_goal"] == "COST_OPTIMIZED"
    off = build_plan({**params, "flexrs_goal": None}, "2026-11-20", "r", "gs://b/i/*", dataflow)
    assert "flexrs_goal" not in off["dataflow"]
    assert build_plan({**params, "runner": "FnApiRunner", "output_root": "/o"}, "d", "r", "/x/*")["dataflow"] is None
    problems = validate({"flexrs_goal": "CHEAP"})
    assert len(problems) == 1
    assert problems[0].startswith("flexrs_goal 'CHEAP': 'CHEAP' is not one of [None, 'COST_OPTIMIZED'")
