"""The similarity-index job: ``python -m beam_jobs.build_index`` (see ``pipeline.py``)."""
