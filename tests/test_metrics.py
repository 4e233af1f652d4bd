"""Metrics against skimage, numpy brute force and the behaviour colorization metrics must show on real photos."""

from __future__ import annotations

import numpy as np
import pydantic
import pytest
import torch
from conftest import PHOTOS
from PIL import Image
from skimage.metrics import peak_signal_noise_ratio, structural_similarity

from colorbench.color import lab_to_rgb, nearest_bins, rgb_to_lab
from colorbench.metrics import COLOURFUL, METRICS, ColorizationMetrics, Metric, colorfulness, decoded, metric_spec, psnr, ssim
from colorbench.search.space import ObjectiveConfig, objective_choices

# ab bins on a plain 10-unit lattice: same role as ab_gamut_bins() without its one-off ~10 s gamut scan
CENTRES = torch.cartesian_prod(torch.arange(-110.0, 111.0, 10.0), torch.arange(-110.0, 111.0, 10.0))


@pytest.fixture(scope="module")
def rgb() -> torch.Tensor:
    """Six real photos, 64x64, (6,3,64,64) in [0,1]."""
    files = PHOTOS[:6]
    arrays = [np.asarray(Image.open(f).convert("RGB").resize((64, 64), Image.BILINEAR), dtype=np.float32) / 255.0 for f in files]
    return torch.from_numpy(np.stack(arrays)).permute(0, 3, 1, 2).contiguous()


@pytest.fixture(scope="module")
def lab(rgb: torch.Tensor) -> torch.Tensor:
    return rgb_to_lab(rgb)


@pytest.fixture(scope="module")
def wrong_ab(lab: torch.Tensor) -> torch.Tensor:
    """A plausible but wrong prediction: another photo's colours, shrunk and jittered (errors from 0 to beyond 150)."""
    gen = torch.Generator().manual_seed(0)
    return 0.7 * lab[:, 1:].roll(1, 0) + 5.0 * torch.randn(lab[:, 1:].shape, generator=gen)


def _np(x: torch.Tensor) -> np.ndarray:
    return x.permute(0, 2, 3, 1).double().numpy()


def _pairs(rgb: torch.Tensor) -> list[tuple[torch.Tensor, torch.Tensor]]:
    gen = torch.Generator().manual_seed(1)
    noisy = (rgb + 0.05 * torch.randn(rgb.shape, generator=gen)).clamp(0, 1)
    return [(noisy, rgb), (rgb.roll(1, 0), rgb)]


def test_psnr_matches_skimage(rgb: torch.Tensor) -> None:
    for pred, true in _pairs(rgb):
        ours = psnr(pred, true)
        ref = [peak_signal_noise_ratio(t, p, data_range=1) for p, t in zip(_np(pred), _np(true))]
        np.testing.assert_allclose(ours.numpy(), ref, atol=1e-6)


def test_ssim_matches_skimage(rgb: torch.Tensor) -> None:
    for pred, true in _pairs(rgb):
        ours = ssim(pred, true)
        ref = [
            structural_similarity(p, t, channel_axis=-1, data_range=1, gaussian_weights=True, sigma=1.5, use_sample_covariance=False)
            for p, t in zip(_np(pred), _np(true))
        ]
        np.testing.assert_allclose(ours.numpy(), ref, atol=1e-3)


def test_colorfulness_matches_numpy_and_gray_is_zero(rgb: torch.Tensor) -> None:
    x = _np(rgb) * 255.0
    rg = x[..., 0] - x[..., 1]
    yb = 0.5 * (x[..., 0] + x[..., 1]) - x[..., 2]
    sigma = np.sqrt(rg.reshape(len(x), -1).var(1) + yb.reshape(len(x), -1).var(1))
    mu = np.sqrt(rg.reshape(len(x), -1).mean(1) ** 2 + yb.reshape(len(x), -1).mean(1) ** 2)
    np.testing.assert_allclose(colorfulness(rgb).numpy(), sigma + 0.3 * mu, rtol=1e-6)
    gray = rgb.mean(1, keepdim=True).expand(-1, 3, -1, -1)
    np.testing.assert_allclose(colorfulness(gray).numpy(), 0.0, atol=1e-6)


def test_colourfulness_ratio_per_image_is_each_images_own_and_empty_for_a_nearly_gray_truth(lab: torch.Tensor, wrong_ab: torch.Tensor) -> None:
    truth = lab[:, 1:].clone()
    truth[0] *= 0.05  # a nearly gray photo: colourfulness far below COLOURFUL
    m = ColorizationMetrics(CENTRES)
    m.update(lab[:, :1], wrong_ab, truth)
    rows = m.per_image()
    x = _np(torch.stack([lab_to_rgb(torch.cat([lab[:, :1], ab], 1)) for ab in (wrong_ab, truth)]).flatten(0, 1)) * 255.0
    rg, yb = x[..., 0] - x[..., 1], 0.5 * (x[..., 0] + x[..., 1]) - x[..., 2]
    hasler = np.hypot(rg.std((1, 2)), yb.std((1, 2))) + 0.3 * np.hypot(rg.mean((1, 2)), yb.mean((1, 2)))  # numpy, by hand
    pred, true = hasler[: len(lab)], hasler[len(lab) :]
    assert true[0] < COLOURFUL <= true[1:].min()
    expected = np.where(true >= COLOURFUL, pred / true, np.nan)
    np.testing.assert_allclose([r["colorfulness_ratio"] for r in rows], expected, rtol=1e-6)
    assert m.compute()["colorfulness_ratio"] == pytest.approx(pred.mean() / true.mean(), rel=1e-6)  # the set's: ratio of means


def test_perfect_prediction(lab: torch.Tensor) -> None:
    m = ColorizationMetrics(CENTRES)
    m.update(lab[:, :1], lab[:, 1:], lab[:, 1:])
    out = m.compute()
    assert out["ab_rmse"] == 0.0
    assert out["auc"] == pytest.approx(100.0)
    assert out["auc_rebalanced"] == pytest.approx(100.0)
    assert out["colorfulness_ratio"] == pytest.approx(1.0)
    assert all(row["auc"] == pytest.approx(100.0) and row["ab_rmse"] == 0.0 for row in m.per_image())


def test_gray_prediction_is_punished(lab: torch.Tensor) -> None:
    m = ColorizationMetrics(CENTRES)
    m.update(lab[:, :1], torch.zeros_like(lab[:, 1:]), lab[:, 1:])
    out = m.compute()
    assert out["colorfulness_ratio"] < 0.3
    assert out["auc"] < 100.0
    assert out["auc_rebalanced"] < out["auc"]
    assert out["ab_rmse"] > 0.0


def test_two_batches_equal_one_batch(lab: torch.Tensor, wrong_ab: torch.Tensor) -> None:
    whole = ColorizationMetrics(CENTRES)
    whole.update(lab[:, :1], wrong_ab, lab[:, 1:])
    split = ColorizationMetrics(CENTRES)
    for part in (slice(0, 2), slice(2, None)):  # unequal halves: per-batch averaging would differ
        split.update(lab[part, :1], wrong_ab[part], lab[part, 1:])
    a, b = whole.compute(), split.compute()
    assert a.keys() == b.keys()
    for k in a:
        assert b[k] == pytest.approx(a[k], rel=1e-9), k
    assert len(split.per_image()) == len(lab)
    for ra, rb in zip(whole.per_image(), split.per_image()):
        assert rb == pytest.approx(ra, rel=1e-9)


def _brute_auc(err: np.ndarray, thresholds: int) -> float:
    return 100.0 * float(np.mean([(err <= t).mean() for t in range(thresholds + 1)]))


@pytest.mark.parametrize("thresholds", [150, 20])
def test_auc_matches_brute_force(lab: torch.Tensor, wrong_ab: torch.Tensor, thresholds: int) -> None:
    m = ColorizationMetrics(CENTRES, thresholds=thresholds)
    m.update(lab[:3, :1], wrong_ab[:3], lab[:3, 1:])
    m.update(lab[3:, :1], wrong_ab[3:], lab[3:, 1:])
    out = m.compute()

    err = np.sqrt(((wrong_ab.double() - lab[:, 1:].double()) ** 2).sum(1).numpy())
    assert err.max() > 20  # the overflow bin is exercised at thresholds=20 (at 150 by the integer-error test)
    assert out["auc"] == pytest.approx(_brute_auc(err.ravel(), thresholds), abs=1e-9)
    bins = nearest_bins(lab[:, 1:], CENTRES).numpy()
    per_bin = [_brute_auc(err[bins == q], thresholds) for q in np.unique(bins)]
    assert out["auc_rebalanced"] == pytest.approx(float(np.mean(per_bin)), abs=1e-9)
    for i, row in enumerate(m.per_image()):
        assert row["auc"] == pytest.approx(_brute_auc(err[i].ravel(), thresholds), abs=1e-9)
        assert row["ab_rmse"] == pytest.approx(float(np.sqrt((err[i] ** 2).mean())), rel=1e-9)
    assert out["ab_rmse"] == pytest.approx(float(np.sqrt((err**2).mean())), rel=1e-9)


def test_auc_integer_errors_count_at_their_threshold() -> None:
    # exact errors 0, 5 (3-4-5 triangle), 150 and 200 over a 16x16 gray-truth image: e <= t counts from t = e on
    ab_pred = torch.tensor([[0.0, 0.0], [3.0, 4.0], [90.0, 120.0], [120.0, 160.0]]).repeat(64, 1).T.reshape(1, 2, 16, 16)
    m = ColorizationMetrics(CENTRES)
    m.update(torch.full((1, 1, 16, 16), 50.0), ab_pred, torch.zeros_like(ab_pred))
    out = m.compute()
    assert out["auc"] == pytest.approx(100.0 * (151 + 146 + 1 + 0) / (4 * 151))
    assert out["ab_rmse"] == pytest.approx(np.sqrt((0 + 25 + 150**2 + 200**2) / 4))


def test_compute_without_update_raises() -> None:
    with pytest.raises(ValueError, match="update"):
        ColorizationMetrics(CENTRES).compute()


def test_search_objectives_take_their_direction_from_the_metric_table() -> None:
    assert objective_choices() == [f"val_{name}" for name in METRICS]
    assert ObjectiveConfig(metric="val_psnr").direction == "maximize" and ObjectiveConfig(metric="val_ab_rmse").direction == "minimize"
    with pytest.raises(pydantic.ValidationError, match="val_auc: higher is better, so direction must be maximize"):
        ObjectiveConfig(metric="val_auc", direction="minimize")
    with pytest.raises(pydantic.ValidationError, match="val_colorfulness_ratio is best at 1; state direction"):
        ObjectiveConfig(metric="val_colorfulness_ratio")
    assert ObjectiveConfig(metric="val_colorfulness_ratio", direction="maximize").direction == "maximize"


def test_metric_names_must_fit_mlflow_and_the_decoding_suffix() -> None:
    with pytest.raises(ValueError, match="lower-case letters, digits and _"):
        Metric("psnr.x", "higher", "a dot would read as a decoding")
    with pytest.raises(ValueError, match="better must be one of higher, lower, one"):
        Metric("psnr2", "up", "no such direction")
    assert decoded("psnr", "default") == "psnr" and decoded("psnr", "mode") == "psnr.mode"
    assert metric_spec("auc.T1") is METRICS["auc"] and metric_spec("psnr_mode") is None
