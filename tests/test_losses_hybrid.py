"""The hybrid objectives `ce-mse` and `rebalanced-mse` against numpy transcriptions of their definitions, on real photos.

- ce-mse = ce-rebalanced + mse_weight * mean(((annealed mean at T) - ab)^2 / 110^2 over a, b), the annealed mean being
  softmax(logits / T) @ centres, differentiable through the softmax.
- rebalanced-mse = mean over pixels of w[nearest bin of the target ab] * mean(((head - ab / 110)^2 over a, b), w being
  ce-rebalanced's bin weights of the training fold (the reference's weights come from skimage's Lab in float64).
"""

from __future__ import annotations

import numpy as np
import pytest
import torch
from test_rebalancing_reference import reference

from colorbench.color import ab_gamut_bins
from colorbench.data import SOURCES
from colorbench.errors import ConfigError
from colorbench.images import lab_batch
from colorbench.losses import LOSSES
from colorbench.registry import Registry

RTOL = 1e-5  # float32 in the loss vs float64 here


@pytest.fixture(scope="module")
def photos() -> torch.Tensor:
    """The bundled real photos at 16 px: uint8 (N,16,16,3)."""
    return torch.from_numpy(SOURCES.build("builtin", {"image_size": 16, "crops_per_photo": 1}).images)


def np_log_softmax(z: np.ndarray) -> np.ndarray:
    z = z - z.max(1, keepdims=True)
    return z - np.log(np.exp(z).sum(1, keepdims=True))


def np_ce_rebalanced(logits: np.ndarray, ab: np.ndarray, centres: np.ndarray, weights: np.ndarray) -> float:
    """Soft-encoded (5 nearest bins, Gaussian sigma 5) cross-entropy, each pixel times its nearest bin's weight, mean over pixels."""
    a = ab.transpose(0, 2, 3, 1).reshape(-1, 2)
    z = logits.transpose(0, 2, 3, 1).reshape(-1, len(centres))
    d2 = ((a[:, None] - centres[None]) ** 2).sum(-1)
    near = np.argsort(d2, axis=1, kind="stable")[:, :5]
    g = np.exp(-np.take_along_axis(d2, near, 1) / (2 * 5.0**2))
    soft = g / g.sum(1, keepdims=True)
    per_pixel = -(soft * np.take_along_axis(np_log_softmax(z), near, 1)).sum(1)
    return float((per_pixel * weights[near[:, 0]]).mean())


def np_annealed_mean(logits: np.ndarray, centres: np.ndarray, t: float) -> np.ndarray:
    p = np.exp(np_log_softmax(logits / t))
    return np.einsum("bqhw,qc->bchw", p, centres)


@pytest.mark.parametrize(("mse_weight", "temperature"), [(1.0, 0.38), (3.0, 0.7)])
def test_ce_mse_equals_the_reference(photos: torch.Tensor, mse_weight: float, temperature: float) -> None:
    train, scored = photos[:5], photos[5:7]
    objective = LOSSES.build("ce-mse", {"mse_weight": mse_weight, "temperature": temperature, "lambda": 0.3})
    objective.prepare(train)
    _, ab = lab_batch(scored)
    logits = torch.randn(len(scored), objective.out_channels, 16, 16, generator=torch.Generator().manual_seed(1)) * 3
    centres = ab_gamut_bins().double().numpy()
    weights = reference(train.numpy(), 0.3)[1]
    z, target = logits.double().numpy(), ab.double().numpy()
    mse = (((np_annealed_mean(z, centres, temperature) - target) / 110.0) ** 2).mean()
    expected = np_ce_rebalanced(z, target, centres, weights) + mse_weight * mse
    assert objective(logits, ab).item() == pytest.approx(expected, rel=RTOL)
    plain = LOSSES.build("ce-rebalanced", {"temperature": temperature, "lambda": 0.3})
    plain.prepare(train)
    assert objective(logits, ab).item() - plain(logits, ab).item() == pytest.approx(mse_weight * mse, rel=1e-4)


def test_ce_mse_regression_term_trains_through_the_softmax(photos: torch.Tensor) -> None:
    """The gradient of the hybrid minus ce-rebalanced's is mse_weight times the MSE term's, checked by a central finite difference."""
    train, scored = photos[:5], photos[5:6]
    _, ab = lab_batch(scored)
    hybrid, plain = LOSSES.build("ce-mse", {"mse_weight": 2.0}), LOSSES.build("ce-rebalanced")
    hybrid.prepare(train)
    plain.prepare(train)
    logits = torch.randn(1, hybrid.out_channels, 16, 16, generator=torch.Generator().manual_seed(2)) * 3
    grads = []
    for objective in (hybrid, plain):
        z = logits.clone().requires_grad_(True)
        objective(z, ab).backward()
        grads.append(z.grad)
    extra = grads[0] - grads[1]
    assert extra.abs().max() > 0, "the regression term passed no gradient to the logits"
    centres = ab_gamut_bins().double().numpy()
    q, y, x = np.unravel_index(int(extra.abs().argmax()), extra.shape[1:])
    z, target, h = logits.double().numpy(), ab.double().numpy(), 1e-4

    def mse(zz: np.ndarray) -> float:
        return float((((np_annealed_mean(zz, centres, 0.38) - target) / 110.0) ** 2).mean())

    up, down = z.copy(), z.copy()
    up[0, q, y, x] += h
    down[0, q, y, x] -= h
    assert extra[0, q, y, x].item() == pytest.approx(2.0 * (mse(up) - mse(down)) / (2 * h), rel=1e-3)


def test_ce_mse_options_extend_ce_rebalanced_and_refuse_the_mode() -> None:
    hybrid, plain = Registry.options(LOSSES, "ce-mse"), Registry.options(LOSSES, "ce-rebalanced")
    assert list(hybrid) == ["mse_weight", *plain]
    assert {k: p.default for k, p in hybrid.items() if k in plain} == {k: p.default for k, p in plain.items()}
    built = LOSSES.build("ce-mse", {"lambda": 0.2, "grid": 20.0, "mse_weight": 0.5})
    assert (built.lambda_, built.mse_weight, built.out_channels) == (0.2, 0.5, len(ab_gamut_bins(20.0)))
    with pytest.raises(ConfigError, match="temperature > 0"):
        LOSSES.build("ce-mse", {"temperature": 0})
    with pytest.raises(ConfigError, match="mse_weight"):
        LOSSES.build("ce-mse", {"mse_weight": -1})


@pytest.mark.parametrize("lam", [0.5, 0.2])
def test_rebalanced_mse_equals_the_reference(photos: torch.Tensor, lam: float) -> None:
    train, scored = photos[:5], photos[5:7]
    objective = LOSSES.build("rebalanced-mse", {"lambda": lam})
    objective.prepare(train)
    _, ab = lab_batch(scored)
    pred = torch.randn(len(scored), 2, 16, 16, generator=torch.Generator().manual_seed(3)) * 0.3
    centres = ab_gamut_bins().double().numpy()
    weights = reference(train.numpy(), lam)[1]
    target = ab.double().numpy()
    nearest = ((target.transpose(0, 2, 3, 1)[..., None, :] - centres) ** 2).sum(-1).argmin(-1)  # (B,H,W)
    per_pixel = ((pred.double().numpy() - target / 110.0) ** 2).mean(1)
    expected = (per_pixel * weights[nearest]).mean()
    assert objective(pred, ab).item() == pytest.approx(expected, rel=RTOL)
    assert objective(pred, ab).item() != pytest.approx(LOSSES.build("mse")(pred, ab).item(), rel=1e-3), "the weights changed nothing"
    pixel = torch.rand(len(scored), 1, 16, 16, generator=torch.Generator().manual_seed(4)) + 0.5
    assert objective(pred, ab, pixel).item() == pytest.approx((per_pixel * weights[nearest] * pixel[:, 0].double().numpy()).mean(), rel=RTOL)


def test_rebalanced_mse_needs_its_prior_and_decodes_like_mse(photos: torch.Tensor) -> None:
    objective = LOSSES.build("rebalanced-mse")
    pred = torch.randn(1, 2, 4, 4)
    with pytest.raises(RuntimeError, match="prepare"):
        objective(pred, torch.zeros(1, 2, 4, 4))
    assert torch.equal(objective.decode(pred), LOSSES.build("mse").decode(pred))
    objective.tune(1.5)
    assert torch.allclose(objective.decode(pred), pred * 110 * 1.5)


def test_list_shows_the_hybrids_with_their_options() -> None:
    rows = {name: options for name, options, _ in LOSSES.describe()}
    assert rows["ce-mse"] == "mse_weight=1.0, lambda=0.5, temperature=0.38, sigma=5.0, neighbours=5, grid=10.0, rim=False, loss_stride=1"
    assert rows["rebalanced-mse"] == "lambda=0.5, grid=10.0, rim=False"
    assert LOSSES.label("ce-mse", LOSSES.validate("ce-mse", {"mse_weight": 2.0, "lambda": 0.3})) == "ce-mse(mse_weight=2.0,lambda=0.3)"
