"""--skip_known against a long history: does a night's cost grow with the nights kept before it?

    python scripts/bench_known_history.py [--nights 0 10 30] [--rows 2000] [--n 100] [--tree DIR]

Writes ``--nights`` earlier partitions of ``--rows`` rows each, in the job's own format and model_id
(ResNet50, random weights) but hashes no image has, beside tonight's output; tonight is ``--n`` real-derived
images, 10% of them the content of an earlier night's rows (so a few vectors are reused). The job runs end to
end (``python -m beam_jobs.extract_embeddings --skip_known`` as a subprocess) once per history length; prints
wall time, peak RSS, and how many known rows were scanned and matched. ``--tree`` runs another checkout's
job (the same inputs), to compare two versions side by side. Not a test: figures vary with the machine's load.
"""

from __future__ import annotations

import argparse
import glob
import json
import os
import shutil
import sys
import tempfile
from datetime import date, timedelta

import numpy as np

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
sys.path.insert(0, ROOT)

from devtools.samples import SampleSpec, build_sample_images  # noqa: E402
from scripts.benchutil import cpu_flags, extraction_command, run_measured  # noqa: E402


def model_id() -> str:
    from beam_jobs.extract_embeddings.models import resolve_models

    return resolve_models(("resnet50",), {"resnet50": "random"}, None, 0)[0].model_id


def write_history(out_root: str, nights: int, rows: int, mid: str, shared: dict[str, str]) -> None:
    """``nights`` partitions before 2026-11-30 of ``rows`` 2048-d rows; ``shared`` (sha -> uri) go in the first."""
    import pyarrow as pa
    import pyarrow.parquet as pq

    from beam_jobs import storage
    from beam_jobs.contract import EMBEDDING_COLUMNS

    rng = np.random.default_rng(0)
    schema = storage.arrow_schema(EMBEDDING_COLUMNS)
    for k in range(nights):
        ds = (date(2026, 11, 30) - timedelta(days=k + 1)).isoformat()
        folder = os.path.join(out_root, f"ds={ds}")
        os.makedirs(folder)
        shas = [f"{k:04d}{i:060d}" for i in range(rows)] + (list(shared) if k == 0 else [])
        vectors = rng.standard_normal((len(shas), 2048), dtype=np.float32)
        table = pa.table(
            {
                "image_uri": [f"/history/{ds}/{i}.jpg" for i in range(len(shas))],
                "embedding": pa.FixedSizeListArray.from_arrays(vectors.ravel(), 2048).cast(pa.list_(pa.float32())),
                "model_id": [mid] * len(shas),
                "content_sha256": shas,
                "width": [640] * len(shas),
                "height": [480] * len(shas),
                "run_id": ["history"] * len(shas),
            },
            schema=schema,
        )
        pq.write_table(table, os.path.join(folder, "embeddings-00000-of-00001.parquet"), row_group_size=2048)


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--nights", type=int, nargs="+", default=[0, 10, 30])
    parser.add_argument("--rows", type=int, default=2000, help="rows per earlier night")
    parser.add_argument("--n", type=int, default=100, help="tonight's images")
    parser.add_argument("--tree", default=ROOT, help="the checkout whose job runs")
    args = parser.parse_args()
    print(f"CPU: {cpu_flags()}; load average {os.getloadavg()[0]:.1f}; job from {args.tree}", flush=True)
    from beam_jobs.extract_embeddings.images import sha256_hex

    work = tempfile.mkdtemp(prefix="bench-known-history-")
    try:
        images = os.path.join(work, "images", "ds=2026-11-30")
        build_sample_images(images, SampleSpec(n=args.n, seed=5))
        files = sorted(glob.glob(os.path.join(images, "*")))
        shared = {}
        for f in files[: max(1, args.n // 10)]:
            with open(f, "rb") as handle:
                shared[sha256_hex(handle.read())] = f
        mid = model_id()
        rows = []
        for nights in args.nights:
            out_root = os.path.join(work, f"out-{nights}", "embeddings")
            write_history(out_root, nights, args.rows, mid, shared)
            out = os.path.join(out_root, "ds=2026-11-30")
            cmd = extraction_command(os.path.join(images, "*"), out, f"history-{nights}", "--skip_known")
            wall, rss, _ = run_measured(cmd, args.tree)
            with open(os.path.join(out, "manifest.json")) as handle:
                manifest = json.load(handle)
            metrics = manifest.get("metrics", {})
            scanned, matched = metrics.get("known_rows_scanned", "-"), metrics.get("known_rows_matched", "-")
            rows.append((nights, nights * args.rows, wall, rss, manifest["reused"], scanned, matched))
            reused = manifest["reused"]
            print(f"{nights} earlier nights: {wall:.1f}s, peak RSS {rss:.0f} MB, reused {reused}", flush=True)
            shutil.rmtree(os.path.join(work, f"out-{nights}"))
    finally:
        shutil.rmtree(work, ignore_errors=True)
    print("\n| earlier nights | known rows | wall s | peak RSS MB | reused | rows scanned | rows matched |")
    print("|---:|---:|---:|---:|---:|---:|---:|")
    for nights, known, wall, rss, reused, scanned, matched in rows:
        print(f"| {nights} | {known:,} | {wall:.1f} | {rss:.0f} | {reused} | {scanned} | {matched} |")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
