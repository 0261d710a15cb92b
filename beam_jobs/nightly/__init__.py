"""The layer that plans and records a night, above the jobs; both orchestrators call it, no job imports it.

- ``params``: each trigger param declared once (default, JSON schema, title, form section, description);
- ``plan``: a run's params checked together and every path resolved (``build_plan``);
- ``paths``: the deployment's allowed roots and path confinement (``PlanError``);
- ``frame``: the 2D frame across nights (reference policies) and the drift thresholds;
- ``readiness``: is tonight's input complete;
- ``launch``: each job's flags from the plan, and running a job as a step (Kubeflow);
- ``steps``: the night's steps as both orchestrators run them;
- ``record``: the run record (extraction check, one entry per output), ``cost``: cost per night.

Standard library only at import time (``jsonschema`` and Beam are imported where used), so the DAG file
that imports it still parses fast.
"""
