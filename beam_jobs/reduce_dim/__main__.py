"""``python -m beam_jobs.reduce_dim``: see ``pipeline.py``."""

from beam_jobs import runtime
from beam_jobs.reduce_dim.pipeline import run

if __name__ == "__main__":
    runtime.configure_logging()
    raise SystemExit(runtime.main(run))
