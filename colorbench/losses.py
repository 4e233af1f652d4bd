"""Training objectives (registry `LOSSES`): each says its head width, learns from the training fold, scores and decodes."""

from __future__ import annotations

import inspect
from collections.abc import Callable, Mapping
from typing import Annotated, Any, TypeVar

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
    - `tuning`: the name of the one decoding parameter that `train.decode` may choose on validation (`chroma_scale` s,
      ab x s, for regression heads; `decode_temperature` T for bin heads); None: the loss has none. `tune(value)` sets it,
      and the default decoding uses it from then on.
    """

    out_channels: int = 2
    variants: tuple[str, ...] = ("default",)
    tuning: str | None = None

    def prepare(self, train_rgb: torch.Tensor) -> None:
        """Nothing to learn by default."""

    def pixel_weights(self, L: torch.Tensor, ab: torch.Tensor) -> torch.Tensor | None:
        """Uniform weights by default."""
        return None

    def __call__(self, pred: torch.Tensor, target_ab: torch.Tensor, weights: torch.Tensor | None = None) -> torch.Tensor:
        raise NotImplementedError

    def decode(self, pred: torch.Tensor, variant: str = "default") -> torch.Tensor:
        raise NotImplementedError

    def tune(self, value: float) -> None:
        """Set the decoding parameter named by `tuning`."""
        raise ConfigError(f"loss {type(self).__name__} has no decoding parameter to choose on validation; drop train.decode")


def weighted_mean(per_pixel: torch.Tensor, weights: torch.Tensor | None) -> torch.Tensor:
    """Mean of a (B,1,H,W) per-pixel loss, weighted when `weights` is given."""
    return per_pixel.mean() if weights is None else (per_pixel * weights).mean()


LOSSES: Registry[Objective] = Registry("loss")


@LOSSES.register("mse")
class MSE(Objective):
    """Mean squared error on ab / 110 (the seed's regression; averages colours towards brown).

    Decodes to ab = head x 110 x `chroma_scale` (1 unless `train.decode` chose another on validation)."""

    tuning = "chroma_scale"
    chroma_scale = 1.0

    def squared_error(self, pred: torch.Tensor, target_ab: torch.Tensor) -> torch.Tensor:
        """Per-pixel squared error (B,1,H,W) on ab / 110, mean over a and b."""
        return (pred.float() - target_ab / AB_SCALE).pow(2).mean(dim=1, keepdim=True)

    def __call__(self, pred: torch.Tensor, target_ab: torch.Tensor, weights: torch.Tensor | None = None) -> torch.Tensor:
        return weighted_mean(self.squared_error(pred, target_ab), weights)

    def decode(self, pred: torch.Tensor, variant: str = "default") -> torch.Tensor:
        return pred.float() * (AB_SCALE * self.chroma_scale)

    def tune(self, value: float) -> None:
        self.chroma_scale = float(value)


PRIOR_SIGMA = 5.0  # ab units: Gaussian smoothing of the empirical bin prior before rebalancing
PRIOR_CHUNK = 64  # images per step of the streaming pass that histograms the training fold

Temperature = Annotated[float, Field(ge=0)]
Rebalance = Annotated[float, Field(gt=0, le=1)]
Sigma = Annotated[float, Field(gt=0)]
Neighbours = Annotated[int, Field(ge=1)]
GridSize = Annotated[float, Field(gt=0)]
Stride = Annotated[int, Field(ge=1)]


ObjectiveT = TypeVar("ObjectiveT", bound=type)


def with_options_of(parent: Callable[..., Objective]) -> Callable[[ObjectiveT], ObjectiveT]:
    """Class decorator: the class's options are its own keyword options followed by those of `parent` (which its `__init__` takes
    as `**options` and hands on), so the registry validates, lists and labels them all without repeating `parent`'s list."""

    def wrap(cls: ObjectiveT) -> ObjectiveT:
        own = [p for p in inspect.signature(cls.__init__, eval_str=True).parameters.values() if p.kind is p.POSITIONAL_OR_KEYWORD][1:]
        inherited = [p for p in inspect.signature(parent, eval_str=True).parameters.values() if p.name not in {q.name for q in own}]
        cls.__signature__ = inspect.Signature([p.replace(kind=p.KEYWORD_ONLY) for p in own + inherited])
        return cls

    return wrap


@LOSSES.register("ce")
class CrossEntropy(Objective):
    """Cross-entropy over quantised ab bins with soft-encoded targets (Zhang et al. 2016), no class rebalancing.

    The head predicts one logit per bin; `decode` is the annealed mean at `temperature` ("mode": T -> 0, "T1": T = 1).
    `loss_stride` s scores only every s-th row and column (Zhang et al. use 4); decoding stays at full resolution.
    """

    variants = ("default", "mode", "T1")
    tuning = "decode_temperature"

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

    def tune(self, value: float) -> None:
        self.temperature = float(value)


@torch.no_grad()
def rebalancing_weights(train_rgb: torch.Tensor, centres: torch.Tensor, lambda_: float, loss: str) -> tuple[torch.Tensor, torch.Tensor]:
    """(smoothed prior, weight per bin), both (Q,), of the training fold's uint8 images (N,H,W,3), in one exact streaming pass of
    PRIOR_CHUNK images at a time (every pixel counts; nothing is sampled).

    The nearest-bin histogram is smoothed with a Gaussian of PRIOR_SIGMA over the bin centres (each bin takes the
    Gaussian-weighted mean), mixed with uniform by `lambda_` and inverted; weights are normalised so that their
    prior-weighted mean is 1 (Zhang et al. 2016)."""
    if len(train_rgb) == 0:
        raise ValueError(f"{loss} needs at least one training image to estimate the ab prior")
    counts = torch.zeros((), dtype=torch.long)
    for start in range(0, len(train_rgb), PRIOR_CHUNK):
        chunk = train_rgb[start : start + PRIOR_CHUNK]
        counts = counts.to(chunk.device) + torch.bincount(nearest_bins(lab_batch(chunk)[1], centres.to(chunk.device)).flatten(), minlength=len(centres))
    centres = centres.to(counts.device)
    kernel = torch.exp(-torch.cdist(centres, centres).square() / (2 * PRIOR_SIGMA**2))
    prior = (kernel / kernel.sum(1, keepdim=True)) @ (counts.float() / counts.sum())
    prior = prior / prior.sum()
    weights = 1 / ((1 - lambda_) * prior + lambda_ / len(centres))
    return prior, weights / (prior * weights).sum()


@LOSSES.register("ce-rebalanced")
@with_options_of(CrossEntropy)
class RebalancedCrossEntropy(CrossEntropy):
    """Cross-entropy over ab bins with class rebalancing: pixels weighted by 1 / ((1 - lambda) * prior + lambda / Q).

    The prior is the training fold's bin histogram, smoothed with a Gaussian (sigma 5 in ab); weights are
    normalised so that their prior-weighted mean is 1, and each pixel takes the weight of its nearest bin.
    """

    def __init__(self, lambda_: Rebalance = 0.5, **options: Any) -> None:  # and CrossEntropy's options (`with_options_of`)
        super().__init__(**options)
        self.lambda_ = lambda_
        self.prior: torch.Tensor | None = None  # (Q,) smoothed bin prior, sums to 1
        self.bin_weights: torch.Tensor | None = None  # (Q,) rebalancing weight per bin

    def prepare(self, train_rgb: torch.Tensor) -> None:
        """Estimate the smoothed bin prior and the bin weights from the training fold (`rebalancing_weights`)."""
        self.prior, self.bin_weights = rebalancing_weights(train_rgb, self.centres, self.lambda_, "ce-rebalanced")

    def class_weights(self, nearest: torch.Tensor) -> torch.Tensor:
        if self.bin_weights is None:
            raise RuntimeError("ce-rebalanced has no ab prior yet: call prepare(train_rgb) with the training fold first")
        if self.bin_weights.device != nearest.device:
            self.bin_weights = self.bin_weights.to(nearest.device)
        return self.bin_weights[nearest]


@LOSSES.register("ce-mse")
@with_options_of(RebalancedCrossEntropy)
class RebalancedCrossEntropyMSE(RebalancedCrossEntropy):
    """Hybrid: ce-rebalanced + mse_weight x MSE on ab / 110 of the annealed mean at `temperature` (differentiable through the softmax).

    Every other option is ce-rebalanced's (`lambda` is its rebalancing mix, hence `mse_weight` for the hybrid's weight). The
    regression term always uses the `temperature` it was configured with; a decoding chosen on validation changes only `decode`.
    """

    def __init__(self, mse_weight: Annotated[float, Field(ge=0)] = 1.0, **options: Any) -> None:
        super().__init__(**options)
        if self.temperature == 0:
            raise ConfigError("ce-mse trains the annealed mean through the softmax, which T = 0 (the mode) has not: set temperature > 0")
        self.mse_weight, self.mse_temperature = mse_weight, self.temperature

    def __call__(self, pred: torch.Tensor, target_ab: torch.Tensor, weights: torch.Tensor | None = None) -> torch.Tensor:
        with torch.autocast(pred.device.type, enabled=False):
            ab = annealed_mean(pred.float(), self._centres_on(pred.device), self.mse_temperature)
        per_pixel = ((ab - target_ab.float()) / AB_SCALE).pow(2).mean(dim=1, keepdim=True)
        return super().__call__(pred, target_ab, weights) + self.mse_weight * weighted_mean(per_pixel, weights)


@LOSSES.register("rebalanced-mse")
class RebalancedMSE(MSE):
    """MSE on ab / 110 with each pixel weighted by ce-rebalanced's weight of its target's nearest ab bin (prior from the training fold).

    `lambda`, `grid` and `rim` mean what they mean for ce-rebalanced; the weights' prior-weighted mean is 1, so the loss's scale
    matches plain mse. Decoding is mse's (with its `chroma_scale`).
    """

    def __init__(self, lambda_: Rebalance = 0.5, grid: GridSize = 10.0, rim: bool = False) -> None:
        self.centres = ab_gamut_bins(grid, rim)
        self.lambda_ = lambda_
        self.prior: torch.Tensor | None = None  # (Q,) smoothed bin prior, sums to 1
        self.bin_weights: torch.Tensor | None = None  # (Q,) rebalancing weight per bin

    def prepare(self, train_rgb: torch.Tensor) -> None:
        """Estimate the bin prior and weights from the training fold (`rebalancing_weights`)."""
        self.prior, self.bin_weights = rebalancing_weights(train_rgb, self.centres, self.lambda_, "rebalanced-mse")

    def __call__(self, pred: torch.Tensor, target_ab: torch.Tensor, weights: torch.Tensor | None = None) -> torch.Tensor:
        if self.bin_weights is None:
            raise RuntimeError("rebalanced-mse has no ab prior yet: call prepare(train_rgb) with the training fold first")
        self.centres, self.bin_weights = self.centres.to(pred.device), self.bin_weights.to(pred.device)
        rebalance = self.bin_weights[nearest_bins(target_ab.float(), self.centres)][:, None]
        return weighted_mean(self.squared_error(pred, target_ab) * rebalance, weights)


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
    (with its tuning) are the base's. `base`, `mask` and their options are validated when the grid file is read.
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
        self.tuning = self.base.tuning

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

    def tune(self, value: float) -> None:
        self.base.tune(value)
