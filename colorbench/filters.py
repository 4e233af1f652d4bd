"""Small image filters shared by the metrics and the background masks."""

from __future__ import annotations

import math

import torch
import torch.nn.functional as F


def gaussian_taps(radius: int, sigma: float, dtype: torch.dtype, device: torch.device) -> torch.Tensor:
    """Normalised 1-D Gaussian of 2 * radius + 1 taps."""
    t = torch.arange(-radius, radius + 1, dtype=dtype, device=device)
    taps = torch.exp(-0.5 * (t / sigma) ** 2)
    return taps / taps.sum()


def gaussian_blur(x: torch.Tensor, sigma: float) -> torch.Tensor:
    """Separable Gaussian smoothing of (B,1,H,W) with edge replication (any image size), radius ceil(3 sigma)."""
    radius = max(1, math.ceil(3 * sigma))
    kernel = gaussian_taps(radius, sigma, x.dtype, x.device)
    x = F.conv2d(F.pad(x, (radius, radius, 0, 0), mode="replicate"), kernel.view(1, 1, 1, -1))
    return F.conv2d(F.pad(x, (0, 0, radius, radius), mode="replicate"), kernel.view(1, 1, -1, 1))
