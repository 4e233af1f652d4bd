"""The MLflow UI as a user meets it, in a real headless Chromium: `scripts/ui_screenshot.py` opens the training-runs address that
`colorbench run` prints, checks the UI's "Model training" mode and every cell and fold run's name on the page (cell runs
expanded), and saves the screenshot. Group `browser` (`pytest -m browser`; .ci/run runs it where Chromium is installed)."""

from __future__ import annotations

import os
import shutil
import struct
import subprocess
import sys
from pathlib import Path

import pytest

from colorbench.resolve import parse_experiment
from colorbench.runner import run_grid

pytestmark = pytest.mark.browser
ROOT = Path(__file__).resolve().parents[1]
CHROMIUM = "/usr/bin/chromium"


def test_the_runs_view_shows_a_grid_nested_by_cell(tiny_grid: dict, tracking_uri: str, tmp_path: Path) -> None:
    if shutil.which(CHROMIUM) is None:
        pytest.skip(f"no Chromium at {CHROMIUM}: install Debian's chromium package to check the MLflow UI in a browser")
    tiny_grid["train"]["epochs"] = 1
    tiny_grid["grid"]["splitter"] = [{"name": "kfold", "k": 2}]
    run_grid(parse_experiment(tiny_grid), tracking_uri)
    out = tmp_path / "runs.png"
    command = [sys.executable, str(ROOT / "scripts" / "ui_screenshot.py"), "--store", tracking_uri, "--experiment", "tiny", "--out", str(out)]
    command += ["--size", "1200x600", "--timeout", "60", "--chromium", CHROMIUM]
    done = subprocess.run(command, check=False, capture_output=True, text=True, timeout=300, env={**os.environ, "PYTHONPATH": str(ROOT)})
    assert done.returncode == 0, done.stderr
    assert "checked: 1 cell runs and, after expanding 1 of them, 2 fold runs shown by name" in done.stdout
    png = out.read_bytes()
    assert png[:8] == b"\x89PNG\r\n\x1a\n" and struct.unpack(">II", png[16:24]) == (1200, 600)  # the viewport asked for
