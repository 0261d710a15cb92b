"""image_embeddings_airflow.operators: the night's input sensor (the Beam launcher is tested in test_dataflow.py
against the real provider, and end to end in test_dag.py; the input_ready rules in test_input_ready.py)."""

from __future__ import annotations

import pytest


def sensor(pattern: str, **kwargs):
    from image_embeddings_airflow.operators import InputFilesSensor

    # Poke mode: the reschedule bookkeeping (the default mode) needs a task instance in the database.
    return InputFilesSensor(task_id="wait_for_input", pattern=pattern, mode="poke", poke_interval=0.01, **kwargs)


def test_input_sensor_passes_once_a_file_matches_with_rule_any(tmp_path):
    (tmp_path / "a.jpg").write_bytes(b"x")
    assert sensor(str(tmp_path / "*.jpg"), rule="any").poke({}).is_done is True
    assert sensor(str(tmp_path / "*.png"), rule="any").poke({}).is_done is False
    done = sensor(str(tmp_path / "*.jpg"), rule="any", wait_minutes="0").execute({})
    assert (done["rule"], done["files"], done["bytes"]) == ("any", 1, 1)


def test_input_sensor_timeout_says_which_glob_was_empty(tmp_path):
    from airflow.sdk.exceptions import AirflowSensorTimeout

    pattern = str(tmp_path / "ds=2026-11-22" / "*")
    with pytest.raises(AirflowSensorTimeout, match=r"no input: .*ds=2026-11-22/\*' was not ready .*: no file matches"):
        sensor(pattern, wait_minutes="0").execute({})


def test_input_sensor_defaults_to_reschedule_mode_and_the_settled_rule():
    from image_embeddings_airflow.operators import InputFilesSensor

    waiting = InputFilesSensor(task_id="w", pattern="/x/*")
    assert waiting.mode == "reschedule"
    assert waiting.poke_interval == 300
    assert (waiting.rule, waiting.settle_minutes) == ("settled", 10)
    assert set(InputFilesSensor.template_fields) == {"pattern", "wait_minutes", "rule", "settle_minutes", "marker"}
