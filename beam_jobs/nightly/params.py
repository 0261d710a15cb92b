"""The night's trigger params, each declared once: default, JSON schema, title, form section, description.

Everything that shows or checks a trigger param reads this table: the Airflow Params of the DAG (grouped
by ``section`` in the trigger form), the Kubeflow pipeline's signature defaults, the Kubeflow plan step's
validation (``validate``, with ``jsonschema``, the library Airflow's Params use) and the docs' param
reference. Rows that are job flags take their default, range and choices from ``beam_jobs.config``.

Standard library only at import time, so the DAG file still parses fast; ``jsonschema`` is imported by
``validate`` alone.

A param that may be left unset is nullable (``["null", ...]`` with a ``None`` default): Airflow's trigger
form counts a non-null type with an empty value as a missing required field and disables its Trigger
button. The plan treats ``None`` as unset.
"""

from __future__ import annotations

import dataclasses
import os
from dataclasses import dataclass, field
from typing import Any

from beam_jobs.config import ExtractConfig, IndexConfig, Range, ReduceConfig
from beam_jobs.contract import (
    DEFAULT_INPUT_MARKER,
    DEFAULT_INPUT_READY,
    DEFAULT_MODEL,
    DEFAULT_RUNNER,
    DEFAULT_SETTLE_MINUTES,
    FLEXRS_GOALS,
    INPUT_READY_RULES,
    METHODS,
    MODEL_CHOICES_TEXT,
    MODELS,
    REFERENCE_POLICIES,
    RUNNERS,
    WEIGHTS_IMAGENET,
    WEIGHTS_RANDOM,
    partition,
)
from beam_jobs.nightly.frame import DRIFT_DEFAULTS, REFERENCE_DEFAULTS
from beam_jobs.nightly.paths import DATA_ENV, DEFAULT_DATA, KEYWORD_WEIGHTS, PlanError, allowed_roots, confine
from beam_jobs.nightly.paths import roots_pattern as _roots_pattern
from beam_jobs.publish_store.config import BIGQUERY_INDEX_TYPES, STORE_NONE, STORES

# The form's sections, in the order a nightly user looks for them.
NIGHT = "Night"
MODELS_SECTION = "Models"
MAPS = "Maps"
FRAME = "2D frame and drift"
INDEX = "Similarity index"
REPORT = "Report and store"
RUNNER = "Runner and cost"
SECTIONS = (NIGHT, MODELS_SECTION, MAPS, FRAME, INDEX, REPORT, RUNNER)
WEIGHTS_ENV = "IMAGE_EMBEDDINGS_WEIGHTS"


@dataclass(frozen=True)
class TriggerParam:
    """One trigger param. ``schema`` is its JSON schema without the default (type, enum, bounds, items)."""

    name: str
    default: Any
    schema: dict[str, Any]
    title: str
    section: str
    description: str

    @property
    def nullable(self) -> bool:
        kind = self.schema.get("type")
        return isinstance(kind, list) and "null" in kind

    def json_schema(self) -> dict[str, Any]:
        return {**self.schema, "default": self.default, "title": self.title, "description": self.description}


@dataclass(frozen=True)
class Deployment:
    """What a deployment sets (not the person triggering): the data folder, the default weights and where
    runs may read and write. Paths in the table must fall under ``roots``."""

    data: str = DEFAULT_DATA
    weights: str = WEIGHTS_IMAGENET
    roots: list[str] = field(default_factory=list)

    @classmethod
    def from_environment(cls) -> Deployment:
        """``IMAGE_EMBEDDINGS_DATA``, ``IMAGE_EMBEDDINGS_WEIGHTS``, ``IMAGE_EMBEDDINGS_ALLOWED_ROOTS``; a bad
        roots setting leaves ``roots`` empty (the plan refuses every run with the reason)."""
        try:
            roots = allowed_roots()
        except PlanError:
            roots = []
        return cls(os.environ.get(DATA_ENV, DEFAULT_DATA), os.environ.get(WEIGHTS_ENV, WEIGHTS_IMAGENET), roots)

    def path_rules(self) -> tuple[dict[str, str], dict[str, str]]:
        """JSON-schema ``pattern``s for paths and for weights (a keyword or a path), from the roots."""
        if not self.roots:
            return {}, {}
        form_roots = list(self.roots)
        if confine("the data folder", self.data, self.roots)[1]:
            # A scheduled DAG whose defaults fail their own schemas does not load: let the default paths
            # through here; the plan refuses them, naming the roots, on every run that uses them.
            form_roots.append(self.data)
        return {"pattern": _roots_pattern(form_roots)}, {"pattern": _roots_pattern(form_roots, KEYWORD_WEIGHTS)}


def _flag(config: type, name: str) -> dataclasses.Field:
    return {f.name: f for f in dataclasses.fields(config)}[name]


def _job_flag(config: type, name: str, kind: str) -> tuple[Any, dict[str, Any]]:
    """A job flag's default and JSON schema (type, bounds, choices), as ``beam_jobs.config`` declares it."""
    flag = _flag(config, name)
    schema: dict[str, Any] = {"type": kind}
    check = flag.metadata.get("check")
    if isinstance(check, Range):
        schema["minimum"] = check.minimum
        if check.maximum is not None:
            schema["maximum"] = check.maximum
    if flag.metadata.get("choices") is not None:
        schema["enum"] = list(flag.metadata["choices"])
    return flag.default, schema


def _choices(values: tuple[str, ...] | list[str]) -> dict[str, Any]:
    return {"type": "array", "items": {"type": "string", "enum": list(values)}, "minItems": 1, "uniqueItems": True}


def table(deployment: Deployment | None = None) -> dict[str, TriggerParam]:
    """Every trigger param, in form order (section by section)."""
    dep = deployment or Deployment.from_environment()
    roots_text = ", ".join(dep.roots)
    path_rule, weights_rule = dep.path_rules()
    batch_default, batch_schema = _job_flag(ExtractConfig, "batch_size", "integer")
    engine_default, engine_schema = _job_flag(ExtractConfig, "engine", "string")
    precision_default, precision_schema = _job_flag(ExtractConfig, "precision", "string")
    points_default, points_schema = _job_flag(ReduceConfig, "html_points", "integer")
    budget_default, budget_schema = _job_flag(ReduceConfig, "thumbnail_budget_mb", "number")
    grid_default, grid_schema = _job_flag(ReduceConfig, "mosaic_grid", "integer")
    window_default, window_schema = _job_flag(IndexConfig, "window_days", "integer")
    dup_default, dup_schema = _job_flag(IndexConfig, "duplicate_threshold", "number")
    days = {"type": "integer", "minimum": 1, "maximum": 366}
    share = {"type": "number", "minimum": 0, "maximum": 1}
    rows: list[tuple[str, Any, dict[str, Any], str, str, str]] = [
        # name, default, schema, title, section, description
        ("input", f"{dep.data}/images/{partition('{{ ds }}')}/*", {"type": "string", "minLength": 1, **path_rule},
         "Input images", NIGHT,
         "Glob of the night's images, or a folder / gs:// prefix ending in '/'. '{{ ds }}' becomes the date the "
         f"night embeds (a scheduled run: the day that ended). Must be under: {roots_text}."),
        ("output_root", f"{dep.data}/out", {"type": "string", "minLength": 1, **path_rule},
         "Output root", NIGHT,
         "Embeddings, projections, indexes and run records are written under this folder (local or gs://). "
         f"Must be under: {roots_text}."),
        ("input_ready", DEFAULT_INPUT_READY, {"type": "string", "enum": list(INPUT_READY_RULES)},
         "Input complete when", NIGHT,
         "'settled': the matching files' count and sizes unchanged for input_settle_minutes; 'marker': the "
         "input_marker file is beside them (the uploader writes it last); 'any': as soon as one file matches "
         "(a night still uploading is embedded half)."),
        ("input_wait_minutes", 360, {"type": "integer", "minimum": 0, "maximum": 24 * 60},
         "Wait for input (minutes)", NIGHT,
         "How long to wait for the input to be ready; 0 fails at once (useful in backfills)."),
        ("input_settle_minutes", DEFAULT_SETTLE_MINUTES, {"type": "number", "minimum": 0, "maximum": 24 * 60},
         "Settle time (minutes)", NIGHT,
         "input_ready 'settled': minutes without any change to the input before the run starts."),
        ("input_marker", DEFAULT_INPUT_MARKER, {"type": "string", "pattern": r"^[^/*?\[\]\x00-\x1f]+$"},
         "Marker file", NIGHT,
         "input_ready 'marker': the file name the uploader writes beside the images when done (the input glob "
         "must not match it, e.g. '*.jpg')."),
        ("models", [DEFAULT_MODEL], _choices(MODELS), "Embedding models", MODELS_SECTION,
         f"One or more of {MODEL_CHOICES_TEXT}. Several run in one extraction pass; each gets its maps, the "
         "first the similarity index, and the night a comparison report of every pair."),
        ("weights", dep.weights, {"type": "string", "minLength": 1, **weights_rule}, "Weights", MODELS_SECTION,
         f"'{WEIGHTS_IMAGENET}', '{WEIGHTS_RANDOM}' (seeded, for smoke runs) or a path (local or gs://) to a "
         f"weights file under: {roots_text}."),
        ("engine", engine_default, engine_schema, "Inference engine", MODELS_SECTION,
         "'auto' picks, on each worker, the fastest engine that passes the accuracy guard there (OpenVINO, "
         "else TensorFlow); 'tf' or 'openvino' forces one."),
        ("precision", precision_default, precision_schema, "Precision", MODELS_SECTION,
         "'auto': bf16 where the worker's CPU computes it natively, else f32; or force one."),
        ("batch_size", batch_default, batch_schema, "Batch size", MODELS_SECTION, "Images per model call."),
        ("skip_known", True, {"type": "boolean"}, "Reuse known embeddings", MODELS_SECTION,
         "An image whose bytes were already embedded with the same model in an earlier night (or under another "
         "URI tonight) gets that vector again instead of being recomputed."),
        ("max_failure_rate", 0.1, share, "Max failure rate", MODELS_SECTION,
         "Fail the run when more than this share of the inputs could not be embedded."),
        ("methods", list(METHODS), _choices(METHODS), "Reduction methods", MAPS,
         "One reduce task runs per selected method and model."),
        ("map_points", points_default, points_schema, "Points in map.html", MAPS,
         "Points drawn in the map.html explorer: every row up to this many, else a seeded sample."),
        ("thumbnail_budget_mb", budget_default, budget_schema, "Thumbnail budget (MB)", MAPS,
         "MB of inline thumbnails in map.html (the file grows by about this much)."),
        ("mosaic_grid", grid_default, grid_schema, "Mosaic grid", MAPS,
         "map_mosaic.png: grid cells per side (0: no mosaic)."),
        ("reference_policy", REFERENCE_DEFAULTS["reference_policy"],
         {"type": "string", "enum": list(REFERENCE_POLICIES)}, "2D frame", FRAME,
         "'refit': each night's maps get their own axes; 'fixed': one saved reducer (fitted the first night it "
         "is missing, on reference_window_days nights) reused every night, backfills included; 'rolling': "
         "refitted every reference_every_days nights on the last reference_window_days nights. With a "
         "reference, each night's drift against it is measured."),
        ("reference", REFERENCE_DEFAULTS["reference"], {"type": ["null", "string"]}, "Reference folder", FRAME,
         "fixed: the folder of the saved reducers (method=<m>/ below it); unset: <output_root>/references."),
        ("reference_window_days", REFERENCE_DEFAULTS["reference_window_days"], days, "Reference window (nights)",
         FRAME, "Nights a reference is fitted on: the night it is fitted and the ones before it."),
        ("reference_every_days", REFERENCE_DEFAULTS["reference_every_days"], days, "Refit every (nights)", FRAME,
         "rolling: a new reference every this many nights."),
        ("drift_p_value", DRIFT_DEFAULTS["drift_p_value"], share, "Drift alert: MMD p-value", FRAME,
         "Alert when the MMD test's p-value against the reference is below this (0: never)."),
        ("novelty_rate_alert", DRIFT_DEFAULTS["novelty_rate_alert"], share, "Drift alert: novelty rate", FRAME,
         "Alert when more than this share of the night's images are unlike any reference image (0: never)."),
        ("mean_shift_alert", DRIFT_DEFAULTS["mean_shift_alert"], {"type": "number", "minimum": 0},
         "Drift alert: mean shift", FRAME,
         "Alert when the mean embedding moves more than this times the reference's spread (0: never)."),
        ("index", True, {"type": "boolean"}, "Similarity index", INDEX,
         "Build the night's nearest-neighbour index and duplicate report (build_index task)."),
        ("index_window_days", window_default, window_schema, "Index window (nights)", INDEX,
         "Nights the index holds, ending with this one (the earlier index is extended when it can)."),
        ("duplicate_threshold", dup_default, dup_schema, "Near-duplicate threshold", INDEX,
         "Cosine similarity from which two images count as near-duplicates (0: no report)."),
        ("report", True, {"type": "boolean"}, "Morning report", REPORT,
         "After publish, write the night's report (what is new, what grew and shrank, failures, duplicates, cost) "
         "to <output_root>/reports/ds=<date>/; a report problem alerts and never fails the night."),
        ("report_window_days", 7, days, "Report window (nights)", REPORT,
         "Earlier nights the report compares tonight with (novelty, cluster shares)."),
        ("store", STORE_NONE, {"type": "string", "enum": list(STORES)}, "Vector store", REPORT,
         "After the maps, publish the night's embeddings (and 2D coordinates) where other services query them, "
         "replacing that date's rows: 'lance' (a Lance dataset, local or gs://, no server), 'bigquery' (load jobs "
         "into a ds-partitioned table; Airflow only, not yet run against BigQuery) or 'none'."),
        ("store_uri", None, {"type": ["null", "string"]}, "Store location", REPORT,
         "lance: the store's folder or gs:// prefix (unset: <output_root>/store); bigquery: 'project.dataset' or "
         "'dataset' (of the project param)."),
        ("bigquery_index", BIGQUERY_INDEX_TYPES[0], {"type": "string", "enum": list(BIGQUERY_INDEX_TYPES)},
         "BigQuery vector index", REPORT,
         "bigquery: the vector index each model's table gets once it holds 5,000 rows (IVF or TREE_AH)."),
        ("runner", DEFAULT_RUNNER, {"type": "string", "enum": list(RUNNERS)}, "Beam runner", RUNNER,
         "FnApiRunner: on this machine; DataflowRunner: on Google Cloud (gs:// paths, project, region, "
         "temp_location)."),
        ("cost_jump_ratio", 2.0, {"type": "number", "minimum": 0, "maximum": 100}, "Cost alert ratio", RUNNER,
         "Alert when this night's cost per 1,000 images is over this many times the median of the nights "
         "before it (USD on Dataflow, CPU seconds locally; 0: off)."),
        ("project", None, {"type": ["null", "string"]}, "GCP project", RUNNER, "DataflowRunner: GCP project."),
        ("region", None, {"type": ["null", "string"]}, "GCP region", RUNNER, "DataflowRunner: region."),
        ("temp_location", None, {"type": ["null", "string"]}, "Temp location", RUNNER,
         "DataflowRunner: gs:// temp folder."),
        ("staging_location", None, {"type": ["null", "string"]}, "Staging location", RUNNER,
         "DataflowRunner: gs:// staging folder (unset: temp_location)."),
        ("sdk_container_image", None, {"type": ["null", "string"]}, "Worker image", RUNNER,
         "DataflowRunner: the worker image built from worker.Dockerfile (without one, workers install the "
         "jobs from setup_file)."),
        ("setup_file", None, {"type": ["null", "string"]}, "Setup file", RUNNER,
         "DataflowRunner without a worker image: the project's setup.py that workers install the jobs from."),
        ("flexrs_goal", None, {"type": ["null", "string"], "enum": [None, *FLEXRS_GOALS]}, "Dataflow FlexRS",
         RUNNER,
         "DataflowRunner: Flexible Resource Scheduling (--flexrs_goal). COST_OPTIMIZED is billed at a lower "
         "rate but each job may wait in JOB_STATE_QUEUED for up to 6 hours before it starts; unset: off."),
    ]  # fmt: skip
    return {row[0]: TriggerParam(*row) for row in rows}


def defaults(deployment: Deployment | None = None) -> dict[str, Any]:
    return {name: p.default for name, p in table(deployment).items()}


def form_problems(params: dict[str, TriggerParam]) -> list[str]:
    """Params whose default Airflow's trigger form would mark missing: a non-null type with '' or None."""
    return [
        f"{p.name}: default {p.default!r} with a non-null type marks the form invalid"
        for p in params.values()
        if not p.nullable and p.default in ("", None)
    ]


def unset_as_null(values: dict[str, Any], params: dict[str, TriggerParam]) -> dict[str, Any]:
    """Kubeflow has no null parameters: its '' means unset, which the table spells ``None``."""
    return {k: None if v == "" and k in params and params[k].nullable else v for k, v in values.items()}


def validate(values: dict[str, Any], deployment: Deployment | None = None) -> list[str]:
    """What the table's schemas refuse in one run's params (empty when all pass), one line per problem,
    checked with ``jsonschema`` as Airflow checks its Params. Names the table lacks are ignored."""
    import jsonschema

    params = table(deployment)
    problems = []
    for name, param in params.items():
        if name not in values:
            continue
        validator = jsonschema.Draft7Validator(param.schema)
        for error in sorted(validator.iter_errors(values[name]), key=str):
            problems.append(f"{name} {values[name]!r}: {error.message}")
    return problems
