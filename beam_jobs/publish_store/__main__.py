"""``python -m beam_jobs.publish_store``: see ``job.py``."""

from beam_jobs import runtime
from beam_jobs.publish_store.job import run

if __name__ == "__main__":
    runtime.configure_logging()
    raise SystemExit(runtime.main(run))
