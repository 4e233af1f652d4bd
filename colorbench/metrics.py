"""Evaluation metrics for colorization, batched in torch and accumulated over a data set batch by batch."""

from __future__ import annotations

import torch
import torch.nn.functional as F

from colorbench.color import ab_gamut_bins, lab_to_rgb, nearest_bins
from colorbench.filters import gaussian_taps

SSIM_WIN = 11
SSIM_SIGMA = 1.5
SSIM_K1, SSIM_K2 = 0.01, 0.03
PER_IMAGE_KEYS = ("ab_rmse", "psnr", "ssim", "auc", "colorfulness_pred", "colorfulness_true")


def colorfulness(rgb: torch.Tensor) -> torch.Tensor:
    """Hasler & Suesstrunk (2003) colourfulness of (B,3,H,W) RGB in [0,1] on the 8-bit scale -> (B,)."""
    x = rgb.double().flatten(2) * 255.0
    r, g, b = x.unbind(1)
    rg = r - g
    yb = 0.5 * (r + g) - b
    sigma = torch.sqrt(rg.var(1, unbiased=False) + yb.var(1, unbiased=False))
    mu = torch.sqrt(rg.mean(1) ** 2 + yb.mean(1) ** 2)
    return sigma + 0.3 * mu


def psnr(rgb_pred: torch.Tensor, rgb_true: torch.Tensor) -> torch.Tensor:
    """Per-image PSNR in dB of (B,C,H,W) images with data range 1 -> (B,)."""
    mse = (rgb_pred.double() - rgb_true.double()).pow(2).flatten(1).mean(1)
    return -10.0 * torch.log10(mse.clamp_min(1e-10))


def ssim(rgb_pred: torch.Tensor, rgb_true: torch.Tensor) -> torch.Tensor:
    """Per-image SSIM of (B,C,H,W) images with data range 1, mean over channels -> (B,).

    Matches skimage's structural_similarity(gaussian_weights=True, sigma=1.5, use_sample_covariance=False,
    data_range=1): statistics over the valid region of an 11x11 gaussian window, which is exactly the region
    skimage averages after cropping its border.
    """
    x, y = rgb_pred.double(), rgb_true.double()
    c = x.shape[1]
    w = gaussian_taps(SSIM_WIN // 2, SSIM_SIGMA, torch.float64, x.device)  # as scipy's gaussian_filter, truncate 3.5
    wh = w.view(1, 1, 1, -1).expand(c, 1, 1, -1)
    wv = w.view(1, 1, -1, 1).expand(c, 1, -1, 1)

    def blur(t: torch.Tensor) -> torch.Tensor:
        return F.conv2d(F.conv2d(t, wh, groups=c), wv, groups=c)

    mx, my = blur(x), blur(y)
    vx = blur(x * x) - mx * mx
    vy = blur(y * y) - my * my
    cxy = blur(x * y) - mx * my
    c1, c2 = SSIM_K1**2, SSIM_K2**2
    s = ((2 * mx * my + c1) * (2 * cxy + c2)) / ((mx * mx + my * my + c1) * (vx + vy + c2))
    return s.flatten(1).mean(1)


def _auc_percent(counts: torch.Tensor) -> torch.Tensor:
    """AuC in percent from error histograms (..., T+2): bin k<=T holds errors in (k-1, k], bin T+1 errors > T."""
    cdf = counts[..., :-1].cumsum(-1).double() / counts.sum(-1, keepdim=True).double()
    return 100.0 * cdf.mean(-1)


class ColorizationMetrics:
    """Accumulates colorization metrics over batches.

    update(L, ab_pred, ab_true) takes L (B,1,H,W) in Lab units [0,100] and ab (B,2,H,W) in Lab units.
    compute() -> dict with ab_rmse, psnr, ssim, auc, auc_rebalanced, colorfulness_pred, colorfulness_true,
    colorfulness_ratio over everything seen; per_image() -> one dict per image in update order.
    AuC (Zhang et al. 2016) is the mean over thresholds 0..`thresholds` of the fraction of pixels whose ab
    error is <= the threshold, in percent; the rebalanced AuC averages that over the ground-truth ab bins
    present in the whole set. Both come from integer-threshold error histograms, so memory stays O(Q x T).
    """

    def __init__(self, centres: torch.Tensor | None = None, thresholds: int = 150) -> None:
        self.centres = ab_gamut_bins() if centres is None else centres
        self.thresholds = thresholds
        self._sq_err: torch.Tensor | None = None  # float64 sum of squared ab errors
        self._pixels = 0
        self._bin_counts: torch.Tensor | None = None  # (Q, T+2) int64, error histogram per truth ab bin
        self._per_image: dict[str, list[torch.Tensor]] = {k: [] for k in PER_IMAGE_KEYS}

    @torch.no_grad()
    def update(self, L: torch.Tensor, ab_pred: torch.Tensor, ab_true: torch.Tensor) -> None:
        """Add a batch: L (B,1,H,W), ab_pred and ab_true (B,2,H,W), all in Lab units."""
        b = L.shape[0]
        nbins = self.thresholds + 2
        centres = self.centres.to(device=ab_true.device, dtype=ab_true.dtype)
        if self._bin_counts is None:
            self._bin_counts = torch.zeros(len(centres), nbins, dtype=torch.int64, device=ab_true.device)
            self._sq_err = torch.zeros((), dtype=torch.float64, device=ab_true.device)

        sq = (ab_pred.double() - ab_true.double()).pow(2).sum(1)  # (B,H,W)
        self._sq_err += sq.sum()
        self._pixels += sq.numel()
        # error e lands in bin ceil(e): e <= t for integer t exactly when ceil(e) <= t; beyond T -> overflow bin
        hist_bin = torch.ceil(sq.sqrt()).clamp_max(self.thresholds + 1).long()
        truth_bin = nearest_bins(ab_true, centres)
        flat = (truth_bin * nbins + hist_bin).flatten()
        self._bin_counts += torch.bincount(flat, minlength=self._bin_counts.numel()).view_as(self._bin_counts)
        image = torch.arange(b, device=sq.device).view(b, 1, 1)
        image_counts = torch.bincount((image * nbins + hist_bin).flatten(), minlength=b * nbins).view(b, nbins)

        rgb_pred = lab_to_rgb(torch.cat([L, ab_pred], 1))
        rgb_true = lab_to_rgb(torch.cat([L, ab_true], 1))
        values = {
            "ab_rmse": sq.flatten(1).mean(1).sqrt(),
            "psnr": psnr(rgb_pred, rgb_true),
            "ssim": ssim(rgb_pred, rgb_true),
            "auc": _auc_percent(image_counts),
            "colorfulness_pred": colorfulness(rgb_pred),
            "colorfulness_true": colorfulness(rgb_true),
        }
        for k, v in values.items():
            self._per_image[k].append(v)

    def _stacked(self) -> dict[str, torch.Tensor]:
        if self._bin_counts is None:
            raise ValueError("ColorizationMetrics: no batches seen; call update() before compute()/per_image()")
        return {k: torch.cat(v) for k, v in self._per_image.items()}

    def compute(self) -> dict[str, float]:
        """Set-level metrics over every batch seen so far."""
        per = self._stacked()
        counts = self._bin_counts
        present = counts.sum(1) > 0
        cf_pred, cf_true = per["colorfulness_pred"].mean(), per["colorfulness_true"].mean()
        return {
            "ab_rmse": (self._sq_err / self._pixels).sqrt().item(),
            "psnr": per["psnr"].mean().item(),
            "ssim": per["ssim"].mean().item(),
            "auc": _auc_percent(counts.sum(0)).item(),
            "auc_rebalanced": _auc_percent(counts[present]).mean().item(),
            "colorfulness_pred": cf_pred.item(),
            "colorfulness_true": cf_true.item(),
            "colorfulness_ratio": (cf_pred / cf_true).item(),
        }

    def per_image(self) -> list[dict[str, float]]:
        """One dict per image, in update order: ab_rmse, psnr, ssim, auc, colorfulness_pred, colorfulness_true."""
        per = {k: v.cpu().tolist() for k, v in self._stacked().items()}
        return [dict(zip(per, row)) for row in zip(*per.values())]
