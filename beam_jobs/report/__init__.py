"""The morning report: what changed tonight, in pictures (issue 32).

    python -m beam_jobs.report --output_root ROOT --ds YYYY-MM-DD [--model_id M] [--window_days 7] [--top_k 24]
      -> ROOT/reports/ds=YYYY-MM-DD/report.html, report.png, report.json

Modules: ``config`` (the flags), ``inputs`` (manifests, failures, run records, duplicates, comparison, maps),
``vectors`` (block reads, seeded samples, PCA), ``novelty`` and ``clusters`` (the two analyses),
``analysis`` (the passes over the data), ``plots`` and ``render`` (pictures and the page), ``job`` (the run).
``report_step`` is what an orchestrator calls (imported lazily: this package's import stays light).
"""

from __future__ import annotations

from typing import Any


def report_step(
    output_root: str, ds: str, model_id: str | None, window_days: int, run_id: str | None
) -> dict[str, Any]:
    """See ``beam_jobs.report.job.report_step``."""
    from beam_jobs.report.job import report_step as step

    return step(output_root, ds, model_id, window_days, run_id)
