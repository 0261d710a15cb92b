"""The reduce_dim job: embeddings (extraction output) -> 2D coordinates, map.png and map.html.

Run it with ``python -m beam_jobs.reduce_dim``; ``pipeline.py`` wires the stages
(``inputs``, ``fit``, ``outputs``) around ``records`` (the blocks that move between
them). ``reduction`` (PCA, sampling, UMAP, trustworthiness) and ``maps`` (map.png,
map.html from ``templates/``) are its pure, Beam-free core.

Room left for what comes next: a saved reference reducer (fit once, reused so
nightly maps are comparable) replaces the fit stage in ``pipeline.build_pipeline``
(``fit.py`` says what a model must offer); drift statistics against that reference
sit beside ``outputs.sample_trustworthiness`` and reach the manifest through Commit.
"""
