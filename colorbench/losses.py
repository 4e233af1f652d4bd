"""Training objectives (registry `LOSSES`): each says its head width, learns from the training fold, scores and decodes."""

from __future__ import annotations

import torch

from colorbench.registry import Registry

AB_SCALE = 110.0  # regression target = ab / AB_SCALE


class Objective:
    """The loss interface every grid cell trains through.

    - `out_channels`: the width of the model's head.
    - `prepare(train_rgb)`: learn statistics from the TRAINING fold only (uint8 (N,H,W,3) on the training device).
    - `pixel_weights(L, ab)`: optional per-pixel weights (B,1,H,W), mean 1 per image; None = uniform.
    - `__call__(pred, target_ab, weights)`: scalar loss; `target_ab` in Lab units.
    - `decode(pred, variant)`: head output -> ab in Lab units; `variants` lists the decodings worth reporting,
      the first being the default.
    """

    out_channels: int = 2
    variants: tuple[str, ...] = ("default",)

    def prepare(self, train_rgb: torch.Tensor) -> None:
        """Nothing to learn by default."""

    def pixel_weights(self, L: torch.Tensor, ab: torch.Tensor) -> torch.Tensor | None:
        """Uniform weights by default."""
        return None

    def __call__(self, pred: torch.Tensor, target_ab: torch.Tensor, weights: torch.Tensor | None = None) -> torch.Tensor:
        raise NotImplementedError

    def decode(self, pred: torch.Tensor, variant: str = "default") -> torch.Tensor:
        raise NotImplementedError


def weighted_mean(per_pixel: torch.Tensor, weights: torch.Tensor | None) -> torch.Tensor:
    """Mean of a (B,1,H,W) per-pixel loss, weighted when `weights` is given."""
    return per_pixel.mean() if weights is None else (per_pixel * weights).mean()


LOSSES: Registry[Objective] = Registry("loss")


@LOSSES.register("mse")
class MSE(Objective):
    """Mean squared error on ab / 110 (the seed's regression; averages colours towards brown)."""

    def __call__(self, pred: torch.Tensor, target_ab: torch.Tensor, weights: torch.Tensor | None = None) -> torch.Tensor:
        per_pixel = (pred.float() - target_ab / AB_SCALE).pow(2).mean(dim=1, keepdim=True)
        return weighted_mean(per_pixel, weights)

    def decode(self, pred: torch.Tensor, variant: str = "default") -> torch.Tensor:
        return pred.float() * AB_SCALE
