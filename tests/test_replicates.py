"""Replicated experiments: `replicates: R` (the whole experiment again with data seed seed + r), `data.subsample: N` (N photos drawn
by photo before the test carve-out), the process executor and resume over replicates, and the report aggregated over replicates."""

from __future__ import annotations

import copy
from pathlib import Path

import mlflow
import numpy as np
import pandas as pd
import pytest
import yaml
from conftest import TINY_GRID
from scipy import stats

from colorbench import cli
from colorbench.config import expand
from colorbench.errors import ConfigError
from colorbench.lifecycle.prepare import prepare_data
from colorbench.report import build_report
from colorbench.report.validation import COLUMNS, aggregate, replicate_table
from colorbench.resolve import load_experiment, parse_experiment
from colorbench.runner import run_grid

TINY_IDS = ["17c83d286fc1", "9000afadfe8a"]  # TINY_GRID's cell ids before replicates existed: they must never change


def write_grid(tmp_path: Path, grid: dict) -> Path:
    path = tmp_path / "grid.yaml"
    path.write_text(yaml.safe_dump(grid))
    return path


def test_one_replicate_keeps_the_cell_ids_and_replicate_r_has_data_seed_seed_plus_r(tmp_path: Path) -> None:
    assert [c.id for c in expand(parse_experiment(copy.deepcopy(TINY_GRID)))] == TINY_IDS
    assert [c.id for c in expand(parse_experiment(copy.deepcopy(TINY_GRID) | {"replicates": 1}))] == TINY_IDS
    grid = copy.deepcopy(TINY_GRID) | {"seed": 5}
    path = write_grid(tmp_path, grid)
    cells = expand(load_experiment(path, ["replicates=3"]))  # an override, like the same edit in the file
    assert [(c.replicate, c.seed) for c in cells] == [(0, 5), (0, 5), (1, 6), (1, 6), (2, 7), (2, 7)]
    assert [c.id for c in cells[:2]] == [c.id for c in expand(parse_experiment(copy.deepcopy(grid)))]  # replicate 0 = no replicates
    assert len({c.id for c in cells}) == 6
    assert [c.flat_params()["replicate"] for c in cells] == ["0", "0", "1", "1", "2", "2"]
    assert all(c.flat_params()["seed"] == str(5 + c.replicate) for c in cells)


@pytest.mark.parametrize(
    ("override", "message"),
    [
        ("replicates=0", "replicates: Input should be greater than or equal to 1"),
        ("data.subsample=0", "data.subsample: Input should be greater than 0"),
        ("test_data={source: builtin, subsample: 3}", "test_data: Value error, subsample draws the training pool (data.subsample)"),
    ],
)
def test_bad_replicates_or_subsample_is_one_line_naming_it(tmp_path: Path, override: str, message: str) -> None:
    with pytest.raises(ConfigError) as err:
        load_experiment(write_grid(tmp_path, copy.deepcopy(TINY_GRID)), [override])
    assert message in str(err.value) and "\n" not in str(err.value)


SUBSAMPLED = {
    "experiment": "subsample",
    "data": {"source": "builtin", "image_size": 16, "crops_per_photo": 3, "subsample": 5},
    "test_data": {"source": "builtin", "image_size": 16, "crops_per_photo": 1},
    "replicates": 3,
}


def test_subsample_is_a_seeded_draw_of_whole_photos_that_differs_between_replicates_and_leaves_the_test_set_alone() -> None:
    cells = expand(parse_experiment(copy.deepcopy(SUBSAMPLED)))
    firsts = {c.replicate: c for c in reversed(cells)}
    prepared = [prepare_data(firsts[r]) for r in range(3)]
    for data in prepared:
        photos, crops = np.unique(data.pool.groups, return_counts=True)
        assert len(photos) == 5 and set(crops) == {3}  # 5 photos, every crop of each (crops of one photo stay together)
        assert data.test.names == prepared[0].test.names and np.array_equal(np.asarray(data.test.images), np.asarray(prepared[0].test.images))
    pools = [tuple(sorted(set(d.pool.names))) for d in prepared]
    assert len(set(pools)) == 3  # another replicate, another draw
    assert tuple(sorted(set(prepare_data(firsts[1]).pool.names))) == pools[1]  # seeded: the same replicate draws the same photos
    assert len({d.fingerprint for d in prepared}) == 3


def test_subsample_comes_before_the_test_carve_out_and_cannot_exceed_the_photos() -> None:
    grid = copy.deepcopy(SUBSAMPLED) | {"test_fraction": 0.4}
    del grid["test_data"]
    data = prepare_data(expand(parse_experiment(grid))[0])
    pool, test = set(data.pool.names), set(data.test.names)
    assert len(pool | test) == 5 and not pool & test and len(test) == 2  # the test set is carved out of the 5 drawn photos
    grid["data"]["subsample"] = 9
    with pytest.raises(ConfigError, match=r"^data.subsample 9 exceeds the 8 usable photos of the data source; lower subsample or add photos$"):
        prepare_data(expand(parse_experiment(grid))[0])


# --- the report over replicates: a hand-worked case of 4 configurations x 2 splitters x 3 replicates ---------------------------------

# per replicate and configuration: (holdout val, holdout test, kfold val, kfold test); kfold's two children are these +- 1
CASE = {
    0: {"A": (10, 20, 12, 21), "B": (12, 21, 11, 21), "C": (11, 22, 14, 23), "D": (9, 19, 9, 19)},
    1: {"A": (15, 24, 13, 23), "B": (14, 22, 12, 22), "C": (13, 21, 11, 21), "D": (12, 10, 10, 20)},
    2: {"A": (10, 20, 7, 20), "B": (11, 22, 8, 22), "C": (12, 19, 9, 22), "D": (13, 18, 10, 25)},
}
# worked by hand (psnr-like: higher is better). Truth = mean of a configuration's two cells: replicate 0 A 20.5 B 21 C 22.5 D 19 (best
# C); 1: A 23.5 B 22 C 21 D 15 (best A); 2: A 20 B 22 C 20.5 D 21.5 (best B). Hold-out picks B, A, D; k-fold picks C, A, D (in
# replicate 2 k-fold's own best cell, D at 25, is not the truth's best). Hold-out's errors in replicate 1 differ in sign.
EXPECTED = {  # (bias, abs_error, kendall_tau, regret, picks_best) per replicate
    "holdout": [(-10, 10, 2 / 3, 1.5, 0), (-5.75, 6.75, 1, 0, 1), (-8.25, 8.25, 1 / 3, 0.5, 0)],
    "kfold": [(-9.5, 9.5, 2 / 3, 0, 1), (-10, 10, 1, 0, 1), (-13.75, 13.75, 1 / 3, 0.5, 0)],
}


def case_children() -> pd.DataFrame:
    rows = []
    for replicate, configurations in CASE.items():
        for name, (hv, ht, kv, kt) in configurations.items():
            rows.append({"replicate": replicate, "configuration": name, "splitter": "holdout", "cell": f"h{replicate}{name}", "val": hv, "test": ht})
            rows += [
                {"replicate": replicate, "configuration": name, "splitter": "kfold", "cell": f"k{replicate}{name}", "val": kv + d, "test": kt + d}
                for d in (-1, 1)
            ]
    return pd.DataFrame(rows).assign(draw=0, repeat=0)


def wilson(hits: int, n: int, z: float = 1.959963984540054) -> tuple[float, float]:
    """The Wilson score interval, written out (Wilson 1927)."""
    p = hits / n
    centre, half = (p + z**2 / (2 * n)) / (1 + z**2 / n), z / (1 + z**2 / n) * np.sqrt(p * (1 - p) / n + z**2 / (4 * n**2))
    return centre - half, centre + half


def negate(values: np.ndarray) -> np.ndarray:
    return -values


def test_each_replicate_judges_every_scheme_against_one_truth() -> None:
    table = replicate_table(case_children(), negate)
    assert list(table.columns) == ["replicate", *COLUMNS]
    for splitter, expected in EXPECTED.items():
        rows = table[table["splitter"] == splitter].sort_values("replicate")
        got = rows[["bias", "abs_error", "kendall_tau", "regret", "picks_best"]].to_numpy()
        np.testing.assert_allclose(got, np.array(expected, dtype=float), atol=1e-12)
        assert list(rows["n_configurations"]) == [4, 4, 4] and list(rows["n_children"]) == ([4] * 3 if splitter == "holdout" else [8] * 3)
    assert table.loc[table["splitter"] == "holdout", "spread"].isna().all()
    np.testing.assert_allclose(table.loc[table["splitter"] == "kfold", "spread"], np.sqrt(2))  # children +- 1: sd sqrt(2)


def test_over_replicates_means_bootstrap_intervals_and_wilson_for_picks_best() -> None:
    table = aggregate(replicate_table(case_children(), negate)).set_index("splitter")
    for splitter, expected in EXPECTED.items():
        values = np.array(expected, dtype=float)
        row = table.loc[splitter]
        assert row["n_replicates"] == 3
        for i, column in enumerate(("bias", "abs_error", "kendall_tau", "regret")):
            assert row[column] == pytest.approx(values[:, i].mean())
            ci = stats.bootstrap((values[:, i],), np.mean, n_resamples=10_000, method="percentile", random_state=np.random.default_rng(0))
            assert (row[f"{column}_ci_low"], row[f"{column}_ci_high"]) == pytest.approx((ci.confidence_interval.low, ci.confidence_interval.high))
            low, high = values[:, i].min() - 1e-12, values[:, i].max() + 1e-12
            assert low <= row[f"{column}_ci_low"] <= row[column] <= row[f"{column}_ci_high"] <= high
        hits = int(values[:, 4].sum())
        assert row["picks_best"] == pytest.approx(hits / 3)
        assert (row["picks_best_ci_low"], row["picks_best_ci_high"]) == pytest.approx(wilson(hits, 3))
    assert table.loc["holdout", "picks_best_ci_low"] == pytest.approx(0.0615, abs=1e-4)  # 1 of 3 by hand: [6.1 %, 79.2 %]
    assert table.loc["holdout", "picks_best_ci_high"] == pytest.approx(0.7923, abs=1e-4)
    one = aggregate(replicate_table(case_children().query("replicate == 0"), negate)).set_index("splitter")
    assert one["n_replicates"].tolist() == [1, 1] and one["bias_ci_low"].isna().all()  # one data set: no interval over data sets
    assert one.loc["kfold", "picks_best_ci_low"] == pytest.approx(wilson(1, 1)[0])


# --- end to end: a replicated grid under the process executor, resumed, then reported ---------------------------------------------

E2E = {
    "experiment": "replicated",
    "data": {"source": "builtin", "image_size": 16, "crops_per_photo": 2, "subsample": 6},
    "test_data": {"source": "builtin", "image_size": 16, "crops_per_photo": 1},
    "replicates": 2,
    "train": {"epochs": 1, "batch_size": 8, "lr": 1.0e-3, "seed": 0},
    "grid": {"backbone": ["resnet18-6"], "loss": ["mse", {"name": "bg-weighted", "base": "mse", "mask": "chroma"}],
             "splitter": [{"name": "holdout", "val_fraction": 0.3}, {"name": "kfold", "k": 2}]},
}


def test_replicated_grid_runs_every_cell_per_replicate_resumes_and_reports_per_replicate(tracking_uri: str, tmp_path: Path) -> None:
    exp = parse_experiment(copy.deepcopy(E2E))
    outcomes, _ = run_grid(exp, tracking_uri, "process", {"workers": 2})
    assert len(outcomes) == 8 and not any(o.failure or o.skipped for o in outcomes)
    runs = mlflow.search_runs(experiment_names=["replicated"], max_results=1000)
    assert set(runs["status"]) == {"FINISHED"}
    cells, folds = runs[runs["tags.colorbench.role"] == "cell"], runs[runs["tags.colorbench.role"] == "fold"]
    assert sorted(cells["tags.colorbench.replicate"]) == ["0"] * 4 + ["1"] * 4 and len(folds) == 12
    assert (folds["tags.colorbench.replicate"] == folds["params.replicate"]).all() and (folds["params.seed"] == folds["params.replicate"]).all()
    assert (folds["params.n_test"] == "8").all()  # the fixed test set: all 8 photos, in every replicate
    assert folds.groupby("tags.colorbench.replicate")["tags.colorbench.data_fingerprint"].nunique().tolist() == [1, 1]
    assert cells["tags.colorbench.data_fingerprint"].nunique() == 2  # each replicate its own pool

    again, _ = run_grid(exp, tracking_uri)  # resume: every (cell, replicate) finished, nothing trains again
    assert all(o.skipped for o in again) and len(mlflow.search_runs(experiment_names=["replicated"], max_results=1000)) == len(runs)

    report = build_report("replicated", tmp_path / "out", tracking_uri=tracking_uri)
    table = report.table[report.table["cell"] != "gray baseline"]
    assert sorted(table["replicate"]) == [0] * 4 + [1] * 4
    assert sorted(table["rank"]) == [1, 1, 2, 2, 3, 3, 4, 4]  # ranked within a replicate
    base = table.set_index("cell").loc[report.baseline]
    assert base["replicate"] == 0 and base["loss"] == "mse" and base["splitter"].startswith("holdout")  # default: replicate 0's first cell
    assert report.baseline_how == "the first cell in grid-file order"
    stars = table[table["baseline"]]
    assert sorted(stars["replicate"]) == [0, 1] and (stars[["backbone", "loss", "splitter"]].nunique() == 1).all()
    for cid, row in table.set_index("cell").iterrows():  # every comparison within its replicate
        assert table.set_index("cell").loc[report.baselines[cid], "replicate"] == row["replicate"]
    per_replicate = pd.read_csv(tmp_path / "out" / "validation_replicates.csv")
    assert list(per_replicate.columns) == ["replicate", *COLUMNS] and per_replicate.groupby("splitter").size().tolist() == [2, 2]
    overall = pd.read_csv(tmp_path / "out" / "validation.csv")
    assert overall["n_replicates"].tolist() == [2, 2]
    assert {f"{c}_ci_{end}" for c in ("bias", "abs_error", "kendall_tau", "regret", "picks_best") for end in ("low", "high")} <= set(overall)
    text = (tmp_path / "out" / "validation.md").read_text()
    assert "picks the configuration best on test in" in text and "of 2 data sets [" in text
    assert (tmp_path / "out" / "validation_replicates.png").stat().st_size > 0


def test_dry_run_prints_the_trainings_per_replicate_and_in_total(tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    path = write_grid(tmp_path, copy.deepcopy(TINY_GRID))
    assert cli.main(["run", str(path), "replicates=3", "--dry-run"]) == 0
    out = capsys.readouterr().out
    assert "per replicate: 2 cells, 3 fold trainings of 2 epochs each (listed: replicate 0); 3 replicates (data seeds 0..2): " in out
    assert "6 cells, 9 fold trainings in total (dry run: nothing trained)" in out
    assert sum(line.startswith(tuple(TINY_IDS)) for line in out.splitlines()) == 2
