"""The nightly DAG's trigger-form params: one Param per field, each checked when a run is created
(trigger form, REST API, backfill, dag.test); the plan task checks the fields together.

Deployment settings come from the environment, read each time the DAG file is parsed (cheap; no
Variable or DB access): ``IMAGE_EMBEDDINGS_DATA``, ``IMAGE_EMBEDDINGS_WEIGHTS`` and
``IMAGE_EMBEDDINGS_ALLOWED_ROOTS``.
"""

from __future__ import annotations

import dataclasses
import logging
import os

from airflow.sdk import Param

from beam_jobs.config import IndexConfig, ReduceConfig
from beam_jobs.contract import (
    DEFAULT_BATCH_SIZE,
    DEFAULT_ENGINE,
    DEFAULT_INPUT_MARKER,
    DEFAULT_INPUT_READY,
    DEFAULT_MODEL,
    DEFAULT_RUNNER,
    DEFAULT_SETTLE_MINUTES,
    ENGINES,
    FLEXRS_GOALS,
    INPUT_READY_RULES,
    MAX_BATCH_SIZE,
    METHODS,
    MODEL_CHOICES_TEXT,
    MODELS,
    PRECISION_AUTO,
    PRECISIONS,
    REFERENCE_POLICIES,
    RUNNERS,
    WEIGHTS_IMAGENET,
    WEIGHTS_RANDOM,
    partition,
)
from image_embeddings_airflow.runs import (
    DRIFT_DEFAULTS,
    KEYWORD_WEIGHTS,
    REFERENCE_DEFAULTS,
    PlanError,
    allowed_roots,
    confine,
    roots_pattern,
)

LOG = logging.getLogger(__name__)


def trigger_params() -> dict[str, Param]:
    """The DAG's ``params``, with the deployment's data folder, default weights and allowed roots."""
    data = os.environ.get("IMAGE_EMBEDDINGS_DATA", "/opt/airflow/data")
    default_weights = os.environ.get("IMAGE_EMBEDDINGS_WEIGHTS", WEIGHTS_IMAGENET)
    # Where runs may read and write (IMAGE_EMBEDDINGS_ALLOWED_ROOTS, default the data folder): refused already
    # by the trigger form and the REST API; the plan task checks again, symlinks resolved.
    try:
        roots: list[str] | None = allowed_roots()
    except PlanError as exc:  # the plan task refuses every run with the same message
        LOG.error("%s", exc)
        roots = None
    roots_text = ", ".join(roots or [])
    form_roots = list(roots or [])
    if roots and confine("the data folder", data, roots)[1]:
        # Airflow refuses to load a scheduled DAG whose defaults fail their schemas, so the form lets the
        # default paths through; the plan task refuses them, naming the roots, on every run that uses them.
        LOG.error("IMAGE_EMBEDDINGS_DATA %s is outside the allowed roots (%s): default paths fail", data, roots_text)
        form_roots.append(data)
    path_rule = {"pattern": roots_pattern(form_roots)} if roots else {}
    weights_rule = {"pattern": roots_pattern(form_roots, KEYWORD_WEIGHTS)} if roots else {}
    # The reduce job's own defaults for the map params (declared once, in beam_jobs.config).
    reduce_defaults = {f.name: f.default for f in dataclasses.fields(ReduceConfig)}
    index_defaults = {f.name: f.default for f in dataclasses.fields(IndexConfig)}
    return {
        "input": Param(
            f"{data}/images/{partition('{{ ds }}')}/*",
            type="string",
            minLength=1,
            title="Input images",
            description=(
                "Glob of the night's images, or a folder / gs:// prefix ending in '/'. "
                f"'{{{{ ds }}}}' becomes the run's date. Must be under: {roots_text}."
            ),
            **path_rule,
        ),
        "output_root": Param(
            f"{data}/out",
            type="string",
            minLength=1,
            title="Output root",
            description=(
                "Embeddings, projections and run records are written under this folder (local or gs://). "
                f"Must be under: {roots_text}."
            ),
            **path_rule,
        ),
        "models": Param(
            [DEFAULT_MODEL],
            type="array",
            items={"type": "string", "enum": list(MODELS)},
            minItems=1,
            uniqueItems=True,
            title="Embedding models",
            description=(
                f"One or more of {MODEL_CHOICES_TEXT}. Several run in one extraction pass; each gets its maps, "
                "the first the similarity index, and the night a comparison report of every pair."
            ),
        ),
        "weights": Param(
            default_weights,
            type="string",
            minLength=1,
            description=(
                f"'{WEIGHTS_IMAGENET}', '{WEIGHTS_RANDOM}' (seeded, for smoke runs) "
                f"or a path (local or gs://) to a weights file under: {roots_text}."
            ),
            **weights_rule,
        ),
        "engine": Param(
            DEFAULT_ENGINE,
            type="string",
            enum=list(ENGINES),
            description=(
                "Inference engine for the same model: 'auto' picks, on each worker, the fastest that passes "
                "the accuracy guard there (OpenVINO, else TensorFlow); 'tf' or 'openvino' forces one."
            ),
        ),
        "precision": Param(
            PRECISION_AUTO,
            type="string",
            enum=list(PRECISIONS),
            description="'auto': bf16 where the worker's CPU computes it natively, else f32; or force one.",
        ),
        "methods": Param(
            list(METHODS),
            type="array",
            items={"type": "string", "enum": list(METHODS)},
            minItems=1,
            uniqueItems=True,
            title="Reduction methods",
            description="One reduce_dim task runs per selected method.",
        ),
        "map_points": Param(
            reduce_defaults["html_points"],
            type="integer",
            minimum=0,
            maximum=1_000_000,
            description="Points drawn in the map.html explorer: every row up to this many, else a seeded sample.",
        ),
        "thumbnail_budget_mb": Param(
            reduce_defaults["thumbnail_budget_mb"],
            type="number",
            minimum=0,
            maximum=200,
            description="MB of inline thumbnails in map.html (the file grows by about this much).",
        ),
        "mosaic_grid": Param(
            reduce_defaults["mosaic_grid"],
            type="integer",
            minimum=0,
            maximum=64,
            description="map_mosaic.png: grid cells per side (0: no mosaic).",
        ),
        "skip_known": Param(
            True,
            type="boolean",
            title="Reuse known embeddings",
            description=(
                "An image whose bytes were already embedded with the same model in an earlier night (or under "
                "another URI tonight) gets that vector again instead of being recomputed."
            ),
        ),
        "reference_policy": Param(
            REFERENCE_DEFAULTS["reference_policy"],
            type="string",
            enum=list(REFERENCE_POLICIES),
            title="2D frame",
            description=(
                "'refit': each night's maps get their own axes; 'fixed': one saved reducer (fitted the first night "
                "it is missing, on reference_window_days nights) reused every night, backfills included; 'rolling': "
                "refitted every reference_every_days nights on the last reference_window_days nights. With a "
                "reference, each night's drift against it is measured."
            ),
        ),
        "reference": Param(
            REFERENCE_DEFAULTS["reference"],
            type="string",
            description=(
                "fixed: the folder of the saved reducers (method=<m>/ below it); empty: <output_root>/references."
            ),
        ),
        "reference_window_days": Param(
            REFERENCE_DEFAULTS["reference_window_days"],
            type="integer",
            minimum=1,
            maximum=366,
            description="Nights a reference is fitted on: the night it is fitted and the ones before it.",
        ),
        "reference_every_days": Param(
            REFERENCE_DEFAULTS["reference_every_days"],
            type="integer",
            minimum=1,
            maximum=366,
            description="rolling: a new reference every this many nights.",
        ),
        "drift_p_value": Param(
            DRIFT_DEFAULTS["drift_p_value"],
            type="number",
            minimum=0,
            maximum=1,
            description="Alert when the MMD test's p-value against the reference is below this (0: never).",
        ),
        "novelty_rate_alert": Param(
            DRIFT_DEFAULTS["novelty_rate_alert"],
            type="number",
            minimum=0,
            maximum=1,
            description=(
                "Alert when more than this share of the night's images are unlike any reference image (0: never)."
            ),
        ),
        "mean_shift_alert": Param(
            DRIFT_DEFAULTS["mean_shift_alert"],
            type="number",
            minimum=0,
            description="Alert when the mean embedding moves more than this times the reference's spread (0: never).",
        ),
        "index": Param(
            True,
            type="boolean",
            title="Similarity index",
            description="Build the night's nearest-neighbour index and duplicate report (build_index task).",
        ),
        "index_window_days": Param(
            index_defaults["window_days"],
            type="integer",
            minimum=1,
            maximum=366,
            description="Nights the index holds, ending with this one (the earlier index is extended when it can).",
        ),
        "duplicate_threshold": Param(
            index_defaults["duplicate_threshold"],
            type="number",
            minimum=0,
            maximum=1,
            description="Cosine similarity from which two images count as near-duplicates (0: no report).",
        ),
        "runner": Param(DEFAULT_RUNNER, type="string", enum=list(RUNNERS), description="Beam runner for both jobs."),
        "batch_size": Param(
            DEFAULT_BATCH_SIZE,
            type="integer",
            minimum=1,
            maximum=MAX_BATCH_SIZE,
            description="Images per model call.",
        ),
        "max_failure_rate": Param(
            0.1,
            type="number",
            minimum=0,
            maximum=1,
            description="Fail the run when more than this share of the inputs could not be embedded.",
        ),
        "input_wait_minutes": Param(
            360,
            type="integer",
            minimum=0,
            maximum=24 * 60,
            description="How long to wait for the input to be ready; 0 fails at once (useful in backfills).",
        ),
        "input_ready": Param(
            DEFAULT_INPUT_READY,
            type="string",
            enum=list(INPUT_READY_RULES),
            title="Input complete when",
            description=(
                "'settled': the matching files' count and sizes unchanged for input_settle_minutes; "
                "'marker': the input_marker file is beside them (the uploader writes it last); "
                "'any': as soon as one file matches (a night still uploading is embedded half)."
            ),
        ),
        "input_settle_minutes": Param(
            DEFAULT_SETTLE_MINUTES,
            type="number",
            minimum=0,
            maximum=24 * 60,
            description="input_ready 'settled': minutes without any change to the input before the run starts.",
        ),
        "input_marker": Param(
            DEFAULT_INPUT_MARKER,
            type="string",
            pattern=r"^[^/*?\[\]\x00-\x1f]+$",
            description=(
                "input_ready 'marker': the file name the uploader writes beside the images when done "
                "(the input glob must not match it, e.g. '*.jpg')."
            ),
        ),
        "cost_jump_ratio": Param(
            2.0,
            type="number",
            minimum=0,
            maximum=100,
            description=(
                "Alert when this night's cost per 1,000 images is over this many times the median of the "
                "nights before it (USD on Dataflow, CPU seconds locally; 0: off)."
            ),
        ),
        "project": Param(None, type=["null", "string"], description="DataflowRunner: GCP project."),
        "region": Param(None, type=["null", "string"], description="DataflowRunner: region."),
        "temp_location": Param(None, type=["null", "string"], description="DataflowRunner: gs:// temp folder."),
        "flexrs_goal": Param(
            "",
            type="string",
            enum=list(FLEXRS_GOALS),
            title="Dataflow FlexRS",
            description=(
                "DataflowRunner: Flexible Resource Scheduling (--flexrs_goal). COST_OPTIMIZED is billed at a lower "
                "rate but each job may wait in JOB_STATE_QUEUED for up to 6 hours before it starts; '' = off."
            ),
        ),
        "sdk_container_image": Param(
            None,
            type=["null", "string"],
            description=(
                "DataflowRunner: the worker image built from worker.Dockerfile (else the Airflow Variable "
                "'image_embeddings_sdk_container_image'; without one, workers install the jobs from setup_file)."
            ),
        ),
    }
