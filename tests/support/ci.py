"""What a test needs from the machine, and what happens when the machine lacks it.

Locally, a missing tool (Chromium, PostgreSQL) makes its tests skip, with the line that installs it. Under
``CI=true`` it is a test failure instead, so a green CI run cannot hide a tier that never ran. (tests/conftest.py
also fails a ``CI=true`` run on any skip that is not in its ``ALLOWED_SKIPS``.)

    from tests.support.ci import requires_chromium

    pytestmark = [pytest.mark.slow, requires_chromium]   # a module of browser tests
    @requires_chromium                                    # or one test

Root reads a file whatever its mode, and CI runs as root: ``run_unprivileged`` runs a check in a child process as
user nobody (after its imports, so the venv may sit where nobody cannot read), in a folder from the
``open_tmp_path`` fixture (pytest's ``tmp_path`` sits under a folder only its owner can enter).
"""

from __future__ import annotations

import os
import subprocess
import sys
from typing import NoReturn

import pytest

ROOT = os.path.dirname(os.path.dirname(os.path.dirname(os.path.abspath(__file__))))
NOBODY = 65534  # Debian's nobody / nogroup

# The ``chromium`` fixture (tests/conftest.py) finds the binary; a test or module marked with this gets it first.
requires_chromium = pytest.mark.usefixtures("chromium")


def in_ci() -> bool:
    """True when the environment says this is a CI run (``CI=true``, as CI services set it; .ci/run sets it too)."""
    return os.environ.get("CI", "").strip().lower() in ("true", "1", "yes")


def fail_in_ci(why: str) -> None:
    """Under CI=true, fail the test with ``CI=true and <why>``; elsewhere return (the caller falls back)."""
    if in_ci():
        pytest.fail(f"CI=true and {why}", pytrace=False)


def unavailable(why: str) -> NoReturn:
    """A test that cannot run here: a failure under CI=true, a skip (with ``why``) elsewhere.

    ``why`` says what is missing and how to get it: "chromium is not installed: apt-get install chromium".
    """
    fail_in_ci(why)
    pytest.skip(why)


def drop_privileges_code() -> str:
    """Python lines that make a root process user nobody (no supplementary groups); nothing for anyone else."""
    return f"if os.geteuid() == 0:\n    os.setgroups([]); os.setgid({NOBODY}); os.setuid({NOBODY})\n"


def run_unprivileged(code: str, *args: str, imports: str = "", timeout: float = 120) -> subprocess.CompletedProcess:
    """Run ``code`` in a fresh Python (this venv, cwd the repository) as a user without root's powers.

    The child runs ``imports`` first, as the caller (root's venv may sit under /root), then drops to user nobody
    when it is root, then runs ``code`` with ``sys.argv[1:] == args``. A non-root caller is already unprivileged:
    the same code runs as it. Returns the finished process (text output captured).
    """
    source = f"import os, sys\n{imports}\n{drop_privileges_code()}{code}\n"
    return subprocess.run(
        [sys.executable, "-c", source, *args], capture_output=True, text=True, cwd=ROOT, timeout=timeout
    )
