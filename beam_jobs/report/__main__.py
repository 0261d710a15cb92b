"""``python -m beam_jobs.report``: see ``job.py``. Exit 0, or 2 with one line for a bad argument or a night
with no extraction output."""

from __future__ import annotations

import logging
import sys

from beam_jobs.config import UsageError
from beam_jobs.report.config import one_line

LOG = logging.getLogger("beam_jobs.report")


def main(argv: list[str] | None = None) -> int:
    from beam_jobs.report.job import run
    from beam_jobs.runtime import configure_logging

    configure_logging()
    try:
        run(argv)
    except UsageError as exc:
        LOG.error("%s", one_line(exc))
        return 2
    return 0


if __name__ == "__main__":
    sys.exit(main())
