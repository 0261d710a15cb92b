"""Dataflow workers install the job code with ``--setup_file ./setup.py``.

All metadata lives in pyproject.toml; this file only exists because Beam's
``--setup_file`` option expects a setup.py.
"""

from setuptools import setup

setup()
