"""Test plugin (`--plugin plugin_losses`, or `plugins.load_plugins(["plugin_losses"])`): losses that exist only where this module
is imported, so a worker process knows them only if it loads the plugins its task names."""

from __future__ import annotations

import torch

from colorbench.losses import LOSSES, MSE

INJECTED = "injected failure in epoch 2"


@LOSSES.register("plugin-mse")
class PluginMSE(MSE):
    """MSE under another name."""


@LOSSES.register("plugin-fails-in-epoch-2")
class FailsInEpoch2(MSE):
    """MSE that raises RuntimeError at its first training call after a validation pass, i.e. early in epoch 2."""

    def __init__(self) -> None:
        self.validated = False

    def __call__(self, pred: torch.Tensor, target_ab: torch.Tensor, weights: torch.Tensor | None = None) -> torch.Tensor:
        if not torch.is_grad_enabled():
            self.validated = True
        elif self.validated:
            raise RuntimeError(INJECTED)
        return super().__call__(pred, target_ab, weights)


@LOSSES.register("plugin-mse-draws")
class DrawsMSE(MSE):
    """MSE that first draws `draws` random numbers from torch's global generator. The loss is built after the training seed is set
    and before the net, so cells that differ only in `draws` differ only in the net's random initialisation: one configuration."""

    def __init__(self, draws: int = 0) -> None:
        torch.rand(draws)
