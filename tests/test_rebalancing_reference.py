"""`ce-rebalanced` against a numpy transcription of its definition (design page), on the bundled real photos.

Definition: the nearest-bin histogram of the TRAINING fold's pixels over the gamut bins, smoothed with a Gaussian of
sigma 5 in ab over the bin centres, mixed with uniform by lambda, inverted, normalised so the prior-weighted mean weight
is 1. The design does not say how the kernel is normalised at the gamut's edge; colorbench takes, for each bin, the
Gaussian-weighted mean of the prior over the bin centres (a normalised convolution), and so does the reference. The
other reading, plain convolution that spreads each bin's mass and renormalises, is `conv_smoothing` below: the test
checks that it is told apart, so the comparison has the power to see a change of convention.
"""

from __future__ import annotations

import numpy as np
import pytest
import torch
from conftest import rows_array
from skimage.color import rgb2lab

from colorbench.backbones import build_model
from colorbench.color import ab_gamut_bins
from colorbench.components import LOSSES
from colorbench.config import TrainConfig
from colorbench.data import SOURCES
from colorbench.images import ImageSet
from colorbench.losses import RebalancedCrossEntropy
from colorbench.resolve import parse_experiment
from colorbench.runner import run_grid
from colorbench.splitters import SPLITTERS, carve_test
from colorbench.train import fit

SIGMA = 5.0  # ab units, fixed by the design page
RTOL = 1e-5  # float32 in the loss vs float64 here; measured: 2.5e-7 relative, and not one pixel changes its nearest bin
GRID = {
    "experiment": "prior",
    "data": {"source": "builtin", "image_size": 32, "crops_per_photo": 2},
    "train": {"epochs": 1, "batch_size": 8, "lr": 1.0e-3, "seed": 0},
    "test_fraction": 0.25,
    "grid": {"backbone": ["resnet18-6"], "loss": [{"name": "ce-rebalanced", "lambda": 0.3}], "splitter": [{"name": "kfold", "k": 2}]},
}


def nearest_bin_histogram(rgb: np.ndarray, centres: np.ndarray) -> np.ndarray:
    """Share of the pixels of uint8 images (N,H,W,3) whose ab (scikit-image's Lab) is nearest to each centre."""
    ab = rgb2lab(rgb).reshape(-1, 3)[:, 1:]
    nearest = ((ab[:, None, :] - centres[None]) ** 2).sum(-1).argmin(1)
    counts = np.bincount(nearest, minlength=len(centres)).astype(np.float64)
    return counts / counts.sum()


def gaussian_kernel(centres: np.ndarray) -> np.ndarray:
    return np.exp(-((centres[:, None] - centres[None]) ** 2).sum(-1) / (2 * SIGMA**2))


def mean_smoothing(p: np.ndarray, centres: np.ndarray) -> np.ndarray:
    """Each bin's Gaussian-weighted mean of the prior over the bin centres, renormalised to sum 1."""
    kernel = gaussian_kernel(centres)
    smoothed = np.array([kernel[i] @ p / kernel[i].sum() for i in range(len(p))])
    return smoothed / smoothed.sum()


def conv_smoothing(p: np.ndarray, centres: np.ndarray) -> np.ndarray:
    """The other reading: each bin's mass spread by the unnormalised Gaussian, renormalised to sum 1."""
    smoothed = gaussian_kernel(centres) @ p
    return smoothed / smoothed.sum()


def reference(rgb: np.ndarray, lam: float, smoothing=mean_smoothing) -> tuple[np.ndarray, np.ndarray]:
    """(smoothed prior, bin weights) of the training images `rgb`, in float64."""
    centres = ab_gamut_bins().double().numpy()
    prior = smoothing(nearest_bin_histogram(rgb, centres), centres)
    weights = 1.0 / ((1.0 - lam) * prior + lam / len(prior))
    return prior, weights / (prior * weights).sum()


@pytest.fixture(scope="module")
def pool() -> ImageSet:
    data = SOURCES.build("builtin", {"image_size": 32, "crops_per_photo": 2})
    rest, _ = carve_test(data, 0.25, 0)
    return data.subset(rest)


@pytest.mark.parametrize("lam", [0.5, 0.2])
def test_weights_equal_the_reference_on_the_training_rows(pool: ImageSet, lam: float) -> None:
    (fold,) = SPLITTERS.build("holdout", {"val_fraction": 0.3}).split(pool, 0)
    train = pool.images[fold.train]
    objective = LOSSES.build("ce-rebalanced", {"lambda": lam})
    objective.prepare(torch.from_numpy(train))
    prior, weights = reference(train, lam)
    np.testing.assert_allclose(objective.prior.double().numpy(), prior, rtol=0, atol=1e-7)
    np.testing.assert_allclose(objective.bin_weights.double().numpy(), weights, rtol=RTOL, atol=0)
    _, other = reference(train, lam, conv_smoothing)
    assert not np.allclose(weights, other, rtol=100 * RTOL, atol=0), "the two smoothing conventions must be told apart"
    assert not np.allclose(weights, reference(pool.images, lam)[1], rtol=100 * RTOL, atol=0), "train+val must give another prior"


def fitted_weights(train: np.ndarray, val: np.ndarray) -> torch.Tensor:
    """The bin weights a 1-epoch `fit` leaves on a fresh ce-rebalanced objective."""
    torch.manual_seed(0)
    objective = LOSSES.build("ce-rebalanced")
    model = build_model("resnet18-6", {}, objective.out_channels)
    fit(model, objective, torch.from_numpy(train), torch.from_numpy(val), TrainConfig(epochs=1, batch_size=16, channels_last=False))
    return objective.bin_weights.clone()


def test_fit_takes_the_prior_from_the_training_rows_only(pool: ImageSet) -> None:
    (fold,) = SPLITTERS.build("holdout", {"val_fraction": 0.3}).split(pool, 0)
    train, val = pool.images[fold.train], pool.images[fold.val]
    base = fitted_weights(train, val)
    np.testing.assert_allclose(base.double().numpy(), reference(train, 0.5)[1], rtol=RTOL, atol=0)
    assert torch.equal(fitted_weights(train, np.ascontiguousarray(val[::-1][: len(val) // 2])), base), "other validation rows changed the prior"
    swapped = np.concatenate([train[2:], val[:2]])  # two training rows replaced by validation rows
    assert not torch.allclose(fitted_weights(swapped, val[2:]), base, rtol=100 * RTOL, atol=0), "other training rows kept the prior"


def test_grid_prepares_each_fold_on_its_training_rows(tracking_uri: str, monkeypatch: pytest.MonkeyPatch) -> None:
    seen: list[tuple[np.ndarray, np.ndarray]] = []
    original = RebalancedCrossEntropy.prepare

    def spy(self: RebalancedCrossEntropy, train_rgb: torch.Tensor) -> None:
        original(self, train_rgb)
        seen.append((rows_array(train_rgb), self.bin_weights.double().cpu().numpy()))

    monkeypatch.setattr(RebalancedCrossEntropy, "prepare", spy)
    exp = parse_experiment(GRID)
    (outcome,), _ = run_grid(exp, tracking_uri)
    assert outcome.failure is None
    data = SOURCES.build(exp.data.source, exp.data.options)
    rest, _ = carve_test(data, exp.test_fraction, exp.seed)
    pool = data.subset(rest)
    folds = SPLITTERS.build("kfold", {"k": 2}).split(pool, exp.seed)
    assert len(seen) == len(folds)
    for fold, (rows, weights) in zip(folds, seen, strict=True):
        np.testing.assert_array_equal(rows, pool.images[fold.train])
        np.testing.assert_allclose(weights, reference(pool.images[fold.train], 0.3)[1], rtol=RTOL, atol=0)
