"""The comparison job: read one night's embeddings of several models, compare each pair, publish the report.

    python -m beam_jobs.compare --input /data/out/embeddings/ds=2026-11-20 \\
        --output /data/out/comparisons/ds=2026-11-20

Not a Beam job: the figures are computed on a seeded sample of the images every model
embedded (``--sample_size``, default 5,000), which fits one process; reading the night
is columns ``image_uri``, ``model_id`` and ``embedding`` of its Parquet files (listed by
``beam_jobs.partitions``). The output folder is staged and swapped in whole, like the
Beam jobs' outputs.
"""

from __future__ import annotations

import io
import itertools
import logging
import time
from typing import Any

import numpy as np

from beam_jobs import publish, storage
from beam_jobs.compare.metrics import compare_pair
from beam_jobs.config import CompareConfig
from beam_jobs.contract import COMPARISON_JSON, COMPARISON_PNG, JOB_COMPARE, ComparisonReport, PairComparison
from beam_jobs.partitions import embedding_files, open_parquet, read_manifest, refuse_special_file
from beam_jobs.runtime import InputError, utc_stamp

LOG = logging.getLogger(__name__)


def read_by_model(files: list[str]) -> dict[str, dict[str, np.ndarray]]:
    """model_id -> {image_uri: vector}; an image listed twice for one model keeps its first row."""
    out: dict[str, dict[str, np.ndarray]] = {}
    for path in files:
        refuse_special_file(path)
        handle, parquet = open_parquet(path)
        with handle:
            table = parquet.read(columns=["image_uri", "model_id", "embedding"])
        uris = table.column("image_uri").to_pylist()
        models = table.column("model_id").to_pylist()
        vectors = table.column("embedding").to_pylist()
        for uri, mid, vec in zip(uris, models, vectors, strict=True):
            out.setdefault(mid, {}).setdefault(uri, np.asarray(vec, np.float32))
    return out


def model_names(inputs: tuple[str, ...]) -> tuple[dict[str, str], str | None]:
    """model_id -> the ``--model`` name, from the extraction manifests beside the files (when there are),
    and the primary model's id (the manifest's top-level one)."""
    names: dict[str, str] = {}
    primary = None
    for item in inputs:
        # A file glob, or a folder without a manifest: names stay the ids.
        manifest = None if item.endswith(".parquet") else read_manifest(item)
        if manifest is None:
            continue
        primary = primary or manifest.get("model_id")
        for name, figures in (manifest.get("models") or {}).items():
            names[figures["model_id"]] = name
    return names, primary


def aligned_sample(
    by_model: dict[str, dict[str, np.ndarray]], model_ids: list[str], sample_size: int, seed: int
) -> tuple[list[str], dict[str, np.ndarray]]:
    """The images every model embedded (sorted, then a seeded sample) and each model's rows for them."""
    common = sorted(set.intersection(*(set(by_model[m]) for m in model_ids)))
    if len(common) > sample_size:
        rng = np.random.default_rng(seed)
        common = sorted(rng.choice(common, size=sample_size, replace=False).tolist())
    return common, {m: np.stack([by_model[m][u] for u in common]) if common else np.empty((0, 0)) for m in model_ids}


def render_png(comparisons: list[PairComparison], names: dict[str, str]) -> bytes:
    """One panel per pair: how many images share 0..k of their neighbours, with the three figures."""
    from matplotlib.figure import Figure

    panels = max(len(comparisons), 1)
    fig = Figure(figsize=(5.5 * min(panels, 3), 3.6 * ((panels + 2) // 3)), dpi=100, layout="constrained")
    axes = np.atleast_1d(fig.subplots((panels + 2) // 3, min(panels, 3))).ravel()
    for ax, pair in zip(axes, comparisons, strict=False):
        hist = pair["knn_overlap"]["histogram"]
        ax.bar(range(len(hist)), hist, color="#3b6ea5")
        ax.set_xlabel(f"neighbours shared of {pair['k']}")
        ax.set_ylabel("images")
        a, b = (names.get(m, m) for m in pair["model_ids"])
        ax.set_title(
            f"{a} vs {b}\noverlap@{pair['k']} {pair['knn_overlap']['mean']:.2f}  "
            f"Spearman {pair['distance_spearman']:.2f}  CKA {pair['linear_cka']:.2f}",
            fontsize=9,
        )
    buf = io.BytesIO()
    fig.savefig(buf, format="png")
    return buf.getvalue()


def compare_models(cfg: CompareConfig) -> ComparisonReport:
    """Read, compare every pair, stage comparison.json and comparison.png, swap them in; returns the report."""
    by_model = read_by_model(embedding_files(cfg.inputs))
    names, primary = model_names(cfg.inputs)
    # The primary model first: each pair reads "from the model in use to the other".
    model_ids = list(cfg.model_ids) or sorted(by_model, key=lambda m: (m != primary, m))
    missing = [m for m in model_ids if m not in by_model]
    if missing:
        raise InputError(f"--model_id {missing!r} has no rows in the input; it holds {sorted(by_model)}")
    if len(model_ids) < 2:
        raise InputError(f"comparing needs two or more models; the input holds {model_ids}")
    images, rows = aligned_sample(by_model, model_ids, cfg.sample_size, cfg.seed)
    if len(images) < 3:
        raise InputError(f"the models share {len(images)} image(s); comparing needs at least 3")
    comparisons: list[PairComparison] = []
    for a, b in itertools.combinations(model_ids, 2):
        figures = compare_pair(rows[a], rows[b], cfg.k, cfg.pairs, cfg.seed)
        comparisons.append({"models": [names.get(a, a), names.get(b, b)], "model_ids": [a, b], **figures})
        LOG.info("%s vs %s: %s", names.get(a, a), names.get(b, b), figures)
    common = len(set.intersection(*(set(by_model[m]) for m in model_ids)))
    token = publish.run_token(cfg.run_id)
    staging = publish.staging_dir_for(cfg.output, token)
    report: ComparisonReport = {
        "job": JOB_COMPARE,
        "run_id": cfg.run_id,
        "inputs": list(cfg.inputs),
        "output": cfg.output,
        "model_ids": model_ids,
        "images_by_model": {m: len(by_model[m]) for m in model_ids},
        "common_images": common,
        "sample_size": cfg.sample_size,
        "pairs": cfg.pairs,
        "seed": cfg.seed,
        "comparisons": comparisons,
        "files": {"json": storage.join(cfg.output, COMPARISON_JSON), "png": storage.join(cfg.output, COMPARISON_PNG)},
        "started_at": utc_stamp(cfg.started_at),
        "finished_at": utc_stamp(time.time()),
        "seconds": round(time.time() - cfg.started_at, 3),
    }
    try:
        storage.write_bytes(storage.join(staging, COMPARISON_PNG), render_png(comparisons, names))
        storage.write_json(storage.join(staging, COMPARISON_JSON), dict(report))
        publish.replace_directory(staging, cfg.output)
    except BaseException:
        storage.remove_tree(staging)
        raise
    return report


def run(argv: list[str] | None = None) -> dict[str, Any]:
    cfg, extra = CompareConfig.parse(argv)
    if extra:
        raise InputError(f"unknown arguments: {' '.join(extra)}")
    LOG.info("compare run_id=%s input=%s output=%s", cfg.run_id, list(cfg.inputs), cfg.output)
    return dict(compare_models(cfg))
