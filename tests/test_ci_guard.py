"""CI cannot hide a tier: under CI=true a skip outside tests/conftest.py's ALLOWED_SKIPS fails the run, and so does
a missing Chromium (tests/support/ci.py); elsewhere both are skips. Each case is a small pytest run in a child
process with this suite's conftest as its plugin."""

from __future__ import annotations

import os
import subprocess
import sys

import pytest

from tests.conftest import ROOT, allowed_skip
from tests.support.ci import fail_in_ci, in_ci, unavailable

SKIPS = """
import pytest

def test_runs():
    pass

def test_skips():
    pytest.skip("nothing to run on this machine")

@pytest.mark.xfail(reason="known to fail", strict=True)
def test_expected_to_fail():
    assert False
"""
NEEDS_CHROMIUM = """
from tests.support.ci import requires_chromium

@requires_chromium
def test_in_a_browser():
    pass
"""


def run_pytest(folder, source: str, ci: bool, *plugins: str, **env: str) -> subprocess.CompletedProcess:
    """pytest on one test file in ``folder`` (its own rootdir and cwd), with tests/conftest.py loaded as a plugin."""
    (folder / "pytest.ini").write_text("[pytest]\n")
    (folder / "test_it.py").write_text(source)
    full_env = {k: v for k, v in os.environ.items() if k not in ("CI", "CHROMIUM_BIN")}
    full_env.update(env, PYTHONPATH=os.pathsep.join([ROOT, str(folder)]))
    if ci:
        full_env["CI"] = "true"
    plugin_args = [arg for name in ("tests.conftest", *plugins) for arg in ("-p", name)]
    return subprocess.run(
        [sys.executable, "-m", "pytest", *plugin_args, "-p", "no:cacheprovider", "-rs", "test_it.py"],
        capture_output=True,
        text=True,
        cwd=folder,
        env=full_env,
        timeout=120,
    )


def test_a_skip_outside_the_allowlist_fails_a_ci_run_and_names_the_test(tmp_path):
    proc = run_pytest(tmp_path, SKIPS, ci=True)
    assert proc.returncode == pytest.ExitCode.TESTS_FAILED, proc.stdout[-3000:]
    assert "1 passed, 1 skipped, 1 xfailed" in proc.stdout  # the xfail is not a skip
    assert "skips outside ALLOWED_SKIPS" in proc.stdout
    assert "test_it.py::test_skips: nothing to run on this machine" in proc.stdout


def test_an_allowlisted_skip_passes_a_ci_run_and_its_reason_is_printed(tmp_path):
    allow = "from tests import conftest\nconftest.ALLOWED_SKIPS['test_it.py::test_sk*'] = 'no such machine here'\n"
    (tmp_path / "allow_it.py").write_text(allow)
    proc = run_pytest(tmp_path, SKIPS, True, "allow_it")
    assert proc.returncode == pytest.ExitCode.OK, proc.stdout[-3000:]
    assert "SKIPPED [1] test_it.py:8: nothing to run on this machine" in proc.stdout  # -rs
    assert "ALLOWED_SKIPS" not in proc.stdout


def test_a_missing_chromium_fails_a_ci_run_with_the_line_that_installs_it(tmp_path):
    proc = run_pytest(tmp_path, NEEDS_CHROMIUM, ci=True, CHROMIUM_BIN="no-such-chromium")
    assert proc.returncode == pytest.ExitCode.TESTS_FAILED, proc.stdout[-3000:]
    assert "CI=true and chromium is not installed: apt-get install chromium" in proc.stdout


def test_outside_ci_a_missing_chromium_and_any_skip_are_skips(tmp_path):
    proc = run_pytest(tmp_path, SKIPS + NEEDS_CHROMIUM, ci=False, CHROMIUM_BIN="no-such-chromium")
    assert proc.returncode == pytest.ExitCode.OK, proc.stdout[-3000:]
    assert "1 passed, 2 skipped, 1 xfailed" in proc.stdout
    assert "chromium is not installed: apt-get install chromium" in proc.stdout


def test_the_helpers_fail_under_ci_and_skip_elsewhere(monkeypatch):
    for value in ("true", "True", "1"):
        monkeypatch.setenv("CI", value)
        assert in_ci()
        with pytest.raises(pytest.fail.Exception, match=r"^CI=true and postgres is gone: apt-get install postgresql$"):
            fail_in_ci("postgres is gone: apt-get install postgresql")
        with pytest.raises(pytest.fail.Exception, match=r"^CI=true and x is missing$"):
            unavailable("x is missing")
    for value in ("", "false", "0"):
        monkeypatch.setenv("CI", value)
        assert not in_ci()
        fail_in_ci("anything")  # returns: the caller falls back
        with pytest.raises(pytest.skip.Exception, match=r"^x is missing$"):
            unavailable("x is missing")


def test_the_allowlist_matches_node_ids_and_patterns(monkeypatch):
    from tests import conftest

    monkeypatch.setattr(conftest, "ALLOWED_SKIPS", {"tests/test_a.py::test_b": "one", "tests/test_c.py::*": "all"})
    assert allowed_skip("tests/test_a.py::test_b") == "one"
    assert allowed_skip("tests/test_a.py::test_bb") is None
    assert allowed_skip("tests/test_c.py::test_d[x]") == "all"
    assert allowed_skip("tests/test_e.py::test_f") is None
