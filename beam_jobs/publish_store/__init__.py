"""Publish a night's embeddings to a queryable vector store: ``python -m beam_jobs.publish_store`` (see ``job.py``).

``config.py`` holds the flags, ``rows.py`` the table layout and the reading of the partition, ``lance_store.py``
the one-commit replace of a date, the index and the upkeep. ``publish_store_step`` is what the DAG and the
Kubeflow pipeline call.
"""

from __future__ import annotations

from typing import Any


def publish_store_step(*args: Any, **kwargs: Any) -> dict[str, Any]:
    """See ``beam_jobs.publish_store.job.publish_store_step`` (imported on call: Lance loads only when used)."""
    from beam_jobs.publish_store.job import publish_store_step as step

    return step(*args, **kwargs)
