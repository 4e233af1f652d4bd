"""A tiny real grid through MLflow: runs read back, rerun skips, interrupted cells resume, failures are contained."""

from __future__ import annotations

import tempfile
from pathlib import Path

import mlflow
import numpy as np
import pytest
import torch
import yaml
from mlflow.tracking import MlflowClient

from colorbench import cli, tracking
from colorbench.checkpoints import load_run
from colorbench.lifecycle.prepare import prepare_data
from colorbench.losses import LOSSES, MSE
from colorbench.resolve import parse_experiment
from colorbench.runner import run_grid
from colorbench.train import evaluate

INTERRUPTS = {"left": 0}


@LOSSES.register("test-interrupt-once")
class InterruptOnce(MSE):
    """MSE that raises KeyboardInterrupt (as Ctrl-C would) on its 3rd call while INTERRUPTS['left'] > 0."""

    def __init__(self) -> None:
        self.calls = 0

    def __call__(self, pred, target_ab, weights=None):
        self.calls += 1
        if self.calls == 3 and INTERRUPTS["left"] > 0:
            INTERRUPTS["left"] -= 1
            raise KeyboardInterrupt
        return super().__call__(pred, target_ab, weights)


@LOSSES.register("test-nan")
class NanLoss(MSE):
    """A loss that diverges at once."""

    def __call__(self, pred, target_ab, weights=None):
        return super().__call__(pred, target_ab, weights) * float("nan")


def runs(uri: str, experiment: str = "tiny"):
    mlflow.set_tracking_uri(uri)
    return mlflow.search_runs(experiment_names=[experiment], max_results=1000)


def test_grid_logs_parent_and_fold_runs(tiny_grid: dict, tracking_uri: str, tmp_path: Path) -> None:
    outcomes, gray = run_grid(parse_experiment(tiny_grid), tracking_uri)
    assert [o.failure for o in outcomes] == [None, None]
    df = runs(tracking_uri)
    parents = df[df["tags.colorbench.role"] == "cell"]
    folds = df[df["tags.colorbench.role"] == "fold"]
    assert len(parents) == 2 and len(folds) == 1 + 2
    assert set(df["status"]) == {"FINISHED"}
    for _, parent in parents.iterrows():
        children = folds[folds["tags.mlflow.parentRunId"] == parent["run_id"]]
        assert len(children) == (2 if parent["params.splitter.name"] == "kfold" else 1)
        # fold runs carry the cell's params and id, so MLflow's UI can filter them
        assert set(children["params.backbone.name"]) == {"resnet18-6"}
        assert set(children["tags.colorbench.cell_id"]) == {parent["tags.colorbench.cell_id"]}
        assert parent["metrics.test_psnr_mean"] == pytest.approx(children["metrics.test_psnr"].mean())
        expected_std = children["metrics.test_psnr"].std(ddof=1) if len(children) > 1 else 0.0
        assert parent["metrics.test_psnr_std"] == pytest.approx(expected_std)
        assert parent["tags.colorbench.version"] and parent["tags.colorbench.data_fingerprint"]
    for metric in ("test_loss", "test_ab_rmse", "test_psnr", "test_ssim", "test_auc", "test_auc_rebalanced", "test_colorfulness_ratio"):
        assert folds[f"metrics.{metric}"].notna().all(), metric
    client = MlflowClient()
    child_id = folds["run_id"].iloc[0]
    assert [m.step for m in client.get_metric_history(child_id, "val_loss")] == [1, 2]
    artifacts = {a.path for a in client.list_artifacts(child_id)}
    assert {"loss_curve.png", "test_panel.png", "checkpoint.pt", "config.yaml", "test_per_image.csv"} <= artifacts
    checkpoint = torch.load(tracking.download(child_id, "checkpoint.pt", tmp_path), weights_only=False)
    assert checkpoint["backbone"]["name"] == "resnet18-6" and "state_dict" in checkpoint
    assert 0 < gray["colorfulness_ratio"] < 0.01  # ab = 0 has no colour
    assert parents["metrics.gray_test_psnr"].tolist() == pytest.approx([gray["psnr"]] * 2)


def test_logged_checkpoint_reproduces_the_logged_test_metrics(tiny_grid: dict, tracking_uri: str, tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    tiny_grid["grid"]["splitter"] = [{"name": "kfold", "k": 2}]
    exp = parse_experiment(tiny_grid)
    outcome = run_grid(exp, tracking_uri)[0][0]
    monkeypatch.setattr(tempfile, "tempdir", str(tmp_path / "temp"))
    (tmp_path / "temp").mkdir()
    trained = load_run(outcome.run_id)  # a cell run loads its deployed child
    assert not list((tmp_path / "temp").iterdir())  # the downloaded checkpoint is not left behind in the temporary folder
    best = runs(tracking_uri).query("`tags.colorbench.role` == 'fold'")["metrics.test_psnr"].max()
    test = prepare_data(outcome.cell).test
    metrics, _ = evaluate(trained.model, trained.objective, test.images, batch_size=8)
    assert metrics["psnr"] == pytest.approx(best, abs=1e-4)
    assert trained.image_size == 32


def test_rerun_skips_finished_cells(tiny_grid: dict, tracking_uri: str) -> None:
    exp = parse_experiment(tiny_grid)
    first, _ = run_grid(exp, tracking_uri)
    before = len(runs(tracking_uri))
    second, _ = run_grid(exp, tracking_uri)
    assert all(o.skipped for o in second)
    assert len(runs(tracking_uri)) == before
    assert [o.metrics["test_psnr_mean"] for o in second] == pytest.approx([o.metrics["test_psnr_mean"] for o in first])


def test_interrupted_grid_resumes_without_losing_or_duplicating(tiny_grid: dict, tracking_uri: str) -> None:
    tiny_grid["grid"]["loss"] = ["mse", "test-interrupt-once"]
    tiny_grid["grid"]["splitter"] = [{"name": "holdout", "val_fraction": 0.3}]
    exp = parse_experiment(tiny_grid)
    INTERRUPTS["left"] = 1
    with pytest.raises(KeyboardInterrupt):
        run_grid(exp, tracking_uri)
    df = runs(tracking_uri)
    killed = df[df["params.loss.name"] == "test-interrupt-once"]
    assert set(killed["status"]) == {"KILLED"}  # parent and fold run, none left RUNNING
    assert set(df[df["params.loss.name"] == "mse"]["status"]) == {"FINISHED"}
    outcomes, _ = run_grid(exp, tracking_uri)
    assert [o.skipped for o in outcomes] == [True, False]
    parents = runs(tracking_uri).query("`tags.colorbench.role` == 'cell' and status == 'FINISHED'")
    assert sorted(parents["params.loss.name"]) == ["mse", "test-interrupt-once"]


def test_diverging_cell_fails_alone_and_the_grid_goes_on(tiny_grid: dict, tracking_uri: str) -> None:
    tiny_grid["grid"]["loss"] = ["test-nan", "mse"]
    tiny_grid["grid"]["splitter"] = [{"name": "holdout", "val_fraction": 0.3}]
    outcomes, _ = run_grid(parse_experiment(tiny_grid), tracking_uri)
    assert "lower train.lr" in outcomes[0].failure and outcomes[1].failure is None
    df = runs(tracking_uri)
    failed = df[df["params.loss.name"] == "test-nan"]
    assert set(failed["status"]) == {"FAILED"}
    assert failed["tags.colorbench.failure"].str.contains("non-finite|nan", case=False).all()


def test_same_cell_twice_gives_the_same_numbers_on_cpu(tiny_grid: dict, tracking_uri: str) -> None:
    tiny_grid["grid"]["splitter"] = [{"name": "holdout", "val_fraction": 0.3}]
    exp = parse_experiment(tiny_grid)
    first, _ = run_grid(exp, tracking_uri)
    second, _ = run_grid(exp.model_copy(update={"experiment": "tiny-again"}), tracking_uri)
    assert first[0].cell.id == second[0].cell.id
    timing = {"train_seconds_mean", "train_seconds_std"}
    same = ({k: v for k, v in outcome[0].metrics.items() if k not in timing} for outcome in (first, second))
    np.testing.assert_equal(*same)  # NaN components (one split, one seed) count as equal


def write_grid(tmp_path: Path, grid: dict) -> Path:
    path = tmp_path / "grid.yaml"
    path.write_text(yaml.safe_dump(grid))
    return path


def test_cli_dry_run_trains_nothing(tiny_grid: dict, tmp_path: Path, monkeypatch: pytest.MonkeyPatch, capsys: pytest.CaptureFixture) -> None:
    monkeypatch.chdir(tmp_path)
    assert cli.main(["run", str(write_grid(tmp_path, tiny_grid)), "--dry-run"]) == 0
    out = capsys.readouterr().out
    assert out.count("backbone=resnet18-6") == 2
    assert "2 cells, 3 fold trainings" in out
    assert not (tmp_path / "mlflow.db").exists()


def test_cli_run_prints_summary_and_mlflow_hint(tiny_grid: dict, tracking_uri: str, tmp_path: Path, capsys: pytest.CaptureFixture) -> None:
    tiny_grid["grid"]["splitter"] = [{"name": "holdout", "val_fraction": 0.3}]
    assert cli.main(["run", str(write_grid(tmp_path, tiny_grid))]) == 0  # default store: ./mlflow.db
    captured = capsys.readouterr()
    assert "gray baseline" in captured.out and "±" not in captured.out.split("gray baseline")[1]
    assert "mlflow ui --backend-store-uri sqlite:///mlflow.db" in captured.err
    assert len(runs("sqlite:///mlflow.db")) == 2
    assert cli.main(["run", str(write_grid(tmp_path, tiny_grid))]) == 0
    assert "Skipping 1 finished cell" in capsys.readouterr().err


def test_cli_config_error_is_one_line_and_exit_2(tiny_grid: dict, tracking_uri: str, tmp_path: Path, capsys: pytest.CaptureFixture) -> None:
    tiny_grid["grid"]["backbone"] = ["resnet-18-6"]
    assert cli.main(["run", str(write_grid(tmp_path, tiny_grid))]) == 2
    err = capsys.readouterr().err.strip()
    assert err.count("\n") == 0 and "Did you mean 'resnet18-6'" in err


def test_cli_list_shows_every_registry(capsys: pytest.CaptureFixture) -> None:
    assert cli.main(["list"]) == 0
    out = capsys.readouterr().out
    for name in ("resnet18-6", "resnet18-7", "resnet18-8", "mse", "holdout", "kfold", "folders", "builtin", "folder", "val_fraction=0.2"):
        assert name in out


def test_unusable_tracking_store_fails_before_training(tiny_grid: dict, tracking_uri: str, tmp_path: Path) -> None:
    from colorbench.errors import ConfigError

    with pytest.raises(ConfigError, match="tracking store folder .* does not exist"):
        run_grid(parse_experiment(tiny_grid), f"sqlite:///{tmp_path}/missing/mlflow.db")
