"""The set-level PSNR and SSIM of `ColorizationMetrics.compute()` against scikit-image, on real photos and a wrong colouring.

colorbench's conventions (metrics.py): RGB is reconstructed from the true L and the predicted (or true) ab as
`skimage.color.lab2rgb` does, clipped to [0, 1]; PSNR and SSIM use data range 1; SSIM is skimage's Gaussian-weighted
form (sigma 1.5, population covariance) averaged over the three channels; a set's value is the MEAN OF THE PER-IMAGE
values (not one PSNR of the pooled squared error), whatever the batching.
"""

from __future__ import annotations

import numpy as np
import pytest
import torch
from skimage.color import lab2rgb, rgb2lab
from skimage.metrics import peak_signal_noise_ratio, structural_similarity

from colorbench.data import SOURCES
from colorbench.metrics import ColorizationMetrics

PSNR_ATOL = 1e-5  # dB: float32 Lab -> sRGB in colorbench against float64 in scikit-image (measured: 4e-7)
SSIM_ATOL = 1e-7  # measured: 3.5e-9


@pytest.fixture(scope="module")
def lab_pair() -> tuple[np.ndarray, np.ndarray]:
    """True Lab of the 8 bundled photos (48 px, 2 crops each) and a wrong, non-trivial colouring of the same L.

    The prediction is each image's own ab shifted by 9 px, scaled by 0.6 and offset by (+12, -7): wrong colours,
    partly out of gamut, so the clipping of lab2rgb is exercised. Values are rounded to float32, the metric's input."""
    images = SOURCES.build("builtin", {"image_size": 48, "crops_per_photo": 2}).images
    lab = rgb2lab(images).astype(np.float32)
    pred = lab.copy()
    pred[..., 1:] = 0.6 * np.roll(lab[..., 1:], 9, axis=(1, 2)) + np.array([12.0, -7.0], dtype=np.float32)
    return lab, pred


def test_aggregate_psnr_and_ssim_equal_scikit_image(lab_pair: tuple[np.ndarray, np.ndarray]) -> None:
    lab, pred = lab_pair
    meter = ColorizationMetrics()
    for part in np.array_split(np.arange(len(lab)), [5, 11]):  # uneven batches: the set value must not depend on them
        L, ab_true, ab_pred = (torch.from_numpy(np.ascontiguousarray(a[part].transpose(0, 3, 1, 2))) for a in (lab[..., :1], lab[..., 1:], pred[..., 1:]))
        meter.update(L, ab_pred, ab_true)
    got = meter.compute()

    truth = [lab2rgb(x.astype(np.float64)) for x in lab]
    guess = [lab2rgb(x.astype(np.float64)) for x in pred]
    psnr = [peak_signal_noise_ratio(t, g, data_range=1.0) for t, g in zip(truth, guess, strict=True)]
    ssim = [
        structural_similarity(t, g, data_range=1.0, channel_axis=-1, gaussian_weights=True, sigma=1.5, use_sample_covariance=False)
        for t, g in zip(truth, guess, strict=True)
    ]
    assert 10 < np.mean(psnr) < 35 and 0.3 < np.mean(ssim) < 0.99, "the wrong colouring must be visibly wrong"
    assert got["psnr"] == pytest.approx(np.mean(psnr), abs=PSNR_ATOL)
    assert got["ssim"] == pytest.approx(np.mean(ssim), abs=SSIM_ATOL)
    pooled = -10 * np.log10(np.mean([np.mean((t - g) ** 2) for t, g in zip(truth, guess, strict=True)]))
    assert abs(pooled - np.mean(psnr)) > 10 * PSNR_ATOL, "mean of per-image PSNR and pooled PSNR must be told apart here"
