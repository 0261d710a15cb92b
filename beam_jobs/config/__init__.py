"""Typed job configuration: each flag declared once, parsed and validated before any work starts.

A flag is a dataclass field declared with ``option()``: its default, help text
and check live together, and the argparse parser is generated from the fields.
Each job splits its argv with ``parse_known_args``: our flags become the
config, everything else goes to Beam's ``PipelineOptions``. Validation lists
every problem at once. Standard library only, so an Airflow task or a launcher
can validate cheaply. Read as ``beam_jobs.config.X``: ``base`` holds the machinery, ``jobs`` the jobs'
configs (the store's and the report's live beside their jobs).
"""

from beam_jobs.config.base import *  # noqa: F403
from beam_jobs.config.jobs import *  # noqa: F403
