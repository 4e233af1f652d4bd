"""`colorbench report` on a real tiny grid: table, fold statistics, significance tests, figures, summary, CLI."""

from __future__ import annotations

import copy
import shutil
import subprocess
import sys
from collections.abc import Iterator
from contextlib import contextmanager
from pathlib import Path

import baycomp
import mlflow
import numpy as np
import pandas as pd
import pytest
from conftest import TINY_GRID, run_grids_in_store
from mlflow.tracking import MlflowClient
from PIL import Image
from scipy import stats
from statsmodels.stats.multitest import multipletests
from statsmodels.stats.power import TTestPower

from colorbench import cli, tracking
from colorbench.config import expand
from colorbench.errors import ConfigError
from colorbench.losses import LOSSES, MSE
from colorbench.metrics import COLOURFUL, METRICS, Metric, badness
from colorbench.report import FIGURES, GRAY, Report, build_report, decodings_table, terminal_rows
from colorbench.report.validation import COLUMNS, replicate_table
from colorbench.resolve import parse_experiment
from colorbench.runner import run_grid
from colorbench.search.space import ObjectiveConfig, objective_choices

EXPERIMENT = "tiny-report"


@LOSSES.register("test-report-nan")
class NanLoss(MSE):
    """A loss that diverges at once, so its cell fails."""

    def __call__(self, pred, target_ab, weights=None):
        return super().__call__(pred, target_ab, weights) * float("nan")


@pytest.fixture(scope="module")
def store(tmp_path_factory: pytest.TempPathFactory, empty_store: Path) -> str:
    """One real grid (2 backbones x holdout/kfold k=2, 2 epochs at 32 px) plus one failing cell, in a module-wide store."""
    grid = copy.deepcopy(TINY_GRID) | {"experiment": EXPERIMENT}
    grid["grid"]["backbone"] = ["resnet18-6", "resnet18-7"]
    failing = copy.deepcopy(grid)
    failing["grid"] = {"backbone": ["resnet18-6"], "loss": ["test-report-nan"], "splitter": [{"name": "holdout", "val_fraction": 0.3}]}
    uri, ((outcomes, _), _) = run_grids_in_store(tmp_path_factory.mktemp("report-store"), empty_store, grid, failing)
    assert [o.failure for o in outcomes] == [None] * 4
    return uri


def runs(uri: str) -> pd.DataFrame:
    return runs_of(uri, EXPERIMENT)


def runs_of(uri: str, experiment: str) -> pd.DataFrame:
    mlflow.set_tracking_uri(uri)
    df = mlflow.search_runs(experiment_names=[experiment], max_results=1000)
    return df[df["status"] == "FINISHED"]


def cell_id(uri: str, backbone: str, splitter: str) -> str:
    df = runs(uri)
    match = df[(df["params.backbone.name"] == backbone) & (df["params.splitter.name"] == splitter) & (df["tags.colorbench.role"] == "cell")]
    return match["tags.colorbench.cell_id"].item()


def child_folds(uri: str, cell: str) -> pd.DataFrame:
    df = runs(uri)
    folds = df[(df["tags.colorbench.cell_id"] == cell) & (df["tags.colorbench.role"] == "fold")]
    return folds.assign(fold=folds["tags.colorbench.fold"].astype(int)).sort_values("fold")


@pytest.fixture(scope="module")
def report(store: str, tmp_path_factory: pytest.TempPathFactory) -> Report:
    """The report against the resnet18-6 k-fold cell, named by a prefix of its id, so a fold t-test applies."""
    baseline = cell_id(store, "resnet18-6", "kfold")[:6]
    return build_report(EXPERIMENT, tmp_path_factory.mktemp("results"), baseline=baseline, tracking_uri=store)


def test_table_has_a_row_per_cell_plus_gray_and_fold_columns(report: Report, store: str) -> None:
    table = report.table
    assert len(table) == 5 and table["cell"].iloc[-1] == GRAY
    cells = table.iloc[:4]
    assert set(cells["cell"]) == {cell_id(store, b, s) for b in ("resnet18-6", "resnet18-7") for s in ("holdout", "kfold")}
    assert list(cells["rank"]) == [1, 2, 3, 4]
    assert list(cells["test_psnr_mean"]) == sorted(cells["test_psnr_mean"], reverse=True)
    assert {"backbone", "loss", "splitter", "test_psnr_std", "best_epoch_mean", "train_seconds_mean", "p_ttest_corrected", "n_splits", "n_images"} <= set(table)
    kfold, holdout = cells[cells["splitter"] == "kfold(k=2)"], cells[cells["splitter"] == "holdout(val_fraction=0.3)"]
    assert len(kfold) == len(holdout) == 2
    assert kfold[["split0_test_psnr", "split1_test_psnr"]].notna().all().all()
    assert holdout["split0_test_psnr"].notna().all() and holdout["split1_test_psnr"].isna().all()
    assert set(cells["loss"]) == {"mse"} and set(cells["backbone"]) == {"resnet18-6", "resnet18-7"}  # default weights hidden
    assert table.iloc[-1]["test_psnr_mean"] == pytest.approx(runs(store)["metrics.gray_test_psnr"].dropna().iloc[0])
    written = pd.read_csv(report.out_dir / "table.csv")
    assert list(written.columns) == list(table.columns) and list(written["cell"]) == list(table["cell"])
    markdown = (report.out_dir / "table.md").read_text()
    assert all(c in markdown for c in table["cell"]) and "split1_test_psnr" in markdown and "Wilcoxon" in markdown


def test_means_stds_and_fold_columns_match_the_fold_runs(report: Report, store: str) -> None:
    for _, row in report.table.iloc[:4].iterrows():
        folds = child_folds(store, row["cell"])
        assert row["n_folds"] == len(folds) == (2 if row["splitter"].startswith("kfold") else 1)
        for metric in ("psnr", "ab_rmse", "colorfulness_ratio", "auc_rebalanced"):
            values = folds[f"metrics.test_{metric}"].to_numpy()
            assert row[f"test_{metric}_mean"] == pytest.approx(values.mean())
            assert row[f"test_{metric}_std"] == pytest.approx(values.std(ddof=1) if len(values) > 1 else 0.0)
            for fold, value in zip(folds["fold"], values, strict=True):
                assert row[f"split{fold}_test_{metric}"] == pytest.approx(value)


def per_image_mean(uri: str, cell: str, tmp_path: Path) -> np.ndarray:
    paths = [
        mlflow.artifacts.download_artifacts(run_id=r, artifact_path="test_per_image.csv", dst_path=str(tmp_path / r))
        for r in child_folds(uri, cell)["run_id"]
    ]
    return np.mean([pd.read_csv(p)["psnr"].to_numpy() for p in paths], axis=0)


def test_p_values_match_scipy_on_the_same_numbers(report: Report, store: str, tmp_path: Path) -> None:
    base = cell_id(store, "resnet18-6", "kfold")
    assert report.baseline == base
    table = report.table.set_index("cell")
    assert np.isnan(table.loc[base, "p_ttest_corrected"]) and np.isnan(table.loc[base, "p_wilcoxon_images"])
    other_kfold = cell_id(store, "resnet18-7", "kfold")
    other, mine = child_folds(store, other_kfold), child_folds(store, base)
    d = other["metrics.test_psnr"].to_numpy() - mine["metrics.test_psnr"].to_numpy()  # one repeat: a child is a split
    share = np.mean([float(v) / float(t) for f in (other, mine) for v, t in zip(f["params.n_val"], f["params.n_train"], strict=True)])
    t = d.mean() / np.sqrt((1 / len(d) + share) * d.var(ddof=1))  # Nadeau & Bengio's corrected resampled t, J - 1 df
    assert table.loc[other_kfold, "p_ttest_corrected"] == pytest.approx(2 * stats.t.sf(abs(t), len(d) - 1))
    assert table.loc[other_kfold, "n_splits"] == 2 and table.loc[other_kfold, "diff_splits"] == pytest.approx(d.mean())
    for backbone in ("resnet18-6", "resnet18-7"):  # hold-out: other splits than the k-fold baseline: no test across splits, J = 0
        holdout = cell_id(store, backbone, "holdout")
        assert np.isnan(table.loc[holdout, "p_ttest_corrected"]) and table.loc[holdout, "n_splits"] == 0
        assert table.loc[holdout, "verdict"] == "undecided" and table.loc[holdout, "mdd"] == np.inf
        assert table.loc[holdout, "verdict_note"].startswith("no paired splits")
    base_images = per_image_mean(store, base, tmp_path)
    for cell in table.index.drop([base, GRAY]):
        cell_images = per_image_mean(store, cell, tmp_path)
        assert table.loc[cell, "p_wilcoxon_images"] == pytest.approx(stats.wilcoxon(cell_images, base_images).pvalue)
        d = cell_images - base_images
        ci = stats.bootstrap((d,), np.mean, n_resamples=10_000, random_state=np.random.default_rng(0)).confidence_interval
        assert table.loc[cell, "diff_images"] == pytest.approx(d.mean())
        assert (table.loc[cell, "diff_images_ci_low"], table.loc[cell, "diff_images_ci_high"]) == pytest.approx((ci.low, ci.high))
        assert table.loc[cell, "p_tost_images"] == pytest.approx(max(
            stats.ttest_1samp(d, -0.1, alternative="greater").pvalue, stats.ttest_1samp(d, 0.1, alternative="less").pvalue
        ))  # fmt: skip
        assert table.loc[cell, "p_better_images"] == pytest.approx(np.mean(d > 0) + 0.5 * np.mean(d == 0))  # psnr: higher is better
        assert table.loc[cell, "n_images"] == len(d)
    assert report.n_images == len(base_images) > 1


def statsmodels_adjusted(raw: np.ndarray, method: str = "holm") -> np.ndarray:
    """statsmodels' adjustment of the present p-values, NaNs kept."""
    present = ~np.isnan(raw)
    expected = np.full(len(raw), np.nan)
    expected[present] = multipletests(raw[present], method=method)[1]
    return expected


def test_every_p_value_is_adjusted_within_its_family_and_the_csv_keeps_the_raw_ones(report: Report) -> None:
    """Two families: the split-level tests (they make verdicts) and the image-level tests with the Friedman test (they describe)."""
    table = pd.read_csv(report.out_dir / "table.csv")
    np.testing.assert_allclose(table["p_adj_ttest_corrected"], statsmodels_adjusted(table["p_ttest_corrected"].to_numpy()))
    described = statsmodels_adjusted(np.concatenate([table["p_wilcoxon_images"], table["p_tost_images"], [report.friedman.p]]))
    n = len(table)
    np.testing.assert_allclose(table["p_adj_wilcoxon_images"], described[:n])
    np.testing.assert_allclose(table["p_adj_tost_images"], described[n : 2 * n])
    assert report.friedman.p_adj == pytest.approx(described[-1])
    adjusted = [c for c in table.columns if "adj" in c]
    assert adjusted == ["p_adj_ttest_corrected", "p_adj_wilcoxon_images", "p_adj_tost_images"]  # every adjusted column starts with p_adj
    assert "verdict: the corrected t-tests over splits, one per comparison (they make the verdicts), 1 p-values" in (report.out_dir / "table.md").read_text()


def test_friedman_over_all_cells_matches_scipy_and_draws_cd_png(report: Report, store: str, tmp_path: Path) -> None:
    cells = [c for c in report.table["cell"] if c != GRAY]
    expected = stats.friedmanchisquare(*(per_image_mean(store, c, tmp_path) for c in cells))
    assert report.friedman.n_cells == 4 and report.friedman.statistic == pytest.approx(expected.statistic)
    assert report.friedman.p == pytest.approx(expected.pvalue)
    with Image.open(report.out_dir / "cd.png") as image:
        assert image.format == "PNG" and image.width > 100
    assert "](cd.png)" in (report.out_dir / "summary.md").read_text()


def test_validation_report_compares_each_splitter_with_the_test_set(report: Report, store: str) -> None:
    per_replicate = pd.read_csv(report.out_dir / "validation_replicates.csv")
    assert tuple(per_replicate.columns) == ("replicate", *COLUMNS) and set(per_replicate["replicate"]) == {0}
    client = mlflow.tracking.MlflowClient(store)
    val, test = {}, {}
    for name in ("kfold", "holdout"):
        for backbone in ("resnet18-6", "resnet18-7"):
            folds = child_folds(store, cell_id(store, backbone, name))
            val[name, backbone] = [
                next(m.value for m in client.get_metric_history(run, "val_psnr") if m.step == best)
                for run, best in zip(folds["run_id"], folds["metrics.best_epoch"], strict=True)
            ]
            test[name, backbone] = folds["metrics.test_psnr"].mean()
    truth = {b: (test["kfold", b] + test["holdout", b]) / 2 for b in ("resnet18-6", "resnet18-7")}  # one truth for both schemes
    best = max(truth, key=truth.get)
    for splitter, name in (("kfold(k=2)", "kfold"), ("holdout(val_fraction=0.3)", "holdout")):
        estimates = {b: np.mean(val[name, b]) for b in truth}
        errors = [estimates[b] - test[name, b] for b in truth]
        picked = max(estimates, key=estimates.get)
        row = per_replicate.set_index("splitter").loc[splitter]
        assert row["bias"] == pytest.approx(np.mean(errors)) and row["abs_error"] == pytest.approx(np.mean(np.abs(errors)))
        assert row["n_configurations"] == 2 and row["n_children"] == (4 if name == "kfold" else 2)
        tau = stats.kendalltau(list(estimates.values()), list(truth.values())).statistic
        assert row["kendall_tau"] == pytest.approx(tau, nan_ok=True)
        assert row["regret"] == pytest.approx(truth[best] - truth[picked]) and row["picks_best"] == float(picked == best)
        spreads = [np.std(val[name, b], ddof=1) for b in truth] if name == "kfold" else [np.nan]
        assert row["spread"] == pytest.approx(np.mean(spreads), nan_ok=True)
    overall = pd.read_csv(report.out_dir / "validation.csv").set_index("splitter")
    assert (overall["n_replicates"] == 1).all() and overall[["bias_ci_low", "regret_ci_high"]].isna().all().all()  # no interval over 1
    np.testing.assert_allclose(overall.loc[per_replicate["splitter"], "regret"], per_replicate["regret"])
    for name in ("val_vs_test.png", "validation_replicates.png"):
        with Image.open(report.out_dir / name) as image:
            assert image.format == "PNG"
    assert "## Validation schemes" in (report.out_dir / "summary.md").read_text() and (report.out_dir / "validation.md").is_file()


def test_scheme_statistics_on_four_configurations_equal_a_hand_computation() -> None:
    """tau, regret and picks_best of one splitter in one replicate over 4 configurations x 2 training repeats, worked by hand (PSNR,
    higher is better).

    Validation means A 21.5, B 21.7, C 21.9, D 21.0; test means A 22.0, B 22.4, C 22.2, D 21.8. Orders: validation C B A D,
    test B C A D: one discordant pair (B, C) of 6, tau = (5 - 1) / 6. Validation picks C (22.2 on test), the best on test is B
    (22.4): regret 0.2 dB, and picks_best = 0 in this replicate (one splitter: the truth is its own test means)."""
    val = {"A": (21.4, 21.6), "B": (21.9, 21.5), "C": (21.8, 22.0), "D": (21.0, 21.0)}
    test = {"A": 22.0, "B": 22.4, "C": 22.2, "D": 21.8}
    children = pd.DataFrame([
        {"configuration": c, "cell": c, "splitter": "kfold(k=3)", "replicate": 0, "draw": 0, "repeat": r, "val": v, "test": test[c]}
        for c, pair in val.items() for r, v in enumerate(pair)
    ])  # fmt: skip
    row = replicate_table(children, lambda v: -np.asarray(v)).iloc[0]
    assert row["n_configurations"] == 4 and row["n_children"] == 8
    assert row["kendall_tau"] == pytest.approx(4 / 6) and row["regret"] == pytest.approx(0.2) and row["picks_best"] == 0.0
    assert row["bias"] == pytest.approx(np.mean([-0.5, -0.7, -0.3, -0.8])) and row["abs_error"] == pytest.approx(0.575)
    assert row["spread"] == pytest.approx(np.mean([np.sqrt(0.02), np.sqrt(0.08), np.sqrt(0.02), 0.0]))


def test_failed_cell_is_listed_not_ranked(report: Report) -> None:
    assert len(report.failed) == 1 and ": resnet18-6 | test-report-nan" in report.failed[0][0]  # `<cell id>: components`
    assert "test-report-nan" not in set(report.table["loss"])
    assert f"Failed: {report.failed[0][0]}: " in (report.out_dir / "table.md").read_text()


def test_every_figure_is_a_valid_png(report: Report) -> None:
    for name in FIGURES:
        path = report.out_dir / name
        assert path.stat().st_size > 0
        with Image.open(path) as image:
            assert image.format == "PNG" and image.width > 100 and image.height > 100


def test_summary_ranks_tests_compares_with_gray_and_embeds_figures(report: Report) -> None:
    text = (report.out_dir / "summary.md").read_text()
    ranked = list(report.table["cell"].iloc[:4])
    assert "Ranking on test psnr" in text
    positions = [text.index(f"{rank}. `{cell}`") for rank, cell in enumerate(ranked, 1)]
    assert positions == sorted(positions)
    assert "corrected t-test p = " in text and "Wilcoxon p" in text and "p_adj" in text and "95% CI" in text and "J = 2 paired splits" in text
    assert "significant" not in text and "these trained models" in text  # the image-level tests are about the trained models
    assert "vs gray" in text and "colourfulness ratio" in text
    for name in FIGURES:
        assert f"]({name})" in text
    assert f"colorbench report --experiment {EXPERIMENT}" in text


def test_cli_prints_the_table_with_the_first_cell_in_file_order_as_default_baseline(store: str, tmp_path: Path, capsys: pytest.CaptureFixture) -> None:
    out = tmp_path / "out"
    assert cli.main(["report", "--experiment", EXPERIMENT, "--tracking-uri", store, "--out", str(out)]) == 0
    printed = capsys.readouterr().out
    table = pd.read_csv(out / "table.csv")
    first = cell_id(store, "resnet18-6", "holdout")  # the grid file's first cell: backbones x losses x splitters, in file order
    assert table.loc[table["baseline"].astype(str) == "True", "cell"].item() == first
    assert f"{first} *" in printed and GRAY in printed and "auc_rebalanced" in printed and "p_adj (W)" in printed and "verdict" in printed
    assert all(cell in printed for cell in table["cell"]) and "the first cell in grid-file order" in printed
    assert set(table["verdict"]) == {"-", "undecided"}  # against one hold-out split nothing is tested across splits
    assert "one split: the split's luck is not measured" in set(table["verdict_note"])  # the other hold-out cell, same split


def test_correction_none_from_the_cli_and_bh_match_statsmodels(store: str, tmp_path: Path) -> None:
    assert cli.main(["report", "--experiment", EXPERIMENT, "--tracking-uri", store, "--out", str(tmp_path / "none"), "--correction", "none"]) == 0
    none = pd.read_csv(tmp_path / "none" / "table.csv")
    np.testing.assert_allclose(none["p_adj_wilcoxon_images"], none["p_wilcoxon_images"])
    bh = build_report(EXPERIMENT, tmp_path / "bh", tracking_uri=store, correction="bh")
    expected = statsmodels_adjusted(np.concatenate([bh.table["p_wilcoxon_images"], bh.table["p_tost_images"], [bh.friedman.p]]), "fdr_bh")
    np.testing.assert_allclose(bh.table["p_adj_wilcoxon_images"], expected[: len(bh.table)])
    assert "Benjamini-Hochberg" in (tmp_path / "bh" / "summary.md").read_text()
    with pytest.raises(SystemExit):
        cli.main(["report", "--experiment", EXPERIMENT, "--tracking-uri", store, "--correction", "bonferroni"])


def test_missing_experiment_lists_the_existing_ones(store: str, tmp_path: Path) -> None:
    with pytest.raises(ConfigError, match=f"no MLflow experiment 'nope' .*existing experiments: .*{EXPERIMENT}"):
        build_report("nope", tmp_path, tracking_uri=store)
    assert not any(tmp_path.iterdir())


def test_unknown_metric_names_the_logged_ones(store: str, tmp_path: Path) -> None:
    with pytest.raises(ConfigError, match="metric 'psnrr' is not logged .*psnr, ssim"):
        build_report(EXPERIMENT, tmp_path, metric="psnrr", tracking_uri=store)


def test_rank_direction_per_metric() -> None:
    values = pd.Series([0.5, 1.1, 2.0])
    assert list(badness("psnr", values).rank()) == [3, 2, 1]  # higher is better
    assert list(badness("ab_rmse", values).rank()) == [1, 2, 3]  # lower is better
    assert list(badness("colorfulness_ratio", values).rank()) == [2, 1, 3]  # closer to 1 is better
    assert list(badness("psnr.mode", values).rank()) == [3, 2, 1]  # a decoding ranks as its metric
    with pytest.raises(ConfigError, match="'psnr_mode' is not in the metric table"):
        badness("psnr_mode", values)


def test_decodings_table_lists_each_decoding_of_classification_losses(tmp_path: Path) -> None:
    rows = [
        {"cell": "a", "loss": "ce", "n_folds": 1, "test_psnr_mean": 20.0, "test_psnr.mode_mean": 19.0, "test_psnr.T1_mean": 21.0},
        {"cell": "b", "loss": "mse", "n_folds": 1, "test_psnr_mean": 22.0, "test_psnr.mode_mean": np.nan, "test_psnr.T1_mean": np.nan},
    ]
    text = decodings_table(Report("x", "psnr", "a", pd.DataFrame(rows), tmp_path))
    assert "| a | ce | annealed mean (the loss's temperature) | 20.000 |" in text
    assert "| a | ce | mode (T -> 0) | 19.000 |" in text
    assert "| a | ce | plain mean (T = 1) | 21.000 |" in text
    assert "| b |" not in text
    assert decodings_table(Report("x", "psnr", "b", pd.DataFrame(rows).drop(columns=["test_psnr.mode_mean"]), tmp_path)) == ""


@contextmanager
def table_entry(metric: Metric) -> Iterator[Metric]:
    """`metric` in the metric table for the duration of the block, and gone again after it."""
    METRICS.add(metric)
    try:
        yield metric
    finally:
        METRICS.remove(metric.name)


AB_L1 = Metric("ab_l1", "lower", "mean absolute ab error", per_image=lambda b: (b.ab_pred - b.ab_true).abs().mean((1, 2, 3)), headline=True)


def test_a_new_metric_is_one_table_entry(empty_store: Path, tmp_path: Path) -> None:
    """A lower-is-better metric added to the table alone is computed, logged per fold, per image and per cell, offered as a
    search objective (minimised), ranked the right way and shown in the report's tables."""
    grid = copy.deepcopy(TINY_GRID) | {"experiment": "one-more-metric"}
    grid["train"]["epochs"] = 1
    grid["grid"]["splitter"] = [{"name": "holdout", "val_fraction": 0.3}]
    shutil.copy(empty_store, tmp_path / "mlflow.db")
    uri = f"sqlite:///{tmp_path / 'mlflow.db'}"
    with table_entry(AB_L1), pytest.MonkeyPatch.context() as mp:
        assert "val_ab_l1" in objective_choices() and ObjectiveConfig(metric="val_ab_l1").direction == "minimize"
        mp.chdir(tmp_path)
        mp.delenv("MLFLOW_TRACKING_URI", raising=False)
        run_grid(parse_experiment(grid), uri)
        report = build_report("one-more-metric", tmp_path / "out", metric="ab_l1", tracking_uri=uri)
        assert list(badness("ab_l1", pd.Series([2.0, 1.0, 3.0])).rank()) == [2, 1, 3]  # ranked lower-is-better
        assert report.n_images > 0  # its per-image values reached test_per_image.csv and the Wilcoxon test
        assert "Ranked on test ab_l1 (lower is better)" in (tmp_path / "out" / "table.md").read_text()
        assert pd.notna(report.table.loc[report.table["cell"] == GRAY, "test_ab_l1_mean"]).all()
        assert "ab_l1" in terminal_rows(report)[0]  # a headline metric: in the terminal table
    fold = runs_of(uri, "one-more-metric").query("`tags.colorbench.role` == 'fold'").iloc[0]
    per_image = pd.read_csv(mlflow.artifacts.download_artifacts(run_id=fold["run_id"], artifact_path="test_per_image.csv", dst_path=str(tmp_path)))
    assert per_image["ab_l1"].mean() == pytest.approx(fold["metrics.test_ab_l1"])  # its summary: the mean over images
    assert "val_ab_l1" not in objective_choices()


def test_importing_the_report_loads_neither_torch_nor_optuna() -> None:
    """A grid report reads MLflow runs: `import colorbench.report` must not pull in the training stack or the search."""
    done = subprocess.run([sys.executable, "-X", "importtime", "-c", "import colorbench.report"], capture_output=True, text=True, check=False)
    assert done.returncode == 0, done.stderr
    imported = {line.rsplit("|", 1)[1].strip() for line in done.stderr.splitlines() if line.startswith("import time:")}
    assert "colorbench.report" in imported and "mlflow" in imported  # the check sees the imports
    assert not {name.split(".")[0] for name in imported} & {"torch", "optuna", "sklearn"}


def too_colourful_copy(store: str, metric: str, tmp_path: Path) -> str:
    """A copy of the store where the cell highest on `metric` is moved above 1, to the largest distance from 1 of all cells."""
    db = tmp_path / "mlflow.db"
    shutil.copy(store.removeprefix("sqlite:///"), db)
    uri = f"sqlite:///{db}"
    cells = runs_of(uri, EXPERIMENT)
    cells = cells[(cells["tags.colorbench.role"] == "cell") & cells[f"metrics.test_{metric}_mean"].notna()]
    values = cells[f"metrics.test_{metric}_mean"]
    MlflowClient(uri).log_metric(cells.loc[values.idxmax(), "run_id"], f"test_{metric}_mean", 2 - values.min() + 0.05)
    return uri


@pytest.mark.parametrize("metric", list(METRICS))
def test_every_metric_of_the_table_ranks_the_real_cells_its_own_way(metric: str, store: str, tmp_path: Path) -> None:
    """End to end, for each metric of the table: the report's rank order follows the metric's direction, written out here
    independently of metrics.badness (higher: descending, lower: ascending, one: by distance to 1)."""
    if METRICS[metric].better == "one":  # young models are all below 1: make the most colourful cell overshoot, farthest from 1
        store = too_colourful_copy(store, metric, tmp_path)
    table = build_report(EXPERIMENT, tmp_path, metric=metric, tracking_uri=store).table
    cells = table[table["cell"] != GRAY].sort_values("rank")
    values = cells[f"test_{metric}_mean"].to_numpy()
    goodness = {"higher": values, "lower": -values, "one": -np.abs(values - 1)}[METRICS[metric].better]
    assert np.all(np.diff(goodness) <= 1e-12), f"{metric}: {values} is not ranked {METRICS[metric].better} first"
    assert list(cells["rank"].astype(int)) == list(stats.rankdata(-goodness, method="min").astype(int))  # ties share a rank


def copied_store(store: str, tmp_path: Path) -> str:
    """A copy of the module's store (its runs point at the same artifacts), to change without touching the other tests' store."""
    shutil.copy(store.removeprefix("sqlite:///"), tmp_path / "copy.db")
    return f"sqlite:///{tmp_path / 'copy.db'}"


def test_verdict_columns_equal_baycomp_statsmodels_and_the_rule(report: Report, store: str) -> None:
    """The k-fold comparison's verdict columns, each from an independent computation on the children's values."""
    table = report.table.set_index("cell")
    row = table.loc[cell_id(store, "resnet18-7", "kfold")]
    cell, base = (child_folds(store, c)["metrics.test_psnr"].to_numpy() for c in (row.name, report.baseline))
    ratio = 9 / 9  # 2 folds of the 6 pool photos x 3 crops: n_val / n_train = 9 / 9 (baycomp's 1 / (k - 1) for k = 2)
    left, inside, right = baycomp.CorrelatedTTest.probs(base, cell, rope=0.1, runs=1)  # its difference is cell - base: left = worse
    assert (row["prob_worse"], row["prob_equivalent"], row["prob_better"]) == pytest.approx((left, inside, right))
    d = cell - base
    effect = row["mdd"] / (np.std(d, ddof=1) * np.sqrt(1 + len(d) * ratio))  # the corrected t as a one-sample t of this effect
    assert TTestPower().power(effect_size=effect, nobs=len(d), alpha=0.05, alternative="two-sided") == pytest.approx(0.8)
    wins = int((d > 0).sum())
    exact = stats.binomtest(wins, len(d)).proportion_ci(method="exact")
    assert (row["p_better_splits"], row["p_better_splits_ci_low"], row["p_better_splits_ci_high"]) == pytest.approx((wins / len(d), exact.low, exact.high))
    expected = "equivalent" if inside >= 0.95 else ("better" if d.mean() > 0 else "worse") if row["p_adj_ttest_corrected"] < 0.05 else "undecided"
    assert row["verdict"] == expected
    assert table.loc[report.baseline, "verdict"] == "-" and table.loc[GRAY, "verdict"] == "-"
    summary = (report.out_dir / "summary.md").read_text()
    lead = f"- `{row.name}` {row['backbone']} | {row['loss']} | {row['splitter']}: **{expected}**"
    assert lead in summary and summary.index("## Verdicts") < summary.index("## Ranking")  # the verdicts lead
    if expected == "undecided":
        assert f"**undecided**: this design cannot detect differences below {row['mdd']:.3f} dB" in summary


def test_the_grid_file_names_the_baseline_and_runs_without_the_order_tag_fall_back_to_the_earliest(store: str, tmp_path: Path) -> None:
    uri = copied_store(store, tmp_path)
    grid = copy.deepcopy(TINY_GRID) | {"experiment": EXPERIMENT}
    grid["grid"]["backbone"] = ["resnet18-6", "resnet18-7"]
    named = cell_id(store, "resnet18-7", "kfold")
    with pytest.MonkeyPatch.context() as mp:
        mp.chdir(tmp_path)
        outcomes, _ = run_grid(parse_experiment(grid | {"report": {"baseline": named[:5]}}), uri)  # all done: skipped, the name recorded
    assert all(o.skipped for o in outcomes)
    report = build_report(EXPERIMENT, tmp_path / "named", tracking_uri=uri)
    assert report.baseline == named and report.baseline_how == "named in the grid file (report.baseline)"
    assert build_report(EXPERIMENT, tmp_path / "cli", tracking_uri=uri, baseline=cell_id(store, "resnet18-6", "kfold")).baseline_how == "named with --baseline"
    with pytest.raises(ConfigError, match="report.baseline 'fffff' matches no cell of the grid; its cells"):
        run_grid(parse_experiment(grid | {"report": {"baseline": "fffff"}}), uri)
    with pytest.MonkeyPatch.context() as mp:
        mp.chdir(tmp_path)
        run_grid(parse_experiment(grid), uri)  # a file naming none: the default again
    client, cells = MlflowClient(uri), runs_of(uri, EXPERIMENT).query("`tags.colorbench.role` == 'cell'")
    order = {c.id: str(i) for i, c in enumerate(expand(parse_experiment(grid)))}
    assert dict(zip(cells["tags.colorbench.cell_id"], cells["tags.colorbench.order"], strict=True)) == order  # recorded at claim time
    assert build_report(EXPERIMENT, tmp_path / "first", tracking_uri=uri).baseline == cell_id(store, "resnet18-6", "holdout")
    moved = cells.set_index("tags.colorbench.cell_id")["run_id"]
    client.set_tag(moved[cell_id(store, "resnet18-6", "holdout")], "colorbench.order", "7")  # as if the file listed it last
    assert build_report(EXPERIMENT, tmp_path / "moved", tracking_uri=uri).baseline == cell_id(store, "resnet18-6", "kfold")  # now first
    for run_id in cells["run_id"]:
        client.delete_tag(run_id, "colorbench.order")  # a store written before the order was recorded
    report = build_report(EXPERIMENT, tmp_path / "old", tracking_uri=uri)
    assert report.baseline == cells.sort_values("start_time")["tags.colorbench.cell_id"].iloc[0]
    assert "the earliest-started cell: these runs do not record the grid file's order" in (tmp_path / "old" / "summary.md").read_text()


def test_all_pairs_writes_a_pairwise_table_adjusted_over_the_pairs_and_a_heat_map(store: str, tmp_path: Path) -> None:
    out = tmp_path / "pairs"
    assert cli.main(["report", "--experiment", EXPERIMENT, "--tracking-uri", store, "--out", str(out), "--all-pairs"]) == 0
    pairs, table = pd.read_csv(out / "pairs.csv"), pd.read_csv(out / "table.csv")
    cells = list(table["cell"].iloc[:-1])
    assert [(r.cell, r.versus) for r in pairs.itertuples()] == [(a, b) for i, b in enumerate(cells) for a in cells[i + 1 :]]  # 6 pairs
    np.testing.assert_allclose(pairs["p_adj_ttest_corrected"], statsmodels_adjusted(pairs["p_ttest_corrected"].to_numpy()))
    kfold = [cell_id(store, b, "kfold") for b in ("resnet18-6", "resnet18-7")]
    tested = pairs[pairs["cell"].isin(kfold) & pairs["versus"].isin(kfold)]
    assert len(tested) == 1 and tested["n_splits"].item() == 2 and (pairs.drop(tested.index)["verdict"] == "undecided").all()
    assert set(pairs["verdict"]) <= {"better", "worse", "equivalent", "undecided"}
    with Image.open(out / "pairs.png") as image:
        assert image.format == "PNG" and image.width > 100
    assert "](pairs.png)" in (out / "summary.md").read_text() and "--all-pairs" in (out / "summary.md").read_text()


def test_rope_option_overrides_the_metric_tables_and_bad_ones_say_how(store: str, tmp_path: Path, capsys: pytest.CaptureFixture) -> None:
    base, other = (cell_id(store, b, "kfold") for b in ("resnet18-6", "resnet18-7"))
    out = tmp_path / "wide"
    assert cli.main(["report", "--experiment", EXPERIMENT, "--tracking-uri", store, "--out", str(out), "--baseline", base, "--rope", "psnr=50"]) == 0
    row = pd.read_csv(out / "table.csv").set_index("cell").loc[other]
    cell, ref = (child_folds(store, c)["metrics.test_psnr"].to_numpy() for c in (other, base))
    assert row["prob_equivalent"] == pytest.approx(baycomp.CorrelatedTTest.probs(ref, cell, rope=50, runs=1)[1])
    assert row["prob_equivalent"] > 0.95 and row["verdict"] == "equivalent"  # 50 dB: any difference of these models is inside
    assert "--rope=psnr=50" in (out / "summary.md").read_text()
    for bad, message in (("psnr", "write METRIC=VALUE"), ("psnrr=1", "'psnrr' is not in the metric table"), ("psnr=0", "must be > 0")):
        assert cli.main(["report", "--experiment", EXPERIMENT, "--tracking-uri", store, "--rope", bad]) == 2
        assert message in capsys.readouterr().err


def test_colourfulness_ratio_has_per_image_values_tested_on_their_distance_from_1(store: str, tmp_path: Path) -> None:
    fold = runs(store).query("`tags.colorbench.role` == 'fold'").iloc[0]
    per_image = pd.read_csv(tracking.download(fold["run_id"], "test_per_image.csv", tmp_path / "one"))
    coloured = per_image["colorfulness_true"] >= COLOURFUL
    expected = (per_image["colorfulness_pred"] / per_image["colorfulness_true"]).where(coloured)
    np.testing.assert_allclose(per_image["colorfulness_ratio"], expected)  # NaN exactly where the truth is nearly gray
    report = build_report(EXPERIMENT, tmp_path / "ratio", metric="colorfulness_ratio", tracking_uri=store)
    table = report.table.set_index("cell")
    other = next(c for c in table.index if c not in (report.baseline, GRAY))
    cell, base = (np.abs(per_image_values(store, c, "colorfulness_ratio", tmp_path) - 1) for c in (other, report.baseline))
    keep = ~(np.isnan(cell) | np.isnan(base))
    assert table.loc[other, "n_images"] == keep.sum() > 0
    assert table.loc[other, "diff_images"] == pytest.approx((cell - base)[keep].mean())  # closer to 1 is better: |ratio - 1|
    assert table.loc[other, "p_wilcoxon_images"] == pytest.approx(stats.wilcoxon(cell[keep], base[keep]).pvalue)


def per_image_values(uri: str, cell: str, metric: str, tmp_path: Path) -> np.ndarray:
    """A cell's per-image `metric` averaged over its children."""
    paths = [tracking.download(r, "test_per_image.csv", tmp_path / r) for r in child_folds(uri, cell)["run_id"]]
    return np.mean([pd.read_csv(p)[metric].to_numpy(float) for p in paths], axis=0)
