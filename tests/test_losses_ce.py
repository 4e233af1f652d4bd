"""Cross-entropy objectives `ce` and `ce-rebalanced`: bins, soft targets, decoding, prior, rebalancing, config, a grid."""

from __future__ import annotations

import math

import mlflow
import pandas as pd
import pytest
import torch

from colorbench.color import nearest_bins
from colorbench.config import expand
from colorbench.errors import ConfigError
from colorbench.images import lab_batch
from colorbench.losses import LOSSES, CrossEntropy, RebalancedCrossEntropy
from colorbench.resolve import parse_experiment
from colorbench.runner import run_grid


def images(seed: int, n: int = 6, size: int = 8) -> torch.Tensor:
    """Random uint8 images (n,size,size,3) biased towards one colour, so the prior is far from uniform."""
    g = torch.Generator().manual_seed(seed)
    rgb = torch.randint(0, 256, (n, size, size, 3), generator=g)
    rgb[: n // 2 + 1] = rgb[: n // 2 + 1] // 8 + torch.tensor([180, 60, 40])  # many reddish pixels
    return rgb.to(torch.uint8)


def soft_target(objective: CrossEntropy, ab: torch.Tensor) -> torch.Tensor:
    """The dense soft target the loss uses, read off its gradient at zero logits: d loss / d z = (1/Q - t) / pixels."""
    z = torch.zeros(ab.shape[0], objective.out_channels, *ab.shape[2:], requires_grad=True)
    objective(z, ab).backward()
    return 1 / objective.out_channels - z.grad * ab[:, :1].numel()


@pytest.mark.parametrize(("rim", "bins"), [(False, 261), (True, 322)])
def test_head_width_is_the_number_of_bins(rim: bool, bins: int) -> None:
    for name in ("ce", "ce-rebalanced"):
        assert LOSSES.build(name, {"rim": rim}).out_channels == bins


def test_soft_target_sums_to_one_over_the_nearest_bins() -> None:
    objective = LOSSES.build("ce")
    centres = objective.centres
    ab = torch.tensor([[13.0, -27.0], [0.0, 0.0], [41.0, 38.0]]).T.reshape(1, 2, 1, 3)
    t = soft_target(objective, ab)
    assert torch.allclose(t.sum(1), torch.ones(1, 3), atol=1e-5)
    assert ((t > 1e-4).sum(1) == 5).all()
    assert torch.equal(t.argmax(1), nearest_bins(ab, centres))
    # at a bin centre the 4 lattice neighbours (distance 10, sigma 5) each get e^-2 of the centre's weight
    centre = t[0, :, 0, 1]
    assert centre.max().item() == pytest.approx(1 / (1 + 4 * math.exp(-2)), abs=1e-4)
    assert torch.allclose(centre[centre > 1e-4].sort().values[:4], centre.max() * math.exp(-2), atol=1e-4)
    one_hot = soft_target(LOSSES.build("ce", {"neighbours": 1}), ab)
    assert torch.allclose(one_hot.amax(1), torch.ones(1, 3), atol=1e-5)


def test_one_hot_logits_decode_to_their_bin_centre() -> None:
    objective = LOSSES.build("ce", {"temperature": 0.05})
    q = 123
    z = torch.zeros(2, objective.out_channels, 3, 4)
    z[:, q] = 2.0
    centre = objective.centres[q].view(1, 2, 1, 1).expand(2, 2, 3, 4)
    assert torch.equal(objective.decode(z, "mode"), centre)
    assert torch.allclose(objective.decode(z), centre, atol=1e-2)
    assert not torch.allclose(objective.decode(z, "T1"), centre, atol=1.0)  # at T = 1 the other bins still pull
    with pytest.raises(ValueError, match="unknown decoding"):
        objective.decode(z, "median")


def test_t1_variant_is_the_probability_weighted_mean() -> None:
    objective = LOSSES.build("ce", {"rim": True})
    z = torch.randn(2, objective.out_channels, 3, 5, generator=torch.Generator().manual_seed(0)) * 3
    p = torch.softmax(z.double(), dim=1)
    expected = (p[:, :, None] * objective.centres.double()[None, :, :, None, None]).sum(1)
    assert torch.allclose(objective.decode(z, "T1").double(), expected, atol=1e-3)
    assert not torch.allclose(objective.decode(z).double(), expected, atol=1e-1)


def test_prior_is_a_function_of_the_images_passed_only() -> None:
    train = images(0)
    first, second = torch.cat([train, images(1)]), torch.cat([train, images(2)])  # differ only outside the training part
    fitted = []
    for data in (first, second):
        objective = LOSSES.build("ce-rebalanced")
        objective.prepare(data[: len(train)])
        fitted.append(objective)
    assert torch.equal(fitted[0].bin_weights, fitted[1].bin_weights)
    fitted[1].prepare(second)  # passing more images changes the prior
    assert not torch.allclose(fitted[0].bin_weights, fitted[1].bin_weights)
    fitted[1].prepare(train)  # and a new fold forgets the previous one
    assert torch.equal(fitted[0].bin_weights, fitted[1].bin_weights)


def test_rebalance_weights_are_normalised_and_favour_rare_bins() -> None:
    objective = LOSSES.build("ce-rebalanced")
    objective.prepare(images(0))
    p, w = objective.prior, objective.bin_weights
    assert p.sum().item() == pytest.approx(1.0, abs=1e-5)
    assert (p * w).sum().item() == pytest.approx(1.0, abs=1e-5)
    order = p.argsort()
    assert (w[order].diff() <= 1e-6).all()  # weights fall as the prior rises
    assert w[p.argmin()] > 1.5 * w[p.argmax()]


def test_each_pixel_takes_its_nearest_bins_weight_times_the_given_weights() -> None:
    objective = LOSSES.build("ce-rebalanced")
    objective.prepare(images(0))
    _, ab = lab_batch(images(3, n=2))
    extra = torch.rand(2, 1, *ab.shape[2:], generator=torch.Generator().manual_seed(0))
    z = torch.zeros(2, objective.out_channels, *ab.shape[2:])  # uniform prediction: per-pixel CE = log Q
    expected = math.log(objective.out_channels) * objective.bin_weights[nearest_bins(ab, objective.centres)]
    assert objective(z, ab).item() == pytest.approx(expected.mean().item(), rel=1e-5)
    assert objective(z, ab, extra).item() == pytest.approx((expected * extra[:, 0]).mean().item(), rel=1e-5)


def test_rebalancing_needs_prepare() -> None:
    _, ab = lab_batch(images(0, n=1))
    with pytest.raises(RuntimeError, match="prepare"):
        LOSSES.build("ce-rebalanced")(torch.zeros(1, 261, *ab.shape[2:]), ab)


def test_lambda_one_gives_unit_weights_and_plain_cross_entropy() -> None:
    objective = LOSSES.build("ce-rebalanced", {"lambda": 1})
    objective.prepare(images(0))
    assert torch.allclose(objective.bin_weights, torch.ones(objective.out_channels))
    _, ab = lab_batch(images(3, n=2))
    z = torch.randn(2, objective.out_channels, *ab.shape[2:])
    assert objective(z, ab).item() == pytest.approx(LOSSES.build("ce")(z, ab).item(), rel=1e-6)


def test_rebalanced_cross_entropy_takes_every_cross_entropy_option_after_its_own() -> None:
    assert list(LOSSES.options("ce-rebalanced")) == ["lambda", *LOSSES.options("ce")]  # declared once, on CrossEntropy
    objective = LOSSES.build("ce-rebalanced", {"lambda": 0.3, "temperature": 0.5, "rim": True})
    assert (objective.lambda_, objective.temperature, objective.out_channels) == (0.3, 0.5, LOSSES.build("ce", {"rim": True}).out_channels)
    with pytest.raises(ConfigError, match="'ce-rebalanced' has no option 'temprature' .did you mean 'temperature'"):
        LOSSES.build("ce-rebalanced", {"temprature": 0.5})


def test_loss_stride_scores_the_subsampled_grid() -> None:
    strided = RebalancedCrossEntropy(loss_stride=4)
    full = RebalancedCrossEntropy()
    for objective in (strided, full):
        objective.prepare(images(0))
    _, ab = lab_batch(images(3, n=2, size=16))
    z = torch.randn(2, strided.out_channels, 16, 16)
    extra = torch.rand(2, 1, 16, 16)
    sub = (..., slice(None, None, 4), slice(None, None, 4))
    assert strided(z, ab, extra).item() == pytest.approx(full(z[sub], ab[sub], extra[sub]).item(), rel=1e-6)
    assert strided(z, ab).item() != pytest.approx(full(z, ab).item(), rel=1e-3)
    assert strided.decode(z).shape == (2, 2, 16, 16)


def test_cross_entropy_is_trainable() -> None:
    torch.manual_seed(0)
    objective = LOSSES.build("ce-rebalanced", {"loss_stride": 2})
    objective.prepare(images(0))
    L, ab = lab_batch(images(3, n=2))
    net = torch.nn.Sequential(torch.nn.Conv2d(1, 16, 3, padding=1), torch.nn.ReLU(), torch.nn.Conv2d(16, objective.out_channels, 1))
    optimizer = torch.optim.Adam(net.parameters(), lr=1e-2)
    losses = []
    for _ in range(15):
        loss = objective(net(L / 100), ab)
        optimizer.zero_grad()
        loss.backward()
        optimizer.step()
        losses.append(loss.item())
    assert losses[-1] < 0.85 * losses[0]


def test_config_accepts_and_rejects_options(tiny_grid: dict) -> None:
    tiny_grid["grid"]["loss"] = [{"name": "ce-rebalanced", "lambda": 0.3, "temperature": 0.2}]
    cell = expand(parse_experiment(tiny_grid))[0]
    assert cell.loss.options == {
        "lambda": 0.3,
        "temperature": 0.2,
        "sigma": 5.0,
        "neighbours": 5,
        "grid": 10.0,
        "rim": False,
        "loss_stride": 1,
    }
    objective = LOSSES.build(cell.loss.name, cell.loss.options)
    assert (objective.lambda_, objective.temperature) == (0.3, 0.2)
    for bad, option in (({"lambda": 2}, "lambda"), ({"loss_stride": 0}, "loss_stride"), ({"sigma": 0}, "sigma")):
        tiny_grid["grid"]["loss"] = [{"name": "ce-rebalanced", **bad}]
        with pytest.raises(ConfigError, match=rf"grid.loss: loss 'ce-rebalanced', option '{option}'"):
            parse_experiment(tiny_grid)
    tiny_grid["grid"]["loss"] = [{"name": "ce", "lambda": 0.5}]
    with pytest.raises(ConfigError, match="has no option 'lambda'"):
        parse_experiment(tiny_grid)


def test_rebalanced_grid_logs_every_decoding(tiny_grid: dict, tracking_uri: str) -> None:
    tiny_grid["grid"]["loss"] = ["ce-rebalanced"]
    tiny_grid["grid"]["splitter"] = [{"name": "holdout", "val_fraction": 0.3}]
    tiny_grid["train"]["epochs"] = 1
    outcomes, _ = run_grid(parse_experiment(tiny_grid), tracking_uri)
    assert [o.failure for o in outcomes] == [None]
    mlflow.set_tracking_uri(tracking_uri)
    df = mlflow.search_runs(experiment_names=["tiny"])
    fold = df[df["tags.colorbench.role"] == "fold"].iloc[0]
    parent = df[df["tags.colorbench.role"] == "cell"].iloc[0]
    assert fold["params.loss.name"] == "ce-rebalanced" and fold["params.loss.lambda"] == "0.5"
    for metric in ("test_psnr", "test_psnr.mode", "test_psnr.T1", "test_auc_rebalanced.mode"):
        assert math.isfinite(fold[f"metrics.{metric}"]), metric
        assert parent[f"metrics.{metric}_mean"] == pytest.approx(fold[f"metrics.{metric}"])
    assert fold["metrics.test_psnr.mode"] != fold["metrics.test_psnr.T1"]
    assert pd.isna(fold["metrics.test_psnr_mean"]) and "metrics.test_psnr_mode" not in df  # `_mean` is only ever a fold statistic


def test_channels_last_predictions_give_the_same_loss_and_gradient() -> None:
    ab = lab_batch(torch.randint(0, 256, (2, 8, 8, 3), dtype=torch.uint8, generator=torch.Generator().manual_seed(0)))[1]
    loss = CrossEntropy()
    logits = torch.randn(2, loss.out_channels, 8, 8, generator=torch.Generator().manual_seed(1))
    values, grads = [], []
    for layout in (torch.contiguous_format, torch.channels_last):
        pred = logits.clone(memory_format=layout).requires_grad_()
        value = loss(pred, ab)
        value.backward()
        values.append(value.detach())
        grads.append(pred.grad.contiguous())
    assert torch.allclose(values[0], values[1], atol=1e-6) and torch.allclose(grads[0], grads[1], atol=1e-7)
