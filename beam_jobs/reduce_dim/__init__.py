"""The reduce_dim job: embeddings (extraction output) -> 2D coordinates, map.png, map.html and map_mosaic.png.

Run it with ``python -m beam_jobs.reduce_dim``; ``pipeline.py`` wires the stages
(``inputs``, ``fit``, ``outputs``) around ``records`` (the blocks that move between
them); the launcher lists and checks the input files with ``beam_jobs.partitions``.
``reduction`` (PCA, sampling, UMAP, trustworthiness), ``drift`` (tonight against a
reference), ``maps`` (map.png), ``explorer`` (map.html, its shell and JavaScript in
``templates/``) and ``mosaic`` (map_mosaic.png) are its pure, Beam-free core.

A saved reference reducer (``reference``: ``--save_reference`` / ``--reference``) keeps
one 2D frame across nights: the fit stage is replaced by a load, or its fit is
published first writer wins, and the commit step measures tonight's drift against it.
"""
