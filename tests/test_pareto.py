"""Two objectives at once: a real NSGA-II study on the bundled photos, its printed and tagged Pareto front, the report's files."""

from __future__ import annotations

import copy
from pathlib import Path

import numpy as np
import optuna
import pandas as pd
import pytest
import yaml
from test_search import TINY_SEARCH, trial_runs

from colorbench.cli import main
from colorbench.errors import ConfigError
from colorbench.report import build_report
from colorbench.search.space import parse_search
from colorbench.search.storage import open_storage
from colorbench.tracking import TAG_PARETO

OBJECTIVES = [{"metric": "val_psnr", "direction": "maximize"}, {"metric": "val_colorfulness_ratio", "direction": "maximize"}]
STUDIED = [{"metric": "val_psnr", "direction": "maximize"}, {"metric": "val_ab_rmse", "direction": "minimize"}]  # mostly agree: a small front


def non_dominated(values: np.ndarray) -> np.ndarray:
    """Rows of `values` (to maximize) that no other row dominates: >= everywhere and > somewhere."""
    better_or_equal = (values[None, :, :] >= values[:, None, :]).all(axis=2)
    strictly = (values[None, :, :] > values[:, None, :]).any(axis=2)
    return ~(better_or_equal & strictly).any(axis=1)


def test_dominance_reference_is_right() -> None:
    points = np.array([[1.0, 1.0], [2.0, 0.5], [0.5, 0.5], [2.0, 0.5], [1.0, 0.9]])
    assert non_dominated(points).tolist() == [True, True, False, True, False]


def test_a_two_objective_study_prints_and_tags_its_non_dominated_front(
    tracking_uri: str, tmp_path: Path, capsys: pytest.CaptureFixture
) -> None:
    raw = copy.deepcopy(TINY_SEARCH)
    raw.pop("objective"), raw.pop("pruner")
    raw |= {"experiment": "tiny-pareto", "objectives": STUDIED, "sampler": {"name": "nsga2", "population_size": 2}}
    raw["train"]["epochs"] = 1
    path = tmp_path / "pareto.yaml"
    path.write_text(yaml.safe_dump(raw))
    assert main(["search", str(path), "--n-trials", "4", "--tracking-uri", tracking_uri, "--out", str(tmp_path / "figs")]) == 0
    printed = capsys.readouterr().out
    assert "skipped optuna_history.png" not in printed and (tmp_path / "figs" / "optuna_history.png").read_bytes()[:4] == b"\x89PNG"
    assert not (tmp_path / "figs" / "optuna_intermediate.png").exists()  # nothing is reported without pruning
    runs = trial_runs("tiny-pareto")
    assert len(runs) == 4
    numbers = sorted(runs)
    sign = np.array([1.0 if o["direction"] == "maximize" else -1.0 for o in STUDIED])
    values = np.array([[runs[n].data.metrics[f"objective_{o['metric']}"] for o in STUDIED] for n in numbers]) * sign
    expected = {n for n, keep in zip(numbers, non_dominated(values), strict=True) if keep}
    assert 0 < len(expected) < len(numbers)  # the seeded study has dominated trials, so the tags can be wrong
    assert {n for n in numbers if runs[n].data.tags[TAG_PARETO] == "true"} == expected
    assert {n for n in numbers if runs[n].data.tags[TAG_PARETO] == "false"} == set(numbers) - expected
    front_lines = printed.split("Pareto front")[1].splitlines()
    for n in numbers:  # each front trial's line shows its run id and values; no other trial's run id is printed in the front table
        shown = any(runs[n].info.run_id in line for line in front_lines)
        assert shown == (n in expected)
    study = optuna.load_study(study_name="tiny-pareto", storage=open_storage(f"sqlite:///{tmp_path / 'optuna.db'}"))
    assert [d.name for d in study.directions] == ["MAXIMIZE", "MINIMIZE"]

    report = build_report("tiny-pareto", tmp_path / "report", tracking_uri=tracking_uri)
    table = pd.read_csv(tmp_path / "report" / "pareto.csv")
    assert set(table.loc[table["pareto"], "trial"]) == expected and len(table) == 4
    assert (tmp_path / "report" / "pareto.png").read_bytes()[:4] == b"\x89PNG"
    assert "pareto.png" in report.study_figures
    page = (tmp_path / "report" / "report.html").read_text()  # the front in report.html: its trials, each linked to its run
    front = page[page.index('id="pareto-table"') : page.index("</table>", page.index('id="pareto-table"'))]
    assert {n for n in numbers if f"/runs/{runs[n].info.run_id}\"" in front} == expected and "Pareto front" in page


def test_pruning_is_refused_for_several_objectives_and_objective_stays_single() -> None:
    raw = copy.deepcopy(TINY_SEARCH)
    raw.pop("objective")
    raw |= {"objectives": OBJECTIVES, "pruner": "median"}
    with pytest.raises(ConfigError, match="pruner median: Optuna does not prune multi-objective studies"):
        parse_search(raw)
    raw["pruner"] = "none"
    assert [g.metric for g in parse_search(raw).config.goals] == ["val_psnr", "val_colorfulness_ratio"]
    raw.pop("pruner")
    assert parse_search(raw).config.pruner.name == "none"
    with pytest.raises(ConfigError, match="either objective or objectives"):
        parse_search({**raw, "objective": {"metric": "val_psnr"}})
    assert [g.metric for g in parse_search(TINY_SEARCH).config.goals] == ["val_auc_rebalanced"]
