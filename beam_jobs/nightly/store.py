"""The night's vector store: which one (param ``store``), where (``store_uri``), and the Lance publish step.

``store_settings`` is part of the plan (checked with the other params, before anything runs); ``store_night``
is the step both orchestrators call after the reductions. BigQuery is published by the Airflow DAG through the
Google provider's operators (``image_embeddings_airflow.bigquery``); this module only checks its settings.
Standard library at import, like the rest of the plan.
"""

from __future__ import annotations

import re
from typing import Any

from beam_jobs.contract import store_dir
from beam_jobs.nightly.paths import confine, is_gcs
from beam_jobs.publish_store.config import BIGQUERY_INDEX_TYPES, STORE_BIGQUERY, STORE_LANCE, STORE_NONE, STORES

KFP_STORES = (STORE_NONE, STORE_LANCE)  # Kubeflow has no BigQuery operators
# project.dataset, or a dataset of the run's GCP project (BigQuery's own naming rules).
_DATASET = re.compile(r"^(?:(?P<project>[a-z][a-z0-9-]{4,28}[a-z0-9])\.)?(?P<dataset>[A-Za-z_][A-Za-z0-9_]{0,1023})$")


def store_settings(
    params: dict[str, Any], output_root: str, roots: list[str], project: str | None, stores: tuple[str, ...] = STORES
) -> tuple[dict[str, Any], list[str]]:
    """The plan's store keys and what is wrong with them. ``stores``: what this orchestrator can publish to
    (Kubeflow has no BigQuery operators). ``project``: the run's GCP project, for a BigQuery dataset without one."""
    store = params.get("store") or STORE_NONE
    uri = params.get("store_uri") or None
    settings: dict[str, Any] = {
        "store": store,
        "store_uri": None,
        "bigquery_project": None,
        "bigquery_dataset": None,
        "bigquery_index": params.get("bigquery_index") or BIGQUERY_INDEX_TYPES[0],
    }
    if store not in stores:
        where = "the Airflow DAG (the Google provider's operators)" if store == STORE_BIGQUERY else "nowhere"
        return settings, [f"store {store!r} is published by {where}; here use one of {', '.join(stores)}"]
    if store == STORE_LANCE:
        uri, refused = confine("store_uri", uri or store_dir(output_root), roots)
        settings["store_uri"] = uri.rstrip("/")
        return settings, [refused] if refused else []
    if store == STORE_BIGQUERY:
        problems = []
        match = _DATASET.match(uri or "")
        if not match:
            problems.append(
                f"store bigquery needs store_uri 'project.dataset' or 'dataset' (BigQuery names), got {uri!r}"
            )
        elif not (match["project"] or project):
            problems.append(f"store_uri {uri!r} names no project and the run has no GCP project (param 'project')")
        else:
            dataset = {"bigquery_project": match["project"] or project, "bigquery_dataset": match["dataset"]}
            settings.update(store_uri=uri, **dataset)
        if not is_gcs(output_root):
            problems.append(f"store bigquery loads the night's Parquet from gs://; output_root is {output_root!r}")
        return settings, problems
    return settings, []


def store_night(plan: dict[str, Any]) -> dict[str, Any]:
    """Publish the night to the plan's Lance store, every model into its own table with its own maps'
    coordinates (one call: every table is checked before any is written). {"store": ...} alone when the store
    is not Lance: none, or BigQuery (the DAG's operators)."""
    from beam_jobs.publish_store.job import publish_store_step

    if plan["store"] != STORE_LANCE:
        return {"store": plan["store"]}
    folders = [r["dir"] for r in plan["reductions"]]
    return publish_store_step(plan["embeddings_dir"], STORE_LANCE, plan["store_uri"], folders, None, plan["run_id"])
