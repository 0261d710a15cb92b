"""Local and gs:// paths for Airflow tasks: match a glob, read and write small JSON files.

Uses the Google provider's GCSHook (the Airflow connection's credentials) for
gs:// and the standard library for local paths, so tasks never import Beam.
"""

from __future__ import annotations

import json
import os
from typing import Any

GCS = "gs://"


def split_gcs(uri: str) -> tuple[str, str]:
    bucket, _, name = uri[len(GCS) :].partition("/")
    return bucket, name


def is_gcs(uri: str) -> bool:
    return uri.startswith(GCS)


def _gcs(uri: str, gcp_conn_id: str):
    """(GCSHook, bucket, object name) for a gs:// URI; the Google provider is imported only here."""
    from airflow.providers.google.cloud.hooks.gcs import GCSHook

    bucket, name = split_gcs(uri)
    return GCSHook(gcp_conn_id=gcp_conn_id), bucket, name


def snapshot(pattern: str, marker: str | None = None, gcp_conn_id: str = "google_cloud_default") -> dict[str, Any]:
    """Count, total size and latest change time of the files ``pattern`` matches, and whether ``marker`` exists.

    Locally ``beam_jobs.nightly.readiness.local_snapshot``; on gs:// one listing with each object's size and
    ``updated`` time (what the Google provider's GCSUploadSessionCompleteSensor compares between pokes).
    """
    from beam_jobs.nightly.readiness import local_snapshot

    if not is_gcs(pattern):
        return local_snapshot(pattern, marker)
    hook, bucket, name = _gcs(pattern, gcp_conn_id)
    files = size = 0
    newest = None
    for blob in hook.get_conn().bucket(bucket).list_blobs(match_glob=name):
        if blob.name.endswith("/"):
            continue
        files, size = files + 1, size + (blob.size or 0)
        if blob.updated is not None:
            newest = max(newest or 0.0, blob.updated.timestamp())
    found = None
    if marker:
        marker_bucket, marker_name = split_gcs(marker)
        found = hook.exists(marker_bucket, marker_name)
    return {"files": files, "bytes": size, "newest_change": newest, "marker_found": found}


def read_bytes(uri: str, gcp_conn_id: str = "google_cloud_default") -> bytes:
    if is_gcs(uri):
        hook, bucket, name = _gcs(uri, gcp_conn_id)
        return hook.download(bucket, name)
    with open(uri, "rb") as handle:
        return handle.read()


def read_json(uri: str, gcp_conn_id: str = "google_cloud_default") -> dict[str, Any]:
    return json.loads(read_bytes(uri, gcp_conn_id).decode("utf-8"))


def write_json(uri: str, obj: dict[str, Any], gcp_conn_id: str = "google_cloud_default") -> None:
    text = json.dumps(obj, indent=2, sort_keys=True, default=str) + "\n"
    if is_gcs(uri):
        hook, bucket, name = _gcs(uri, gcp_conn_id)
        hook.upload(bucket, name, data=text, mime_type="application/json")
        return
    os.makedirs(os.path.dirname(uri) or ".", exist_ok=True)
    tmp = f"{uri}.tmp"
    with open(tmp, "w", encoding="utf-8") as handle:
        handle.write(text)
    os.replace(tmp, uri)


def join(base: str, *parts: str) -> str:
    return "/".join([base.rstrip("/"), *parts])
