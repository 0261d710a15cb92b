"""scripts/demo_summary.py (the last step of `make demo`): reads the run record the publish task wrote."""

from __future__ import annotations

import json
import os
import subprocess
import sys

from tests.conftest import ROOT

SCRIPT = os.path.join(ROOT, "scripts", "demo_summary.py")


def test_summary_lists_every_output_of_the_published_run(tmp_path):
    from beam_jobs.contract import run_record_path
    from beam_jobs.nightly.plan import build_plan
    from beam_jobs.nightly.record import check_extraction, run_record

    out = str(tmp_path / "out")
    params = {"methods": ["pca", "umap"], "runner": "FnApiRunner", "model": "resnet50", "batch_size": 32}
    plan = build_plan(
        {**params, "max_failure_rate": 0.5, "weights": "random", "output_root": out}, "2026-11-20", "r1", "/i/*"
    )
    extraction = check_extraction({"inputs": 13, "embedded": 12, "failed": 1}, 0.5, plan["embeddings_dir"])
    record = run_record(plan, extraction, {m: {"rows": 12, "seconds": 1.0} for m in ("pca", "umap")})
    os.makedirs(os.path.dirname(run_record_path(out, "2026-11-20")))
    with open(run_record_path(out, "2026-11-20"), "w") as handle:
        json.dump(record, handle)

    proc = subprocess.run([sys.executable, SCRIPT, out, "2026-11-20"], capture_output=True, text=True, check=True)
    lines = proc.stdout.splitlines()
    assert "Nightly run for ds=2026-11-20 published (r1, runner FnApiRunner)" in lines
    assert f"  embeddings:  {out}/embeddings/ds=2026-11-20  (12 embedded, 1 failed of 13)" in lines
    assert f"  failures:    {out}/embeddings/ds=2026-11-20/failures-*.jsonl" in lines
    assert f"  umap  html:  {out}/projections/method=umap/ds=2026-11-20/map.html" in lines
    assert f"  pca   rows:  {out}/projections/method=pca/ds=2026-11-20/projection-*.parquet (12 rows)" in lines
    assert lines[-1] == f"  run record:  {out}/runs/ds=2026-11-20/run.json"

    missing = subprocess.run([sys.executable, SCRIPT, out, "2026-11-21"], capture_output=True, text=True)
    assert missing.returncode == 1
    assert "the DAG run did not publish" in missing.stderr
