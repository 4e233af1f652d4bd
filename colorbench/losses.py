"""Training objectives (registry `LOSSES`): each says its head width, learns from the training fold, scores and decodes."""

from __future__ import annotations

from collections.abc import Mapping
from typing import Annotated, Any

import pydantic
import torch
from pydantic import AfterValidator, Field

from colorbench.color import ab_gamut_bins, annealed_mean, nearest_bins, soft_encode, softmax_channels
from colorbench.errors import ConfigError
from colorbench.images import lab_batch
from colorbench.masks import MASKS
from colorbench.registry import Registry

AB_SCALE = 110.0  # regression target = ab / AB_SCALE


class Objective:
    """The loss interface every grid cell trains through.

    - `out_channels`: the width of the model's head.
    - `prepare(train_rgb)`: learn statistics from the TRAINING fold only: uint8 (N,H,W,3), read as row slices
      (`train_rgb[a:b]`, tensors on the training device) so that a fold larger than memory can stream from the cache.
    - `pixel_weights(L, ab)`: optional per-pixel weights (B,1,H,W), mean 1 per image; None = uniform.
    - `__call__(pred, target_ab, weights)`: scalar loss; `target_ab` in Lab units.
    - `decode(pred, variant)`: head output -> ab in Lab units; `variants` lists the decodings worth reporting,
      the first being the default (the others are logged as `test_<metric>.<variant>`, see `metrics.decoded`).
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


PRIOR_SIGMA = 5.0  # ab units: Gaussian smoothing of the empirical bin prior before rebalancing
PRIOR_CHUNK = 64  # images per step of the streaming pass that histograms the training fold

Temperature = Annotated[float, Field(ge=0)]
Sigma = Annotated[float, Field(gt=0)]
Neighbours = Annotated[int, Field(ge=1)]
GridSize = Annotated[float, Field(gt=0)]
Stride = Annotated[int, Field(ge=1)]


@LOSSES.register("ce")
class CrossEntropy(Objective):
    """Cross-entropy over quantised ab bins with soft-encoded targets (Zhang et al. 2016), no class rebalancing.

    The head predicts one logit per bin; `decode` is the annealed mean at `temperature` ("mode": T -> 0, "T1": T = 1).
    `loss_stride` s scores only every s-th row and column (Zhang et al. use 4); decoding stays at full resolution.
    """

    variants = ("default", "mode", "T1")

    def __init__(
        self,
        temperature: Temperature = 0.38,
        sigma: Sigma = 5.0,
        neighbours: Neighbours = 5,
        grid: GridSize = 10.0,
        rim: bool = False,
        loss_stride: Stride = 1,
    ) -> None:
        self.centres = ab_gamut_bins(grid, rim)
        self.out_channels = len(self.centres)
        if neighbours > self.out_channels:
            raise ConfigError(f"neighbours must be at most the number of bins ({self.out_channels}), got {neighbours}")
        self.temperature, self.sigma, self.neighbours, self.loss_stride = temperature, sigma, neighbours, loss_stride

    def _centres_on(self, device: torch.device) -> torch.Tensor:
        if self.centres.device != device:
            self.centres = self.centres.to(device)
        return self.centres

    def class_weights(self, nearest: torch.Tensor) -> torch.Tensor | None:
        """Per-pixel class weights from each pixel's nearest bin (B,1,H,W); None = unweighted."""
        return None

    def __call__(self, pred: torch.Tensor, target_ab: torch.Tensor, weights: torch.Tensor | None = None) -> torch.Tensor:
        s = self.loss_stride
        pred, target_ab = pred[..., ::s, ::s], target_ab[..., ::s, ::s]
        idx, soft = soft_encode(target_ab.float(), self._centres_on(pred.device), self.neighbours, self.sigma)
        logp = softmax_channels(pred.float(), log=True).gather(1, idx)
        per_pixel = -(soft * logp).sum(1, keepdim=True)
        rebalance = self.class_weights(idx[:, :1])  # soft_encode sorts nearest first
        if rebalance is not None:
            per_pixel = per_pixel * rebalance
        return weighted_mean(per_pixel, None if weights is None else weights[..., ::s, ::s])

    def decode(self, pred: torch.Tensor, variant: str = "default") -> torch.Tensor:
        temperatures = {"default": self.temperature, "mode": 0.0, "T1": 1.0}
        if variant not in temperatures:
            raise ValueError(f"unknown decoding {variant!r}; known: {', '.join(temperatures)}")
        with torch.autocast(pred.device.type, enabled=False):
            return annealed_mean(pred.float(), self._centres_on(pred.device), temperatures[variant])


@LOSSES.register("ce-rebalanced")
class RebalancedCrossEntropy(CrossEntropy):
    """Cross-entropy over ab bins with class rebalancing: pixels weighted by 1 / ((1 - lambda) * prior + lambda / Q).

    The prior is the training fold's bin histogram, smoothed with a Gaussian (sigma 5 in ab); weights are
    normalised so that their prior-weighted mean is 1, and each pixel takes the weight of its nearest bin.
    """

    def __init__(self, lambda_: Annotated[float, Field(gt=0, le=1)] = 0.5, **options: Any) -> None:  # and CrossEntropy's options
        super().__init__(**options)
        self.lambda_ = lambda_
        self.prior: torch.Tensor | None = None  # (Q,) smoothed bin prior, sums to 1
        self.bin_weights: torch.Tensor | None = None  # (Q,) rebalancing weight per bin

    @torch.no_grad()
    def prepare(self, train_rgb: torch.Tensor) -> None:
        """Estimate the smoothed bin prior and the bin weights from the training fold's uint8 images (N,H,W,3), in one exact
        streaming pass of PRIOR_CHUNK images at a time (every pixel counts; nothing is sampled)."""
        if len(train_rgb) == 0:
            raise ValueError("ce-rebalanced needs at least one training image to estimate the ab prior")
        counts = torch.zeros((), dtype=torch.long)
        for start in range(0, len(train_rgb), PRIOR_CHUNK):
            chunk = train_rgb[start : start + PRIOR_CHUNK]
            counts = counts.to(chunk.device) + torch.bincount(nearest_bins(lab_batch(chunk)[1], self._centres_on(chunk.device)).flatten(), minlength=self.out_channels)
        centres = self.centres
        kernel = torch.exp(-torch.cdist(centres, centres).square() / (2 * PRIOR_SIGMA**2))
        prior = (kernel / kernel.sum(1, keepdim=True)) @ (counts.float() / counts.sum())
        self.prior = prior / prior.sum()
        weights = 1 / ((1 - self.lambda_) * self.prior + self.lambda_ / self.out_channels)
        self.bin_weights = weights / (self.prior * weights).sum()

    def class_weights(self, nearest: torch.Tensor) -> torch.Tensor:
        if self.bin_weights is None:
            raise RuntimeError("ce-rebalanced has no ab prior yet: call prepare(train_rgb) with the training fold first")
        if self.bin_weights.device != nearest.device:
            self.bin_weights = self.bin_weights.to(nearest.device)
        return self.bin_weights[nearest]


def registered(registry: Registry, exclude: str | None = None) -> AfterValidator:
    """Pydantic check that a name is in `registry` (and is not `exclude`), so bad names fail at config time."""

    def check(name: str) -> str:
        if name == exclude:
            raise ValueError(f"{exclude!r} cannot be its own base; name another loss")
        try:
            registry.get(name)
        except ConfigError as err:
            raise ValueError(str(err)) from None
        return name

    return AfterValidator(check)


def options_of(registry: Registry, name_field: str) -> AfterValidator:
    """Pydantic check of an options dict against the entry named by the (earlier) field `name_field`; fills defaults."""

    def check(options: Mapping[str, Any], info: pydantic.ValidationInfo) -> dict[str, Any]:
        if name_field not in info.data:  # the name itself failed; that error is reported
            return options
        try:
            return registry.validate(info.data[name_field], options)
        except ConfigError as err:
            raise ValueError(str(err)) from None

    return AfterValidator(check)


@LOSSES.register("bg-weighted")
class BackgroundWeighted(Objective):
    """A base loss with background pixels down-weighted: w = 1 - (1 - background_weight) * mask, mean 1 per image.

    Multiplies the base loss's own `pixel_weights` (product renormalised to mean 1 per image) and passes the result
    to the base, which may weight it further (e.g. class rebalancing). Head width, variants, prepare and decoding
    are the base's. `base`, `mask` and their options are validated when the grid file is read.
    """

    def __init__(
        self,
        base: Annotated[str, registered(LOSSES, exclude="bg-weighted")] = "mse",
        base_options: Annotated[Mapping[str, Any], Field(validate_default=True), options_of(LOSSES, "base")] = {},
        mask: Annotated[str, registered(MASKS)] = "flat",
        mask_options: Annotated[Mapping[str, Any], Field(validate_default=True), options_of(MASKS, "mask")] = {},
        background_weight: Annotated[float, Field(gt=0, le=1)] = 0.25,
    ) -> None:
        self.base = LOSSES.build(base, base_options)
        self.mask = MASKS.build(mask, mask_options)
        self.background_weight = background_weight
        self.out_channels = self.base.out_channels
        self.variants = self.base.variants

    def prepare(self, train_rgb: torch.Tensor) -> None:
        self.base.prepare(train_rgb)

    @torch.no_grad()
    def pixel_weights(self, L: torch.Tensor, ab: torch.Tensor) -> torch.Tensor:
        with torch.autocast(L.device.type, enabled=False):  # torch.fft has no bf16
            weights = 1.0 - (1.0 - self.background_weight) * self.mask(L, ab)
        base = self.base.pixel_weights(L, ab)
        if base is not None:
            weights = weights * base
        return weights / weights.mean(dim=(1, 2, 3), keepdim=True)

    def __call__(self, pred: torch.Tensor, target_ab: torch.Tensor, weights: torch.Tensor | None = None) -> torch.Tensor:
        return self.base(pred, target_ab, weights)

    def decode(self, pred: torch.Tensor, variant: str = "default") -> torch.Tensor:
        return self.base.decode(pred, variant)
