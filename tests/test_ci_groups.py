"""`.ci/all_ran.py`: CI's check that an optional test group (browser, scale-out) really ran, on real pytest junit reports."""

from __future__ import annotations

import subprocess
import sys
from pathlib import Path

import pytest

ALL_RAN = Path(__file__).resolve().parents[1] / ".ci" / "all_ran.py"

GROUP = '''
import pytest

def test_runs():
    pass

@pytest.mark.skipif({skip}, reason="no chromium")
def test_may_skip():
    pass
'''


def check_group(tmp_path: Path, skip: bool, select: str = "") -> subprocess.CompletedProcess:
    """Run a two-test group with pytest into a junit report, then the CI check on that report."""
    (tmp_path / "pytest.ini").write_text("[pytest]\n")
    (tmp_path / "test_group.py").write_text(GROUP.format(skip=skip))
    report = tmp_path / "report.xml"
    pytest_run = [sys.executable, "-m", "pytest", "-q", "-p", "no:cacheprovider", f"--junitxml={report}", "test_group.py"]
    subprocess.run(pytest_run + (["-k", select] if select else []), cwd=tmp_path, capture_output=True, check=False)
    return subprocess.run([sys.executable, str(ALL_RAN), "browser", str(report), "install chromium"], check=False, capture_output=True, text=True)


def test_a_group_whose_tests_all_ran_passes(tmp_path: Path) -> None:
    done = check_group(tmp_path, skip=False)
    assert done.returncode == 0, done.stderr
    assert done.stdout.strip() == "browser group: all 2 tests ran"


@pytest.mark.parametrize(
    ("skip", "select", "message"),
    [
        (True, "", "browser group: 2 tests, 1 skipped; every one must run (install chromium)"),
        (False, "no_such_test", "browser group: 0 tests, 0 skipped; every one must run (install chromium)"),
    ],
    ids=["a-skipped-test", "nothing-selected"],
)
def test_a_skipped_or_empty_group_fails(tmp_path: Path, skip: bool, select: str, message: str) -> None:
    done = check_group(tmp_path, skip=skip, select=select)
    assert done.returncode == 1
    assert done.stderr.strip() == message
