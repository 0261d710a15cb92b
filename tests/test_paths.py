"""image_embeddings_airflow.paths on local files (the gs:// side goes through the Google provider's GCSHook)."""

from __future__ import annotations

import json


def test_write_json_replaces_whole_and_reads_back(tmp_path):
    from image_embeddings_airflow.paths import join, read_bytes, read_json, write_json

    target = join(str(tmp_path), "runs", "ds=2026-11-20", "run.json")
    write_json(target, {"b": 1, "a": [1, 2]})
    write_json(target, {"b": 2})
    assert read_json(target) == {"b": 2}
    assert read_bytes(target) == (json.dumps({"b": 2}, indent=2, sort_keys=True) + "\n").encode()
    assert not (tmp_path / "runs" / "ds=2026-11-20" / "run.json.tmp").exists()
