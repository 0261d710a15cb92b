"""What ships to Dataflow workers and the Airflow image: the wheel holds beam_jobs whole, and nothing else."""

from __future__ import annotations

import glob
import os
import subprocess
import sys
import zipfile

import pytest

from tests.conftest import ROOT


@pytest.mark.slow
def test_wheel_ships_every_beam_jobs_file_and_no_dev_tools(tmp_path):
    subprocess.run(
        [sys.executable, "-m", "pip", "wheel", "-q", "--no-deps", "--no-build-isolation", "-w", str(tmp_path), ROOT],
        check=True,
        capture_output=True,
        timeout=300,
    )
    (wheel,) = glob.glob(str(tmp_path / "*.whl"))
    shipped = {name for name in zipfile.ZipFile(wheel).namelist() if ".dist-info/" not in name}
    in_repo = {
        os.path.relpath(path, ROOT)
        for path in glob.glob(os.path.join(ROOT, "beam_jobs", "**", "*"), recursive=True)
        if os.path.isfile(path) and "__pycache__" not in path
    }
    # Package data too (the map template): a worker that lacks it fails only when it renders.
    assert shipped == in_repo
    assert not any(name.startswith(("devtools/", "tests/", "scripts/", "dags/", "plugins/")) for name in shipped)
