"""report.html as a user opens it: from its file, in a real headless Chromium (`scripts/report_screenshot.py`). The page shows the
ranking and a photo comparison whose rows are in order of the stored per-image differences, for each metric of its switch; its
photos are the two cells' colorizations; and it requests nothing but its own file and data: URIs. Group `browser`."""

from __future__ import annotations

import base64
import io
import json
import os
import shutil
import struct
import subprocess
import sys
from pathlib import Path

import mlflow
import numpy as np
import pandas as pd
import pytest
from PIL import Image

from colorbench.cli import main
from colorbench.colorize import load
from colorbench.metrics import badness
from colorbench.resolve import parse_experiment
from colorbench.runner import run_grid

pytestmark = pytest.mark.browser
ROOT = Path(__file__).resolve().parents[1]
CHROMIUM = "/usr/bin/chromium"


def png(src: str) -> np.ndarray:
    return np.asarray(Image.open(io.BytesIO(base64.b64decode(src.split(",", 1)[1]))).convert("RGB"))


def per_image(cell_run: str, tmp: Path) -> pd.DataFrame:
    """A cell's per-image test values, mean over its fold runs, from their artifacts."""
    folds = mlflow.search_runs(search_all_experiments=True, filter_string=f"tags.`mlflow.parentRunId` = '{cell_run}' and tags.`colorbench.role` = 'fold'")
    frames = [pd.read_csv(mlflow.artifacts.download_artifacts(run_id=r, artifact_path="test_per_image.csv", dst_path=str(tmp / r))) for r in folds["run_id"]]
    return pd.concat(frames).groupby(level=0).mean(numeric_only=True)


def test_the_report_page_shows_sorted_photos_of_both_cells_and_loads_nothing(tiny_grid: dict, tracking_uri: str, tmp_path: Path) -> None:
    if shutil.which(CHROMIUM) is None:
        pytest.skip(f"no Chromium at {CHROMIUM}: install Debian's chromium package to check report.html in a browser")
    tiny_grid["train"]["epochs"] = 1
    run_grid(parse_experiment(tiny_grid), tracking_uri)
    assert main(["report", "--experiment", "tiny", "--tracking-uri", tracking_uri, "--out", str(tmp_path / "report")]) == 0
    table = pd.read_csv(tmp_path / "report" / "table.csv")
    cells = table["cell"].iloc[:-1].tolist()  # rank order, the gray baseline last
    out, facts_file = tmp_path / "page.png", tmp_path / "facts.json"
    command = [sys.executable, str(ROOT / "scripts" / "report_screenshot.py"), str(tmp_path / "report" / "report.html"), "--out", str(out)]
    command += ["--facts", str(facts_file), "--size", "1200x900", "--chromium", CHROMIUM]
    done = subprocess.run(command, check=False, capture_output=True, text=True, timeout=300, env={**os.environ, "PYTHONPATH": str(ROOT)})
    assert done.returncode == 0, done.stderr
    facts = json.loads(facts_file.read_text())
    assert facts["requests"][0] == (tmp_path / "report" / "report.html").as_uri()
    assert all(url.startswith(("file://", "data:")) for url in facts["requests"])  # nothing from the network
    assert facts["ranking"] == cells
    # the comparison: the top cell (the runner-up when it is the baseline) as A against the baseline as B; rows in order of A's
    # advantage, from the stored values
    base = table.loc[table["baseline"].eq(True), "cell"].item()  # booleans, and empty for the gray row
    pair = ((cells[1] if cells[0] == base else cells[0]), base)
    mlflow.set_tracking_uri(tracking_uri)
    runs = mlflow.search_runs(experiment_names=["tiny"], filter_string="tags.`colorbench.role` = 'cell'").set_index("tags.colorbench.cell_id")
    a, b = (per_image(runs.loc[c, "run_id"], tmp_path) for c in pair)
    for view in facts["switched"]:
        m = view["metric"]
        advantage = badness(m, b[m]).to_numpy() - badness(m, a[m]).to_numpy()
        assert sorted(r["index"] for r in view["rows"]) == list(range(len(advantage))), m
        assert [r["advantage"] for r in view["rows"]] == pytest.approx([advantage[r["index"]] for r in view["rows"]]), m  # each photo's own
        assert [r["advantage"] for r in view["rows"]] == pytest.approx(sorted(advantage, reverse=True)), m  # largest first
    assert len(facts["rows"]) == 6 and len(facts["one_each_end"]["rows"]) == 2 and facts["one_each_end"]["gap"] == "… 4 photos in between …"
    models = [load(runs.loc[c, "run_id"], "cpu") for c in pair]
    for row in facts["rows"]:
        truth = png(row["truth"])
        for own, other, shown in ((models[0], models[1], png(row["a"])), (models[1], models[0], png(row["b"]))):
            mine, theirs = np.abs(shown.astype(int) - own.colorize(truth)), np.abs(shown.astype(int) - other.colorize(truth))
            assert mine.max() <= 1 and theirs.mean() > 3 * mine.mean()  # this cell's colorization, not the other's
    shot = out.read_bytes()
    assert shot[:8] == b"\x89PNG\r\n\x1a\n" and struct.unpack(">II", shot[16:24]) == (1200, 900)
