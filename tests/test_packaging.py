"""What ships to Dataflow workers and the Airflow image: the wheel holds beam_jobs whole, and nothing else."""

from __future__ import annotations

import glob
import os
import shutil
import subprocess
import sys
import zipfile

import pytest

from tests.conftest import ROOT


@pytest.mark.slow
def test_wheel_ships_every_beam_jobs_file_and_no_dev_tools(tmp_path):
    # Built from a copy of the tracked files: an in-place build reuses build/lib, where a module
    # that has since moved would still lie.
    source = tmp_path / "src"
    tracked = subprocess.run(["git", "ls-files"], cwd=ROOT, capture_output=True, text=True, check=True).stdout
    for name in tracked.split():
        if os.path.isfile(os.path.join(ROOT, name)):
            os.makedirs(source / os.path.dirname(name), exist_ok=True)
            shutil.copy2(os.path.join(ROOT, name), source / name)
    wheels = tmp_path / "wheels"
    subprocess.run(
        [sys.executable, "-m", "pip", "wheel", "-q", "--no-deps", "--no-build-isolation", "-w", str(wheels), source],
        check=True,
        capture_output=True,
        timeout=300,
    )
    (wheel,) = glob.glob(str(wheels / "*.whl"))
    shipped = {name for name in zipfile.ZipFile(wheel).namelist() if ".dist-info/" not in name}
    in_repo = {name for name in tracked.split() if name.startswith("beam_jobs/")}
    # Package data too (the map template): a worker that lacks it fails only when it renders.
    assert shipped == in_repo
    assert not any(name.startswith(("devtools/", "tests/", "scripts/", "dags/", "plugins/")) for name in shipped)
