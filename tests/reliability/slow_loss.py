"""Test plugin (`--plugin slow_loss`): the `slow-mse` loss sleeps on every call, so a cell lasts long enough to be killed or raced
without taking CPU from the other processes."""

from __future__ import annotations

import time

import torch

from colorbench.losses import LOSSES, MSE


@LOSSES.register("slow-mse")
class SlowMSE(MSE):
    """MSE that first sleeps `seconds`."""

    def __init__(self, seconds: float = 0.1) -> None:
        self.seconds = seconds

    def __call__(self, pred: torch.Tensor, target_ab: torch.Tensor, weights: torch.Tensor | None = None) -> torch.Tensor:
        time.sleep(self.seconds)
        return super().__call__(pred, target_ab, weights)
