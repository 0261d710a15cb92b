"""image_embeddings_airflow.operators: the night's input sensor (the Beam launcher is tested in test_dataflow.py
against the real provider, and end to end in test_dag.py)."""

from __future__ import annotations

import pytest


def sensor(pattern: str, **kwargs):
    from image_embeddings_airflow.operators import InputFilesSensor

    # Poke mode: the reschedule bookkeeping (the default mode) needs a task instance in the database.
    return InputFilesSensor(task_id="wait_for_input", pattern=pattern, mode="poke", poke_interval=0.01, **kwargs)


def test_input_sensor_passes_once_enough_files_match(tmp_path):
    (tmp_path / "a.jpg").write_bytes(b"x")
    assert sensor(str(tmp_path / "*.jpg")).poke({}) is True
    assert sensor(str(tmp_path / "*.jpg"), min_files=2).poke({}) is False
    assert sensor(str(tmp_path / "*.jpg"), wait_minutes="0").execute({}) is None


def test_input_sensor_timeout_says_which_glob_was_empty(tmp_path):
    from airflow.sdk.exceptions import AirflowSensorTimeout

    pattern = str(tmp_path / "ds=2026-11-22" / "*")
    with pytest.raises(AirflowSensorTimeout, match=r"no input: .*ds=2026-11-22/\*' matched fewer than 1 file\(s\)"):
        sensor(pattern, wait_minutes="0").execute({})


def test_input_sensor_defaults_to_reschedule_mode():
    from image_embeddings_airflow.operators import InputFilesSensor

    waiting = InputFilesSensor(task_id="w", pattern="/x/*")
    assert waiting.mode == "reschedule"
    assert waiting.poke_interval == 300
    assert set(InputFilesSensor.template_fields) == {"pattern", "wait_minutes"}
