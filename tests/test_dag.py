"""The nightly DAG: integrity, structure, parameters, and real dag.test() runs on sample images (SQLite, FnApiRunner).

Its modules have their own tests: test_runs.py (plan, checks, run record), test_alerts.py,
test_metrics.py, test_operators.py, test_paths.py, test_dataflow.py (Dataflow wiring) and test_ui.py.
"""

from __future__ import annotations

import glob
import json
import os
import subprocess
import sys
from datetime import UTC, datetime

import pyarrow.parquet as pq
import pytest

from tests.airflow_support import DAG_FILE, conf_for, load_dagbag, run_dag, stage_images, task_states

BEAM_TASKS = {"extract_embeddings", "reduce", "build_index"}


@pytest.fixture(scope="module")
def dagbag():
    return load_dagbag()


@pytest.fixture(scope="module")
def dag(dagbag):
    return dagbag.dags["image_embeddings"]


@pytest.fixture(scope="module")
def serialized(dag):
    """The DAG as the scheduler and API server see it (what the dag-processor stores)."""
    from airflow.serialization.serialized_objects import DagSerialization

    return DagSerialization.from_dict(DagSerialization.to_dict(dag))


# --------------------------------------------------------------------------- integrity


def test_dagbag_has_no_import_errors(dagbag):
    assert dagbag.import_errors == {}
    assert list(dagbag.dags) == ["image_embeddings"]


def test_dagbag_policy(dagbag):
    """What every DAG of this project carries: docs, tags, an owner, retries and alerts on every task."""
    for dag_id, dag in dagbag.dags.items():
        assert dag.tags, dag_id
        assert dag.description, dag_id
        assert len(dag.doc_md or "") > 200, dag_id
        assert dag.dagrun_timeout is not None, dag_id
        assert dag.on_failure_callback, dag_id
        assert {"owner", "retries"} <= set(dag.default_args), dag_id
        for task in dag.tasks:
            where = f"{dag_id}.{task.task_id}"
            assert task.owner == dag.default_args["owner"], where  # inherited, never Airflow's "airflow"
            assert isinstance(task.retries, int), where  # explicit or inherited from default_args
            if task.task_id == "night_status":  # it fails only to fail the run, which alerts by itself
                assert not task.on_failure_callback, where
                continue
            assert task.on_failure_callback, where


@pytest.mark.slow  # a fresh interpreter importing Airflow: 3-10 s
def test_dag_file_imports_no_tensorflow_beam_or_numpy():
    code = (
        "import importlib.util, sys, time; t = time.perf_counter();"
        f"spec = importlib.util.spec_from_file_location('d', {DAG_FILE!r});"
        "m = importlib.util.module_from_spec(spec); spec.loader.exec_module(m);"
        "print(sorted(x for x in ('tensorflow', 'apache_beam', 'numpy', 'keras', 'umap') if x in sys.modules))"
    )
    proc = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, env=os.environ, check=True)
    assert proc.stdout.strip().splitlines()[-1] == "[]"


def test_dag_serializes_with_its_xcom_args(dag, serialized):
    """What the dag-processor stores: the plan's XComArgs in the Beam tasks' options survive a round trip."""
    from airflow.serialization.serialized_objects import DagSerialization

    data = DagSerialization.to_dict(dag)
    assert set(serialized.task_dict) == set(dag.task_dict)
    tasks = {t["__var"]["task_id"]: t["__var"] for t in data["dag"]["tasks"]}
    # Both Beam tasks take their whole flag set from the functions the Kubeflow steps use (beam_jobs.nightly.launch).
    assert "task_ids='validate_extraction'" in tasks["build_index"]["pipeline_options"]
    assert "key='index_options'" in tasks["build_index"]["pipeline_options"]
    assert "key='extract_options'" in tasks["extract_embeddings"]["pipeline_options"]
    # The mapped reduce expands over what the reductions task returns (one instance per model and method).
    assert "'task_id': 'reductions'" in str(tasks["reduce"]["expand_input"])
    assert "'task_id': 'reductions'" in str(tasks["reduce_done"]["expand_input"])


def test_schedule_and_defaults(dag):
    from airflow.sdk import CronDataIntervalTimetable

    assert isinstance(dag.timetable, CronDataIntervalTimetable)
    assert (dag.timetable.expression, str(dag.timetable.timezone)) == ("0 3 * * *", "UTC")
    assert dag.catchup is False
    assert dag.max_active_runs == 1
    assert dag.start_date == datetime(2026, 11, 1, tzinfo=UTC)
    assert "Nightly image embeddings" in (dag.doc_md or "")
    assert "DataflowJobDoneSensor" in (dag.doc_md or "")
    assert {"ml", "embeddings", "beam", "nightly"} <= set(dag.tags)
    assert dag.owner == "ml-platform"


def test_structure(dag):
    def down(task_id):
        return set(dag.get_task(task_id).downstream_task_ids) - {"night_status"}

    # Every task is upstream of night_status, which fails the run when any of them failed (below).
    assert {t.task_id for t in dag.get_task("night_status").upstream_list} == set(dag.task_ids) - {"night_status"}
    assert dag.get_task("night_status").trigger_rule == "one_failed"

    # The Beam tasks and *_done sensors take plan's values as XComArgs, which makes them its
    # direct downstream too (besides the chain plan -> wait_for_input -> ...).
    assert down("plan") == {
        "wait_for_input",
        "validate_extraction",
        "reductions",
        "compare_models",
        "choose_index",
        "publish",
        "publish_store",
        "report",
    } | {*BEAM_TASKS, *(f"{t}_done" for t in BEAM_TASKS)}
    assert down("wait_for_input") == {"extract_embeddings"}
    assert down("extract_embeddings") == {"extract_embeddings_done"}
    assert down("extract_embeddings_done") == {"validate_extraction"}
    assert down("validate_extraction") == {"reductions", "compare_models", "choose_index", "build_index", "publish"}
    assert down("choose_index") == {"build_index"}
    assert down("build_index") == {"build_index_done"}
    assert down("build_index_done") == {"publish"}
    # One mapped reduce (and its wait) for every (model, method) pair, whatever the night asks for.
    assert down("reductions") == {"reduce", "reduce_done"}
    assert down("reduce") == {"reduce_done"}
    assert down("compare_models") == {"publish"}
    # The store gets the night after its maps (their coordinates go in too), beside publish.
    assert down("reduce_done") == {"publish", "publish_store"}
    assert dag.get_task("publish").trigger_rule == "none_failed_min_one_success"
    # The report comes after publish whatever happened before it (a rejected night still has failures to show).
    assert down("publish") == {"report"}
    assert dag.get_task("report").trigger_rule == "all_done"
    assert [o.name for o in dag.get_task("publish").outlets] == ["image_embeddings_maps"]


def test_the_run_that_fires_at_three_embeds_the_day_that_ended(serialized):
    """The scheduled run firing on 2026-12-07 at 03:00 embeds ds=2026-12-06, as the plan task derives ds
    (the scheduler's own timetable: the serialized DAG's)."""
    from airflow.timetables.base import DataInterval, TimeRestriction

    dag = serialized
    fired = datetime(2026, 12, 7, 3, tzinfo=UTC)
    previous = DataInterval(datetime(2026, 12, 5, 3, tzinfo=UTC), datetime(2026, 12, 6, 3, tzinfo=UTC))
    restriction = TimeRestriction(earliest=dag.start_date, latest=None, catchup=True)
    info = dag.timetable.next_dagrun_info(last_automated_data_interval=previous, restriction=restriction)
    assert info.run_after == fired
    assert info.logical_date.strftime("%Y-%m-%d") == "2026-12-06"
    assert info.data_interval.end == fired
    # A backfill over 2026-12-01..03 makes runs whose logical dates are those days: the dates it names.
    # (what airflow.models.backfill lists for `airflow backfill create --from-date 2026-12-01 --to-date 2026-12-03`)
    backfill = dag.iter_dagrun_infos_between(datetime(2026, 12, 1, tzinfo=UTC), datetime(2026, 12, 3, 23, tzinfo=UTC))
    assert [i.logical_date.strftime("%Y-%m-%d") for i in backfill] == ["2026-12-01", "2026-12-02", "2026-12-03"]


def test_retries_backoff_and_fail_fast_tasks(dag):
    retries = {task.task_id: task.retries for task in dag.tasks}
    # Decisions on parameters and data are not transient: they fail once, without retries. Jobs and the
    # waits on them retry twice (a retried Beam task replaces its output whole); publish once.
    assert retries == {
        "plan": 0,
        "wait_for_input": 0,
        "validate_extraction": 0,
        "reductions": 0,
        "choose_index": 0,
        "extract_embeddings": 2,
        "extract_embeddings_done": 2,
        "reduce": 2,
        "reduce_done": 2,
        "build_index": 2,
        "build_index_done": 2,
        "compare_models": 2,
        "publish": 1,
        "publish_store": 1,
        "report": 0,
        "night_status": 0,
    }
    for task_id in BEAM_TASKS:
        task = dag.get_task(task_id)
        assert task.retry_exponential_backoff == 2.0
        assert task.max_retry_delay.total_seconds() == 1800
        assert task.execution_timeout.total_seconds() == {"extract_embeddings": 4 * 3600}.get(task_id, 2 * 3600)
    # compare_models runs in the Airflow worker: bounded, so a stuck read cannot hold a slot all night.
    assert dag.get_task("compare_models").execution_timeout.total_seconds() == 3600


def test_stateful_tasks_wait_for_the_night_before(dag):
    """In a backfill, extractions run side by side; what reads earlier nights runs one night at a time."""
    for task_id in ("reduce", "build_index"):
        task = dag.get_task(task_id)
        assert task.depends_on_past, task_id
        assert task.wait_for_downstream, task_id
    for task_id in ("plan", "wait_for_input", "extract_embeddings", "extract_embeddings_done", "validate_extraction"):
        assert not dag.get_task(task_id).depends_on_past, task_id


def test_a_free_slot_goes_to_the_night_furthest_along(serialized):
    """weight_rule "upstream": a task outranks every task before it, as the scheduler weighs them, so in a backfill
    the oldest night's ordered reduce and build_index go before a later night's extraction."""
    from types import SimpleNamespace

    from airflow.task.priority_strategy import validate_and_load_priority_weight_strategy

    def weight(task_id: str) -> int:
        task = serialized.get_task(task_id)
        return validate_and_load_priority_weight_strategy(task.weight_rule).get_weight(SimpleNamespace(task=task))

    for task in serialized.tasks:
        for upstream_id in task.get_flat_relative_ids(upstream=True):
            assert weight(task.task_id) > weight(upstream_id), (task.task_id, upstream_id)
    assert weight("reduce") > weight("extract_embeddings") > weight("plan")


def test_beam_tasks_launch_the_job_modules(dag):
    from image_embeddings_airflow.operators import NightlyBeamOperator

    for task_id, module in (
        ("extract_embeddings", "beam_jobs.extract_embeddings"),
        ("build_index", "beam_jobs.build_index"),
    ):
        task = dag.get_task(task_id)
        assert isinstance(task, NightlyBeamOperator)
        assert task.py_file == module
        assert task.py_options == ["-m"]
        assert task.runner == "{{ params.runner }}"
    reduce = dag.get_task("reduce")  # mapped: its class and the arguments every instance shares
    assert reduce.operator_class is NightlyBeamOperator
    assert reduce.partial_kwargs["job"] == "reduce_dim"
    assert reduce.partial_kwargs["runner"] == "{{ params.runner }}"
    assert "ti.map_index" in reduce.partial_kwargs["dataflow_config"]["job_name"]


def test_params_defaults_are_valid_and_come_from_the_contract(dag):
    from beam_jobs import contract

    dag.params.validate()
    assert set(dag.params) >= {
        "input",
        "output_root",
        "models",
        "weights",
        "methods",
        "runner",
        "batch_size",
        "max_failure_rate",
    }
    assert "{{ ds }}" in dag.params["input"]

    def schema(name):
        return dag.params.get_param(name).schema

    # The form offers exactly what the jobs accept (beam_jobs.contract, imported: no copies to keep equal).
    assert schema("models")["items"]["enum"] == list(contract.MODELS)
    assert dag.params["models"] == [contract.DEFAULT_MODEL]
    assert schema("batch_size")["maximum"] == contract.MAX_BATCH_SIZE
    assert dag.params["batch_size"] == contract.DEFAULT_BATCH_SIZE
    assert schema("methods")["items"]["enum"] == list(contract.METHODS)
    assert schema("runner")["enum"] == list(contract.RUNNERS)
    assert dag.params["runner"] == contract.DEFAULT_RUNNER
    for name in dag.params:
        assert dag.params.get_param(name).description, name


@pytest.mark.parametrize(
    "bad",
    [
        {"methods": ["tsne"]},
        {"methods": []},
        {"methods": ["pca", "pca"]},
        {"runner": "SparkRunner"},
        {"batch_size": 0},
        {"batch_size": 1025},
        {"batch_size": "32"},
        {"max_failure_rate": 1.5},
        {"models": ["vgg16"]},
        {"models": []},
        {"models": ["resnet50", "resnet50"]},
        {"weights": ""},
        {"output_root": ""},
    ],
)
def test_trigger_form_refuses_bad_values(dag, serialized, bad):
    """Refused by the Param schemas, so the plan task never sees them (it no longer re-checks them)."""
    from airflow.sdk.definitions.param import ParamsDict
    from airflow.sdk.exceptions import ParamValidationError

    params = ParamsDict({k: dag.params.get_param(k) for k in dag.params})
    with pytest.raises(ParamValidationError):  # update() checks each value against its schema
        params.update(bad)
    # What Airflow does with a run's conf when it creates the run (trigger form, REST API, backfill).
    with pytest.raises(ParamValidationError):
        serialized.params.deep_merge(bad).validate()
    serialized.params.deep_merge({}).validate()  # the defaults pass


# --------------------------------------------------------------------------- real runs


def parquet_rows(folder: str, prefix: str) -> list[dict]:
    rows = []
    for path in sorted(glob.glob(os.path.join(folder, f"{prefix}-*.parquet"))):
        rows += pq.read_table(path).to_pylist()
    return rows


NIGHT = "2026-11-20"  # 12 photos and a broken file, both methods
RERUN = "2026-11-18"  # 3 photos, then a late one and the date run again (PCA only), the re-run with two models
TWO_MODELS = ["resnet50", "mobilenet_v3_large"]


@pytest.fixture(scope="module")
def nights(dag, airflow_db, sample_dir, tmp_path_factory):
    """Three dag.test() runs into one output root, asserted on by the tests below: a whole night with both
    methods, another date, and that date re-run after a late image arrived (a backfill's re-run), the re-run
    with a second, cheap model added (one extraction pass, a map each, the comparison report). Each publishes
    to the Lance store (store lance, store_uri unset: <output_root>/store).

    The other date runs with reference_policy fixed: its first run fits the reference, the re-run only
    transforms with it; and its photos are among the first night's, so the first run's skip_known reuses
    their vectors (the re-run's two models embed every image: skip_known is for one-model runs).
    """
    root = tmp_path_factory.mktemp("nights")
    images = {NIGHT: stage_images(sample_dir, root, NIGHT, count=12, broken=True)}
    night = run_dag(dag, NIGHT, conf_for(root, methods=["pca", "umap"], index=True, store="lance"))
    stage_images(sample_dir, root, RERUN, 3)
    fixed = conf_for(root, reference_policy="fixed", store="lance")
    first = run_dag(dag, RERUN, fixed)
    first_states = task_states(first)  # dag.test() of the same date again replaces this run's task instances
    projection = root / "out" / "projections" / "method=pca" / f"ds={RERUN}"
    first_coords = {r["image_uri"]: (r["x"], r["y"]) for r in parquet_rows(str(projection), "projection")}
    images[RERUN] = stage_images(sample_dir, root, RERUN, 4)  # the late image arrives
    first_manifest = json.loads((root / "out" / "embeddings" / f"ds={RERUN}" / "manifest.json").read_text())
    again = run_dag(dag, RERUN, {**fixed, "models": TWO_MODELS})
    return (
        root,
        images,
        {
            "night": night,
            "first": first,
            "again": again,
            "first_coords": first_coords,
            "first_manifest": first_manifest,
            "first_states": first_states,
        },
    )


@pytest.mark.slow
def test_nightly_run_end_to_end(nights):
    root, images, runs = nights
    ds, dr, images = NIGHT, runs["night"], images[NIGHT]
    assert str(dr.state) == "success", task_states(dr)
    # Local runner: the jobs ran inside the Beam tasks; the *_done tasks pass straight through.
    assert {t: s for t, s in task_states(dr).items() if t.endswith("_done")} == dict.fromkeys(
        ("extract_embeddings_done", "reduce_done", "build_index_done"), "success"
    )
    assert sorted(ti.map_index for ti in dr.get_task_instances() if ti.task_id == "reduce") == [0, 1]
    assert task_states(dr)["compare_models"] == "skipped"  # one model
    out = root / "out"
    emb = out / "embeddings" / f"ds={ds}"
    rows = parquet_rows(str(emb), "embeddings")
    assert sorted(r["image_uri"] for r in rows) == images
    assert {r["run_id"] for r in rows} == {dr.run_id}
    manifest = json.loads((emb / "manifest.json").read_text())
    assert (manifest["inputs"], manifest["embedded"], manifest["failed"]) == (13, 12, 1)
    for method in ("pca", "umap"):
        folder = out / "projections" / f"method={method}" / f"ds={ds}"
        assert sorted(r["image_uri"] for r in parquet_rows(str(folder), "projection")) == images
        assert (folder / "map.png").stat().st_size > 10_000
        assert (folder / "map.html").exists()
    record = json.loads((out / "runs" / f"ds={ds}" / "run.json").read_text())
    assert record["embeddings"]["embedded"] == 12
    assert set(record["projections"]) == {"pca", "umap"}
    assert record["projections"]["umap"]["map_html"].endswith(f"method=umap/ds={ds}/map.html")
    assert "dataflow_jobs" not in record
    # The index branch: the night's 12 images, exact search at this size, counts in the record.
    index = json.loads((out / "index" / f"ds={ds}" / "manifest.json").read_text())
    assert (index["rows"], index["parameters"]["kind"], index["run_id"]) == (12, "flat", dr.run_id)
    assert record["index"]["rows"] == 12
    assert record["index"]["dir"].endswith(f"index/ds={ds}")
    assert record["index"]["near_duplicate_pairs"] == index["near_duplicate_pairs"]

    from airflow.models.asset import AssetEvent, AssetModel
    from airflow.utils.session import create_session
    from sqlalchemy import select

    with create_session() as session:
        events = session.scalars(
            select(AssetEvent)
            .join(AssetModel, AssetModel.id == AssetEvent.asset_id)
            .where(AssetModel.name == "image_embeddings_maps")
        ).all()
        extras = [e.extra for e in events if e.source_run_id == dr.run_id]
    assert len(extras) == 1
    assert extras[0]["embeddings"]["inputs"] == 13
    assert extras[0]["projections"]["pca"]["rows"] == 12


@pytest.mark.slow
def test_rerun_of_a_date_replaces_its_partitions_whole(nights):
    """A date run twice (a late image arrived): one copy of every row, from the second run only,
    and exactly one folder per date under each output (no staging or trash folders beside them)."""
    root, images, runs = nights
    for name in ("first", "again"):
        assert str(runs[name].state) == "success", (name, task_states(runs[name]))
    out = root / "out"
    emb = parquet_rows(str(out / "embeddings" / f"ds={RERUN}"), "embeddings")
    emb = [r for r in emb if r["model_id"].startswith("resnet50/")]  # the re-run added a second model
    proj = parquet_rows(str(out / "projections" / "method=pca" / f"ds={RERUN}"), "projection")
    assert sorted(r["image_uri"] for r in emb) == images[RERUN]
    assert sorted(r["image_uri"] for r in proj) == images[RERUN]
    assert {r["run_id"] for r in emb} == {r["run_id"] for r in proj} == {runs["again"].run_id}
    # The other date is untouched by the re-run.
    night = parquet_rows(str(out / "embeddings" / f"ds={NIGHT}"), "embeddings")
    assert sorted(r["image_uri"] for r in night) == images[NIGHT]
    dates = sorted([f"ds={NIGHT}", f"ds={RERUN}"])
    assert sorted(os.listdir(out / "embeddings")) == dates
    assert sorted(os.listdir(out / "projections" / "method=pca")) == dates
    assert sorted(os.listdir(out / "projections" / "method=umap")) == [f"ds={NIGHT}"]
    # reference_policy fixed: the re-run drew the three photos where the first run had, in the saved frame.
    again = {r["image_uri"]: (r["x"], r["y"]) for r in proj}
    # Not bit-equal: the first run reused the first night's vectors (skip_known), the two-model re-run computed
    # them again, in other batches (float noise ~1e-6); a refitted frame would move them by whole units.
    for uri, (x, y) in runs["first_coords"].items():
        assert again[uri] == pytest.approx((x, y), abs=1e-3), uri
    record = json.loads((out / "runs" / f"ds={RERUN}" / "run.json").read_text())
    reference = record["projections"]["pca"]["reference"]
    assert reference["dir"] == str(out / "references" / "method=pca" / "fixed")
    assert (reference["mode"], reference["partitions"]) == ("loaded", [RERUN])
    assert record["projections"]["pca"]["drift"]["rows"] == 4
    # skip_known (on by default): the first run's photos were embedded on the first night already.
    first = runs["first_manifest"]
    assert (first["reused"], first["computed"], first["known_partitions"]) == (3, 0, [f"ds={NIGHT}"])
    manifest = json.loads((out / "embeddings" / f"ds={RERUN}" / "manifest.json").read_text())
    assert manifest["skip_known"] is False  # two models: each embeds every image
    assert manifest["reused"] == 0


@pytest.mark.slow
def test_each_night_is_published_to_the_lance_store_once(nights):
    """store lance: every run's publish_store wrote its date into the store; the re-run replaced its date (3
    rows, then 4), the second model got its own table, and the maps' coordinates are the projections'."""
    import lancedb

    from beam_jobs.publish_store.config import table_name

    root, images, runs = nights
    states = {"night": task_states(runs["night"]), "first": runs["first_states"], "again": task_states(runs["again"])}
    for name, by_task in states.items():
        assert by_task.get("publish_store") == "success", (name, by_task)
    out = root / "out"
    manifest = json.loads((out / "embeddings" / f"ds={RERUN}" / "manifest.json").read_text())
    ids = {name: model["model_id"] for name, model in manifest["models"].items()}
    db = lancedb.connect(str(out / "store"))
    primary = db.open_table(table_name(ids[TWO_MODELS[0]])).to_arrow().to_pylist()
    by_date = {ds: sorted(r["image_uri"] for r in primary if r["ds"] == ds) for ds in (NIGHT, RERUN)}
    assert by_date == {NIGHT: images[NIGHT], RERUN: images[RERUN]}  # each date once: the re-run replaced its 3
    assert {r["run_id"] for r in primary if r["ds"] == RERUN} == {runs["again"].run_id}
    second = db.open_table(table_name(ids[TWO_MODELS[1]])).to_arrow().to_pylist()
    assert sorted(r["image_uri"] for r in second) == images[RERUN]
    # Each model's rows carry its own map's coordinates.
    pca = {
        r["image_uri"]: (r["x"], r["y"])
        for r in parquet_rows(str(out / "projections" / "method=pca" / f"ds={NIGHT}"), "projection")
    }
    # float32 in both: the same values exactly
    assert {r["image_uri"]: (r["pca_x"], r["pca_y"]) for r in primary if r["ds"] == NIGHT} == pca
    assert all(r["umap_x"] is not None for r in primary if r["ds"] == NIGHT)
    mobile = {
        r["image_uri"]: (r["x"], r["y"])
        for r in parquet_rows(
            str(out / "projections" / f"model={TWO_MODELS[1]}" / "method=pca" / f"ds={RERUN}"), "projection"
        )
    }
    assert {r["image_uri"]: (r["pca_x"], r["pca_y"]) for r in second} == mobile


@pytest.mark.slow
def test_two_models_one_night_maps_each_and_compares_them(nights):
    """The re-run with models=[resnet50, mobilenet_v3_large]: both models' rows in the one partition, a PCA map
    each (the first where a single-model night puts it), the comparison report, the record grouped by model."""
    root, images, runs = nights
    dr = runs["again"]
    assert str(dr.state) == "success", task_states(dr)
    assert task_states(dr)["compare_models"] == "success"
    out = root / "out"
    manifest = json.loads((out / "embeddings" / f"ds={RERUN}" / "manifest.json").read_text())
    assert set(manifest["models"]) == set(TWO_MODELS)  # JSON keys are sorted; the top level names the first
    assert manifest["model"] == TWO_MODELS[0]
    rows = parquet_rows(str(out / "embeddings" / f"ds={RERUN}"), "embeddings")
    for name, dim in zip(TWO_MODELS, (2048, 960), strict=True):
        mine = [r for r in rows if r["model_id"] == manifest["models"][name]["model_id"]]
        assert sorted(r["image_uri"] for r in mine) == images[RERUN]
        assert {len(r["embedding"]) for r in mine} == {dim}
    second = out / "projections" / "model=mobilenet_v3_large" / "method=pca" / f"ds={RERUN}"
    second_rows = parquet_rows(str(second), "projection")
    assert {r["model_id"] for r in second_rows} == {manifest["models"]["mobilenet_v3_large"]["model_id"]}
    assert len(second_rows) == len(images[RERUN])
    comparison = json.loads((out / "comparisons" / f"ds={RERUN}" / "comparison.json").read_text())
    (pair,) = comparison["comparisons"]
    assert pair["models"] == TWO_MODELS
    assert pair["images"] == len(images[RERUN])
    assert (out / "comparisons" / f"ds={RERUN}" / "comparison.png").stat().st_size > 1000
    record = json.loads((out / "runs" / f"ds={RERUN}" / "run.json").read_text())
    assert set(record["models"]) == set(TWO_MODELS)
    assert record["models"]["mobilenet_v3_large"]["projections"]["pca"]["dir"] == str(second)
    assert record["models"]["resnet50"]["projections"]["pca"] == record["projections"]["pca"]
    assert record["comparison"]["pairs"][0]["models"] == TWO_MODELS
    assert record["model_id"] == manifest["models"]["resnet50"]["model_id"]


@pytest.mark.slow
def test_invalid_param_is_refused_before_any_job_starts(refused_night):
    # The run (shared with test_alerts, which checks the alert it posted) is in conftest.refused_night.
    dr, states, root, _ = refused_night
    assert str(dr.state) == "failed"
    assert states["plan"] == "failed"
    assert states["extract_embeddings"] in ("upstream_failed", "None")
    assert not (root / "out").exists()


@pytest.mark.slow
def test_missing_input_fails_clearly_without_running_jobs(dag, airflow_db, tmp_path):
    dr = run_dag(dag, "2026-11-22", conf_for(tmp_path))
    states = task_states(dr)
    assert str(dr.state) == "failed"
    assert states["plan"] == "success"
    assert states["wait_for_input"] == "failed"
    assert states["extract_embeddings"] == "upstream_failed"
    assert not (tmp_path / "out").exists()
