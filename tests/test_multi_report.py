"""`colorbench report --experiment A --experiment B`: one table over real experiments, tests only on a shared test set."""

from __future__ import annotations

import copy
from pathlib import Path

import mlflow
import numpy as np
import pandas as pd
import pytest
from conftest import TINY_GRID
from scipy import stats

from colorbench import tracking
from colorbench.cli import main
from colorbench.report.multi import build_multi_report
from colorbench.resolve import parse_experiment
from colorbench.runner import run_grid


def grid(name: str, losses: list[str], seed: int) -> dict:
    raw = copy.deepcopy(TINY_GRID)
    raw |= {"experiment": name, "seed": seed}
    raw["train"]["epochs"] = 1
    raw["grid"] = {"backbone": ["resnet18-6"], "loss": losses, "splitter": [{"name": "holdout", "val_fraction": 0.3}]}
    return raw


@pytest.fixture(scope="module")
def store(tmp_path_factory: pytest.TempPathFactory) -> str:
    """Three real experiments: A and B share the data and seed (so the test set), C draws another test set (seed 1)."""
    uri = f"sqlite:///{tmp_path_factory.mktemp('multi') / 'mlflow.db'}"
    run_grid(parse_experiment(grid("A", ["mse"], 0)), uri)
    run_grid(parse_experiment(grid("B", ["mse", "ce-rebalanced"], 0)), uri)
    run_grid(parse_experiment(grid("C", ["mse"], 1)), uri)
    return uri


def per_image(run_id: str, tmp: Path) -> pd.DataFrame:
    """The per-test-image metrics of a cell run's only fold run."""
    folds = mlflow.search_runs(filter_string=f"tags.`mlflow.parentRunId` = '{run_id}'", search_all_experiments=True)
    return pd.read_csv(tracking.download(folds["run_id"].iloc[0], "test_per_image.csv", tmp / run_id))


def test_a_shared_test_set_is_tested_and_configs_are_matched_across_experiments(store: str, tmp_path: Path) -> None:
    report = build_multi_report(["A", "B"], tmp_path / "ab", "psnr", store)
    table = report.table
    assert sorted(table["experiment"]) == ["A", "B", "B"]
    mse = table[table["loss"] == "mse"]
    assert mse["config"].nunique() == 1 and set(mse["experiment"]) == {"A", "B"} and (mse["experiments_with_config"] == 2).all()
    assert (table["not_tested"] == "").all()
    base = table[table["baseline"]].iloc[0]
    assert base["experiment"] == "A"  # the first experiment's baseline (its first cell in file order), never the best on test
    assert set(table.loc[~table["baseline"], "verdict"]) == {"undecided"}  # one hold-out split each: no test across splits
    assert set(table.loc[~table["baseline"], "verdict_note"]) == {"one split: the split's luck is not measured"}
    assert "verdict" in (tmp_path / "ab" / "summary.md").read_text().splitlines()[2]  # the table's header
    cells = mlflow.search_runs(search_all_experiments=True, filter_string=f"tags.`{tracking.TAG_ROLE}` = 'cell'")
    run_of = {(e, c): r for e, c, r in zip(cells["experiment_id"].map(lambda i: mlflow.get_experiment(i).name), cells[f"tags.{tracking.TAG_CELL}"], cells["run_id"], strict=True)}
    b = per_image(run_of[(base["experiment"], base["config"])], tmp_path)["psnr"].to_numpy(float)
    for _, row in table[~table["baseline"]].iterrows():
        c = per_image(run_of[(row["experiment"], row["config"])], tmp_path)["psnr"].to_numpy(float)
        assert row["n_images"] == len(b)
        expected = stats.wilcoxon(c, b).pvalue if np.any(c != b) else 1.0
        assert row["p_wilcoxon_images"] == pytest.approx(expected)
    assert "Left out of the tests" not in (tmp_path / "ab" / "summary.md").read_text()
    page = (tmp_path / "ab" / "report.html").read_text()  # the same table as one page, each row linked to its run
    assert page.count(' data-cell="') == len(table)
    assert all(f"/runs/{run_of[(row['experiment'], row['config'])]}\"" in page for _, row in table.iterrows())


def test_another_test_set_is_left_out_of_the_tests_with_the_reason(store: str, tmp_path: Path, capsys: pytest.CaptureFixture) -> None:
    assert main(["report", "--experiment", "A", "--experiment", "C", "--tracking-uri", store, "--out", str(tmp_path / "ac")]) == 0
    table = pd.read_csv(tmp_path / "ac" / "table.csv")
    assert len(table) == 2 and (table["experiments_with_config"] == 1).all()  # the data seed is part of the config
    other = table[~table["baseline"]].iloc[0]
    assert other["not_tested"].startswith("different test set: data fingerprint")
    assert pd.isna(other["p_wilcoxon_images"]) and pd.isna(other["p_adj_wilcoxon_images"]) and pd.isna(other["p_ttest_corrected"])
    summary = (tmp_path / "ac" / "summary.md").read_text()
    assert "Left out of the tests (1):" in summary and "different test set" in summary
    assert "different test set" in capsys.readouterr().out


def test_a_metric_not_logged_per_image_is_still_tested_over_the_splits(store: str, tmp_path: Path) -> None:
    table = build_multi_report(["A", "B"], tmp_path / "auc", "auc_rebalanced", store).table
    others = table[~table["baseline"]]
    assert (table["not_tested"] == "").all() and others["p_wilcoxon_images"].isna().all()  # the fingerprint covers the test rows
    assert set(others["verdict_note"]) == {"one split: the split's luck is not measured"}  # a verdict over splits, not "not compared"
