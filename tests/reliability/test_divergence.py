"""Scenario 3: a cell that diverges (lr 10) is failed within its first epoch with the reason; the grid goes on and the summary lists it."""

from __future__ import annotations

from pathlib import Path

import mlflow
import pytest
import torch
from reliability_support import cell_ids, write_grid

from colorbench import cli, tracking
from colorbench.losses import LOSSES, MSE


@LOSSES.register("test-tanh-mse")
class TanhMSE(MSE):
    """MSE on a tanh-bounded output: it cannot blow up, whatever the learning rate."""

    def __call__(self, pred: torch.Tensor, target_ab: torch.Tensor, weights: torch.Tensor | None = None) -> torch.Tensor:
        return super().__call__(torch.tanh(pred), target_ab, weights)

    def decode(self, pred: torch.Tensor, variant: str = "default") -> torch.Tensor:
        return super().decode(torch.tanh(pred), variant)


def test_a_diverging_cell_fails_within_an_epoch_and_the_grid_goes_on(
    tiny_grid: dict, tracking_uri: str, tmp_path: Path, capsys: pytest.CaptureFixture
) -> None:
    tiny_grid["train"]["lr"] = 10.0  # MSE's unbounded output explodes; the tanh-bounded one cannot
    tiny_grid["grid"]["loss"] = ["mse", "test-tanh-mse"]
    tiny_grid["grid"]["splitter"] = [{"name": "holdout", "val_fraction": 0.3}]
    diverging, healthy = cell_ids(tiny_grid)
    assert cli.main(["run", str(write_grid(tmp_path, tiny_grid)), "--tracking-uri", tracking_uri]) == 1  # exit 1: a cell failed
    out, err = capsys.readouterr()
    assert f"{diverging} (failed)" in out
    assert f"failed {diverging}: diverged at epoch 1: " in err and "lower train.lr (now 10.0)" in err
    mlflow.set_tracking_uri(tracking_uri)
    df = mlflow.search_runs(experiment_names=[tiny_grid["experiment"]])
    cell = df[df[f"tags.{tracking.TAG_CELL}"] == diverging].set_index(f"tags.{tracking.TAG_ROLE}")
    assert set(cell["status"]) == {"FAILED"}
    assert cell.loc["cell", f"tags.{tracking.TAG_FAILURE}"].startswith("DivergedError: diverged at epoch 1")
    history = mlflow.tracking.MlflowClient().get_metric_history(cell.loc["fold", "run_id"], "val_loss")
    assert [m.step for m in history] == [1]  # stopped after its first epoch, not after all of them
    assert set(df[df[f"tags.{tracking.TAG_CELL}"] == healthy]["status"]) == {"FINISHED"}
