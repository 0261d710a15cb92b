"""beam_jobs.contract (layout, vocabulary, records, report): the one home of what the jobs and Airflow share;
importable at DAG-parse time."""

from __future__ import annotations

import os
import subprocess
import sys

from beam_jobs import contract
from tests.conftest import ROOT


def test_contract_and_config_import_only_the_standard_library():
    code = (
        "import sys; before = set(sys.modules); import beam_jobs.contract, beam_jobs.config;"
        "new = {m.split('.')[0] for m in set(sys.modules) - before};"
        "print(sorted(m for m in new if m not in sys.stdlib_module_names and m != 'beam_jobs'))"
    )
    proc = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, cwd=ROOT, check=True)
    assert proc.stdout.strip() == "[]"


def test_layout_helpers():
    assert contract.embeddings_dir("gs://b/out/", "2026-11-20") == "gs://b/out/embeddings/ds=2026-11-20"
    assert contract.projections_dir("/o", "umap", "2026-11-20") == "/o/projections/method=umap/ds=2026-11-20"
    assert contract.run_record_path("/o", "2026-11-20") == "/o/runs/ds=2026-11-20/run.json"
    assert contract.EMBEDDING_FILES == "embeddings-*.parquet"


def test_vocabulary_is_consistent():
    assert tuple(contract.MODEL_SPECS) == contract.MODELS
    assert contract.DEFAULT_MODEL in contract.MODELS
    assert 1 <= contract.DEFAULT_BATCH_SIZE <= contract.MAX_BATCH_SIZE
    # Each metric namespace is a job module: `python -m beam_jobs.<namespace>`.
    for job in contract.METRIC_NAMESPACES:
        assert os.path.isfile(os.path.join(ROOT, "beam_jobs", job, "__main__.py"))


def test_manifest_records_name_the_fields_the_jobs_write():
    # The TypedDicts are the documentation Airflow reads from: keep them in step with the jobs.
    extract = contract.ExtractManifest.__annotations__
    for key in ("inputs", "embedded", "failed", "model_id", "images_per_second", "files", "failures_by_reason"):
        assert key in extract
    reduce = contract.ReduceManifest.__annotations__
    for key in ("rows", "method", "trustworthiness", "explained_variance_ratio", "files", "rows_per_second"):
        assert key in reduce
    assert set(contract.FailureRecord.__annotations__) == {"image_uri", "stage", "error", "message", "run_id"}
