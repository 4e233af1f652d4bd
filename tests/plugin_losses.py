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
