"""Configurations that are one configuration: a real tiny grid whose cells differ only in their random initialisation (the test
plugin's `plugin-mse-draws`, 3-fold). Their trained models may differ on the test images; the verdicts about the configurations
must not call any of them better or worse, and the baseline is the first cell in file order, not the luckiest."""

from __future__ import annotations

import copy
from pathlib import Path

import pandas as pd
import pytest
from conftest import TINY_GRID, run_grids_in_store

from colorbench.config import expand
from colorbench.plugins import load_plugins
from colorbench.report import Report, build_report
from colorbench.resolve import parse_experiment

EXPERIMENT = "init-only"
DRAWS = (0, 1, 2)  # random numbers drawn before the net is built: three initialisations of one configuration


@pytest.fixture(scope="module")
def reported(tmp_path_factory: pytest.TempPathFactory, empty_store: Path) -> tuple[Report, str]:
    """The grid trained (1 epoch at 32 px, 3 folds of the 6 pool photos) and reported with --all-pairs; and its file's first cell."""
    load_plugins(["plugin_losses"])
    folder = tmp_path_factory.mktemp("init-only")
    grid = copy.deepcopy(TINY_GRID) | {"experiment": EXPERIMENT}
    grid["train"]["epochs"] = 1
    grid["grid"] = {"backbone": ["resnet18-6"], "loss": [{"name": "plugin-mse-draws", "draws": k} for k in DRAWS], "splitter": [{"name": "kfold", "k": 3}]}
    uri, _ = run_grids_in_store(folder, empty_store, grid)
    return build_report(EXPERIMENT, folder / "results", tracking_uri=uri, all_pairs=True), expand(parse_experiment(grid))[0].id


def test_no_verdict_calls_one_initialisation_better_or_worse_than_another(reported: tuple[Report, str]) -> None:
    report, _ = reported
    table = pd.read_csv(report.out_dir / "table.csv")
    compared = table[~table["verdict"].isin(["-"])]
    assert len(compared) == len(DRAWS) - 1 and (compared["n_splits"] == 3).all()
    assert not compared["verdict"].isin(["better", "worse"]).any(), compared[["cell", "verdict", "p_adj_ttest_corrected"]]
    pairs = pd.read_csv(report.out_dir / "pairs.csv")
    assert len(pairs) == 3 and not pairs["verdict"].isin(["better", "worse"]).any()
    assert compared["mdd"].gt(0).all() and compared[["prob_worse", "prob_equivalent", "prob_better"]].notna().all().all()


def test_the_baseline_is_the_first_cell_in_file_order_and_the_image_tests_speak_of_the_trained_models(reported: tuple[Report, str]) -> None:
    report, first = reported
    assert report.baseline == first and report.baseline_how == "the first cell in grid-file order"
    summary = (report.out_dir / "summary.md").read_text()
    assert "significant" not in summary
    assert summary.count("descriptive, these trained models on these 6 test images") == len(DRAWS) - 1
    assert "Like every test over images, it is about the trained models, not the configurations" in summary
    table = pd.read_csv(report.out_dir / "table.csv")
    assert table["p_wilcoxon_images"].notna().sum() == len(DRAWS) - 1  # the image-level columns are there, as description
