"""How the models of a night differ: ``python -m beam_jobs.compare`` (see ``job.py``, figures in ``metrics.py``)."""
