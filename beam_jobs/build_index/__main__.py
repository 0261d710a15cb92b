"""``python -m beam_jobs.build_index``: see ``pipeline.py``."""

from beam_jobs import runtime
from beam_jobs.build_index.pipeline import run

if __name__ == "__main__":
    runtime.configure_logging()
    raise SystemExit(runtime.main(run))
