"""The nightly DAG's trigger-form params, generated from the one param table (``beam_jobs.nightly.params``):
each Param carries its row's default, JSON schema, title, section and description.

Each is checked when a run is created (trigger form, REST API, backfill, dag.test); the plan task checks the
fields together. Deployment settings come from the environment, read each time the DAG file is parsed
(cheap; no Variable or DB access): ``IMAGE_EMBEDDINGS_DATA``, ``IMAGE_EMBEDDINGS_WEIGHTS`` and
``IMAGE_EMBEDDINGS_ALLOWED_ROOTS``.
"""

from __future__ import annotations

import logging

from airflow.sdk import Param

from beam_jobs.nightly import params as table
from beam_jobs.nightly.paths import PlanError, allowed_roots, confine

LOG = logging.getLogger(__name__)


def trigger_params(deployment: table.Deployment | None = None) -> dict[str, Param]:
    """The DAG's ``params``, with the deployment's data folder, default weights and allowed roots."""
    dep = deployment or table.Deployment.from_environment()
    try:
        allowed_roots()
    except PlanError as exc:  # the plan task refuses every run with the same message
        LOG.error("%s", exc)
    if dep.roots and confine("the data folder", dep.data, dep.roots)[1]:
        LOG.error("IMAGE_EMBEDDINGS_DATA %s is outside the allowed roots (%s): default paths fail", dep.data, dep.roots)
    return {
        name: Param(p.default, title=p.title, section=p.section, description=p.description, **p.schema)
        for name, p in table.table(dep).items()
    }
