"""The one trigger-param table (beam_jobs.nightly.params): what the Airflow Params, the Kubeflow signature, the
Kubeflow plan's validation and the form read. Airflow's own Param validation is the oracle."""

from __future__ import annotations

import dataclasses
import inspect

import pytest

from beam_jobs.config import ExtractConfig, IndexConfig, ReduceConfig
from beam_jobs.nightly import params as table

DEPLOYMENT = table.Deployment(data="/data", weights="random", roots=["/data"])


def _bad_values(param: table.TriggerParam) -> list:
    """Values each param's schema must refuse: the wrong type, past each bound, outside the choices."""
    schema = param.schema
    kind = schema["type"]
    kinds = kind if isinstance(kind, list) else [kind]
    bad: list = []
    if "string" not in kinds:
        bad.append("text")
    if "null" not in kinds:
        bad.append(None)
    if kinds == ["boolean"]:
        bad.append(3)
    if "minimum" in schema:
        bad.append(schema["minimum"] - 1)
    if "maximum" in schema:
        bad.append(schema["maximum"] + 1)
    if "integer" in kinds:
        bad.append(1.5)
    if schema.get("enum"):
        bad.append("no-such-choice")
    if kinds == ["array"]:
        bad += [[], ["no-such-choice"], [schema["items"]["enum"][0]] * 2, schema["items"]["enum"][0]]
    if param.name in ("input", "output_root"):
        bad += ["", "/elsewhere/x", "/data/../etc/passwd"]
    if param.name == "input_marker":
        bad += ["a/b", "*.done"]
    return bad


CASES = [(name, value) for name, p in table.table(DEPLOYMENT).items() for value in _bad_values(p)]


@pytest.mark.parametrize(("name", "value"), CASES, ids=[f"{n}={v!r}" for n, v in CASES])
def test_each_bad_value_is_refused_by_airflows_param_and_by_the_kubeflow_plan(name, value):
    from airflow.sdk.exceptions import ParamValidationError

    from image_embeddings_airflow.params import trigger_params

    with pytest.raises(ParamValidationError):
        trigger_params(DEPLOYMENT)[name].resolve(value)
    problems = table.validate({name: value}, DEPLOYMENT)
    assert problems, f"{name}={value!r} passed the table's validation but Airflow refuses it"
    assert all(p.startswith(f"{name} ") for p in problems)


def test_every_default_passes_airflow_and_the_table_and_none_marks_the_form_invalid():
    from image_embeddings_airflow.params import trigger_params

    rows = table.table(DEPLOYMENT)
    for name, param in trigger_params(DEPLOYMENT).items():
        assert param.resolve() == rows[name].default
    assert table.validate(table.defaults(DEPLOYMENT), DEPLOYMENT) == []
    # Airflow's trigger form: a non-null type with '' or None is a missing required field.
    assert table.form_problems(rows) == []
    broken = {**rows, "x": dataclasses.replace(rows["runner"], name="x", default="")}
    assert table.form_problems(broken) == ["x: default '' with a non-null type marks the form invalid"]


def test_every_param_has_a_title_and_one_of_the_forms_sections():
    from image_embeddings_airflow.params import trigger_params

    params = trigger_params(DEPLOYMENT)
    sections = set()
    for name, param in params.items():
        assert param.schema.get("title"), name
        assert param.schema.get("section") in table.SECTIONS, name
        assert param.description, name
        sections.add(param.schema["section"])
    assert sections == set(table.SECTIONS)
    assert len(sections) >= 5


def test_job_flag_rows_take_default_and_range_from_the_jobs_config():
    rows = table.table(DEPLOYMENT)
    flags = {
        "batch_size": (ExtractConfig, "batch_size"),
        "engine": (ExtractConfig, "engine"),
        "precision": (ExtractConfig, "precision"),
        "map_points": (ReduceConfig, "html_points"),
        "thumbnail_budget_mb": (ReduceConfig, "thumbnail_budget_mb"),
        "mosaic_grid": (ReduceConfig, "mosaic_grid"),
        "index_window_days": (IndexConfig, "window_days"),
        "duplicate_threshold": (IndexConfig, "duplicate_threshold"),
    }
    for name, (config, flag) in flags.items():
        declared = {f.name: f for f in dataclasses.fields(config)}[flag]
        assert rows[name].default == declared.default, name
        check = declared.metadata.get("check")
        if check is not None:
            assert rows[name].schema["minimum"] == check.minimum, name
            assert rows[name].schema.get("maximum") == check.maximum, name
            # The job refuses exactly what the form refuses at the bounds.
            assert check(check.minimum) is None
            assert check(check.minimum - 1) is not None
    assert rows["mosaic_grid"].schema["maximum"] == 64


def test_the_kubeflow_signature_takes_every_default_from_the_table():
    pytest.importorskip("kfp")
    from pipelines import image_embeddings_kfp as kfp_pipeline

    signature = inspect.signature(kfp_pipeline.image_embeddings.pipeline_func)
    rows = table.table()
    assert set(signature.parameters) - {"ds"} == set(rows)
    for name, parameter in signature.parameters.items():
        if name in ("ds", "input", "output_root"):
            continue
        expected = "" if rows[name].default is None else rows[name].default
        if name == "sdk_container_image":
            expected = kfp_pipeline.WORKER_IMAGE
        assert parameter.default == expected, name


def test_kubeflow_unset_strings_are_nulls_for_the_table():
    rows = table.table(DEPLOYMENT)
    values = table.unset_as_null({"reference": "", "flexrs_goal": "", "input_marker": "", "x": ""}, rows)
    assert values == {"reference": None, "flexrs_goal": None, "input_marker": "", "x": ""}
    # A string param that is not nullable stays a string: '' is refused, not taken for unset.
    (problem,) = table.validate(values, DEPLOYMENT)
    assert problem.startswith("input_marker '': '' does not match")
