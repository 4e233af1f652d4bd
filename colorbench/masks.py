"""Background estimators (registry `MASKS`), which the `bg-weighted` loss (colorbench.losses) uses to down-weight background pixels.

A mask maps L (B,1,H,W, Lab units 0..100), and during training/evaluation the ground-truth ab (B,2,H,W),
to a background score in [0, 1] (B,1,H,W): 1 = background (large, flat, low-detail regions), 0 = foreground.
Every estimator is batched torch on the tensors' device. Scores are soft: `soft_below(x, ref)` =
1 / (1 + (x / ref)^4) is 1/2 at x = ref, 0.94 at ref/2 and 0.06 at 2 ref.
"""

from __future__ import annotations

from typing import Annotated

import torch
import torch.nn.functional as F
from pydantic import Field

from colorbench.errors import ConfigError
from colorbench.filters import gaussian_blur
from colorbench.registry import Registry

EPS = 1e-6


class Mask:
    """Background estimator: `__call__(L, ab=None)` -> background score in [0, 1], (B,1,H,W)."""

    def __call__(self, L: torch.Tensor, ab: torch.Tensor | None = None) -> torch.Tensor:
        raise NotImplementedError


MASKS: Registry[Mask] = Registry("mask")


def soft_below(x: torch.Tensor, ref: torch.Tensor | float) -> torch.Tensor:
    """Soft indicator of x < ref (both >= 0): 1 / (1 + (x / ref)^4)."""
    return 1.0 / (1.0 + (x / (ref + EPS)).pow(4))


def per_image_quantile(x: torch.Tensor, q: float) -> torch.Tensor:
    """The q-quantile of each image of (B,1,H,W), as (B,1,1,1) (kthvalue: no size limit, unlike torch.quantile)."""
    flat = x.flatten(1)
    k = min(flat.shape[1], max(1, round(q * flat.shape[1])))
    return flat.kthvalue(k, dim=1).values.view(-1, 1, 1, 1)


@MASKS.register("flat")
class Flat(Mask):
    """Low local detail: Gaussian-smoothed gradient magnitude of L, soft-thresholded against the image's own detail level.

    background = soft_below(m, threshold * (q-quantile of m over the image)), m = forward-difference gradient
    magnitude smoothed at `scale` px (not Sobel: its central difference misses pixel-scale texture, e.g. a 1-px
    checkerboard has zero Sobel response). Relative to each image's `quantile` (its typical detailed region), so it
    adapts to contrast: uniform texture everywhere gives little background, a perfectly flat image is all background.
    """

    def __init__(
        self,
        scale: Annotated[float, Field(gt=0)] = 2.0,
        threshold: Annotated[float, Field(gt=0)] = 0.25,
        quantile: Annotated[float, Field(gt=0, le=1)] = 0.9,
    ) -> None:
        self.scale, self.threshold, self.quantile = scale, threshold, quantile

    def __call__(self, L: torch.Tensor, ab: torch.Tensor | None = None) -> torch.Tensor:
        x = F.pad(L.float(), (0, 1, 0, 1), mode="replicate")
        gx, gy = x[..., :-1, 1:] - x[..., :-1, :-1], x[..., 1:, :-1] - x[..., :-1, :-1]
        m = gaussian_blur(torch.sqrt(gx**2 + gy**2), self.scale)
        return soft_below(m, self.threshold * per_image_quantile(m, self.quantile))


@MASKS.register("saliency")
class Saliency(Mask):
    """Low spectral-residual saliency of L (Hou & Zhang 2007), computed at `size` px (larger images are downsampled).

    S = |IFFT(exp(residual + i phase))|^2, residual = log amplitude minus its 3x3 mean (edge-replicated on the
    unshifted spectrum, as in Hou's released code), smoothed at `sigma` working px (that code blurs with a radius-3
    disk) and upsampled; background = soft_below(S, threshold * mean(S)). The paper's object map is S > 3 mean(S);
    thresholding at the mean makes the score fall off across whole salient regions, not only at their peaks.
    Strictly periodic texture counts as expected (only its borders are salient); random texture is salient.
    """

    def __init__(
        self,
        size: Annotated[int, Field(ge=8)] = 64,
        sigma: Annotated[float, Field(gt=0)] = 2.5,
        threshold: Annotated[float, Field(gt=0)] = 1.0,
    ) -> None:
        self.size, self.sigma, self.threshold = size, sigma, threshold

    def __call__(self, L: torch.Tensor, ab: torch.Tensor | None = None) -> torch.Tensor:
        height, width = L.shape[-2:]
        factor = min(1.0, self.size / max(height, width))
        work = (max(2, round(height * factor)), max(2, round(width * factor)))
        small = F.interpolate(L.float(), size=work, mode="area")
        spectrum = torch.fft.fft2(small)
        log_amp = torch.log(spectrum.abs() + EPS)
        residual = log_amp - F.avg_pool2d(F.pad(log_amp, (1, 1, 1, 1), mode="replicate"), 3, stride=1)
        saliency = torch.fft.ifft2(torch.exp(torch.complex(residual, torch.angle(spectrum)))).abs().pow(2)
        saliency = F.interpolate(gaussian_blur(saliency, self.sigma), size=(height, width), mode="bilinear", align_corners=False)
        return soft_below(saliency, self.threshold * saliency.mean(dim=(1, 2, 3), keepdim=True))


@MASKS.register("chroma")
class Chroma(Mask):
    """Low ground-truth chroma |ab| (needs ab: training and evaluation only, never at colorize time).

    background = soft_below(|ab|, threshold), `threshold` in Lab units (10: grayish).
    """

    def __init__(self, threshold: Annotated[float, Field(gt=0)] = 10.0) -> None:
        self.threshold = threshold

    def __call__(self, L: torch.Tensor, ab: torch.Tensor | None = None) -> torch.Tensor:
        if ab is None:
            raise ConfigError("mask 'chroma' needs the ground-truth ab (training/evaluation only); use 'flat' or 'saliency' without it")
        return soft_below(ab.float().pow(2).sum(dim=1, keepdim=True).sqrt(), self.threshold)
