"""The nightly run's decisions as plain functions: plan, validate the extraction, build the record.

The functions live in ``beam_jobs.nightly`` (standard library only), which the
Kubeflow pipeline's steps import too, so both orchestrators make the same
decisions; this module re-exports them under their old names and adds the
Airflow-only names. The DAG's tasks are thin wrappers that pass in params, the
run's date and the manifests read.
"""

from __future__ import annotations

from beam_jobs.cost import cost_jump, cost_summary, earlier_records, prices
from beam_jobs.nightly import (
    ALLOWED_ROOTS_ENV,
    DATAFLOW_SETTINGS,
    DRIFT_DEFAULTS,
    IMAGE_REFERENCE,
    KEYWORD_WEIGHTS,
    REFERENCE_DEFAULTS,
    SETUP_FILE_ENV,
    Plan,
    PlanError,
    allowed_roots,
    build_plan,
    confine,
    default_setup_file,
    drift_alerts,
    projections_key,
    reduction_key,
    reference_key,
    roots_pattern,
)
from beam_jobs.records import ExtractionRejected, check_extraction, night_record, run_record

__all__ = [
    "ALLOWED_ROOTS_ENV",
    "DAG_ID",
    "DATAFLOW_SETTINGS",
    "DRIFT_DEFAULTS",
    "IMAGE_REFERENCE",
    "KEYWORD_WEIGHTS",
    "MAPS_ASSET",
    "PUBLISH_TASK",
    "REFERENCE_DEFAULTS",
    "SETUP_FILE_ENV",
    "ExtractionRejected",
    "Plan",
    "PlanError",
    "allowed_roots",
    "build_plan",
    "check_extraction",
    "confine",
    "cost_jump",
    "cost_summary",
    "default_setup_file",
    "drift_alerts",
    "earlier_records",
    "night_record",
    "prices",
    "projections_key",
    "reduction_key",
    "reference_key",
    "roots_pattern",
    "run_record",
]

# Airflow-only names (the jobs never see them).
DAG_ID = "image_embeddings"
# The Asset the publish task emits one event on per published run (the maps page reads them).
MAPS_ASSET = "image_embeddings_maps"
PUBLISH_TASK = "publish"
