"""CI's skip policy (.ci/check_skips.py): every skip is listed, and one CI does not expect fails the run."""

from __future__ import annotations

import subprocess
import sys
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
CHECK = ROOT / ".ci" / "check_skips.py"

SKIPPING_TESTS = '''
import pytest


def test_declared():
    pytest.skip("random tiny CLIP weights cannot detect anything: mechanics only")


def test_missing_package():
    pytest.importorskip("a_package_that_is_not_installed")


def test_runs():
    assert True
'''


def run_and_check(tmp_path: Path, allow_list: str) -> subprocess.CompletedProcess:
    """Run the skipping tests with a JUnit report, then the check on it with ``allow_list``."""
    (tmp_path / "test_skipping.py").write_text(SKIPPING_TESTS)
    (tmp_path / "allow.txt").write_text(allow_list)
    report = tmp_path / "report.xml"
    listed = subprocess.run(
        [sys.executable, "-m", "pytest", "-q", "-rs", "-p", "no:cacheprovider", f"--junitxml={report}",
         str(tmp_path / "test_skipping.py")],
        cwd=tmp_path, capture_output=True, text=True,
    )
    assert listed.returncode == 0, listed.stdout
    assert "SKIPPED" in listed.stdout and "a_package_that_is_not_installed" in listed.stdout  # -rs lists them
    return subprocess.run([sys.executable, str(CHECK), str(report), str(tmp_path / "allow.txt")],
                          capture_output=True, text=True)


def test_an_unexpected_skip_fails_and_is_named(tmp_path: Path) -> None:
    """A missing package is not on the allow-list: the check exits 1 naming the test and its reason."""
    result = run_and_check(tmp_path, "# by design\nrandom tiny CLIP weights cannot detect anything\n")
    assert result.returncode == 1, result.stderr
    assert "test_missing_package" in result.stderr and "a_package_that_is_not_installed" in result.stderr
    assert "test_declared" not in result.stderr


def test_only_expected_skips_pass(tmp_path: Path) -> None:
    """With both reasons allowed the check passes and counts them."""
    result = run_and_check(tmp_path, "random tiny CLIP weights\ncould not import 'a_package_that_is_not_installed'\n")
    assert result.returncode == 0, result.stderr
    assert "2 skips, all expected" in result.stderr


def test_ci_and_make_list_skips_and_check_them() -> None:
    """``make test`` lists skips (-rs); ``.ci/run`` passes it a JUnit report and runs the check on it."""
    makefile = (ROOT / "Makefile").read_text()
    assert "pytest -q -rs $(PYTEST_ARGS) $(TEST_PATHS)" in makefile
    ci = (ROOT / ".ci" / "run").read_text()
    assert 'make test PYTEST_ARGS="--junitxml=$report"' in ci
    assert ".ci/check_skips.py \"$report\" .ci/expected_skips.txt" in ci
    assert (ROOT / ".ci" / "expected_skips.txt").is_file()
