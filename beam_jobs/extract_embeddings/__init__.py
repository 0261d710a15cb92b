"""The extraction job: image URIs -> pooled CNN embeddings (Parquet) + failure records.

Run it with ``python -m beam_jobs.extract_embeddings``; ``pipeline.py`` wires the
stages (``inputs``, ``decode``, ``embed``, ``outputs``); ``images``, ``models`` and
``inference`` are its pure image core, weights handling and RunInference handler.
"""
