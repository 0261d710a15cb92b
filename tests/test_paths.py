"""image_embeddings_airflow.paths on local files (the gs:// side goes through the Google provider's GCSHook)."""

from __future__ import annotations

import json


def test_count_matching_counts_files_not_folders_and_wildcards_skip_dot_names(tmp_path):
    from image_embeddings_airflow.paths import count_matching

    (tmp_path / "a.jpg").write_bytes(b"x")
    (tmp_path / "b.jpg").write_bytes(b"x")
    (tmp_path / ".upload-in-progress.jpg").write_bytes(b"x")
    (tmp_path / "sub").mkdir()
    assert count_matching(str(tmp_path / "*")) == 2
    assert count_matching(str(tmp_path / ".*")) == 1  # named explicitly, a dot file matches
    assert count_matching(str(tmp_path / "none-*")) == 0


def test_write_json_replaces_whole_and_reads_back(tmp_path):
    from image_embeddings_airflow.paths import join, read_bytes, read_json, write_json

    target = join(str(tmp_path), "runs", "ds=2026-11-20", "run.json")
    write_json(target, {"b": 1, "a": [1, 2]})
    write_json(target, {"b": 2})
    assert read_json(target) == {"b": 2}
    assert read_bytes(target) == (json.dumps({"b": 2}, indent=2, sort_keys=True) + "\n").encode()
    assert not (tmp_path / "runs" / "ds=2026-11-20" / "run.json.tmp").exists()
