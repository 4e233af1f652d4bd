"""Background masks and the `bg-weighted` loss: synthetic flat/textured images, weights, config checks, a tiny grid."""

from __future__ import annotations

import runpy
import subprocess
import sys
from pathlib import Path

import mlflow
import pytest
import torch

from colorbench import cli
from colorbench.components import LOSSES, MASKS
from colorbench.errors import ConfigError
from colorbench.losses import MSE
from colorbench.resolve import parse_experiment
from colorbench.runner import run_grid

SIZE = 64
FIGURE_SCRIPT = Path(__file__).resolve().parents[1] / "experiments" / "mask_figure.py"


@LOSSES.register("test-masks-left-heavy")
class LeftHeavy(MSE):
    """MSE with its own pixel weights: 3 on the left half, 1 on the right (mean 2, deliberately not 1)."""

    def pixel_weights(self, L: torch.Tensor, ab: torch.Tensor) -> torch.Tensor:
        weights = torch.ones_like(L)
        weights[..., : L.shape[-1] // 2] = 3.0
        return weights


def half_textured(batch: int = 3, seed: int = 0) -> torch.Tensor:
    """L (B,1,H,W): 50 on the left half; on the right, 50 + 20 * Gaussian noise (a 1-px checkerboard in image 1)."""
    gen = torch.Generator().manual_seed(seed)
    L = torch.full((batch, 1, SIZE, SIZE), 50.0)
    L[..., SIZE // 2 :] += 20 * torch.randn(batch, 1, SIZE, SIZE // 2, generator=gen)
    checker = (torch.arange(SIZE)[:, None] + torch.arange(SIZE // 2)[None, :]) % 2
    L[1, 0, :, SIZE // 2 :] = 50 + 20 * checker
    return L


def halves(score: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
    """Per-image mean of the left and right halves."""
    return score[..., : SIZE // 2].mean(dim=(1, 2, 3)), score[..., SIZE // 2 :].mean(dim=(1, 2, 3))


def colorful(L: torch.Tensor) -> torch.Tensor:
    """ab (B,2,H,W): gray (0, 0) on the left half, a saturated (40, -30) on the right."""
    ab = torch.zeros(L.shape[0], 2, SIZE, SIZE)
    ab[:, 0, :, SIZE // 2 :], ab[:, 1, :, SIZE // 2 :] = 40.0, -30.0
    return ab


def test_flat_marks_the_flat_half_as_background() -> None:
    left, right = halves(MASKS.build("flat")(half_textured()))
    assert (left > 0.8).all() and (right < 0.2).all(), (left, right)


def test_saliency_marks_the_flat_half_as_background() -> None:
    L = half_textured()[[0, 2]]  # spectral residual finds periodic texture unsurprising: noise images only
    score = MASKS.build("saliency")(L)
    left, right = halves(score)
    assert score.shape == L.shape and (left > right + 0.5).all(), (left, right)


def test_saliency_works_at_any_size() -> None:
    L = torch.nn.functional.interpolate(half_textured()[[0]], size=(96, 160))  # downsampled to the working size
    score = MASKS.build("saliency", {"size": 48})(L)
    assert score.shape == L.shape and 0 <= score.min() and score.max() <= 1


def test_chroma_marks_gray_pixels_and_needs_ab() -> None:
    L = half_textured()
    left, right = halves(MASKS.build("chroma")(L, colorful(L)))
    assert (left > 0.99).all() and (right < 0.01).all()
    with pytest.raises(ConfigError, match="needs the ground-truth ab"):
        MASKS.build("chroma")(L)


@pytest.mark.parametrize("mask", ["flat", "saliency", "chroma"])
def test_weights_have_mean_one_and_down_weight_background(mask: str) -> None:
    L = half_textured()[[0, 2]]
    weights = LOSSES.build("bg-weighted", {"mask": mask, "background_weight": 0.25}).pixel_weights(L, colorful(L))
    left, right = halves(weights)
    assert torch.allclose(weights.mean(dim=(1, 2, 3)), torch.ones(2), atol=1e-5)
    assert (left < 0.5 * right).all() and weights.min() > 0


def test_background_weight_one_reproduces_the_base_loss() -> None:
    L = half_textured()
    ab, pred = colorful(L), torch.randn(3, 2, SIZE, SIZE)
    loss = LOSSES.build("bg-weighted", {"base": "mse", "background_weight": 1})
    assert loss.out_channels == 2 and loss.variants == MSE.variants
    assert loss(pred, ab, loss.pixel_weights(L, ab)).item() == pytest.approx(MSE()(pred, ab).item(), rel=1e-6)
    assert torch.equal(loss.decode(pred), MSE().decode(pred))


def test_weights_compose_with_the_base_weights_by_multiplication() -> None:
    L = half_textured()
    ab = colorful(L)
    mask_only = LOSSES.build("bg-weighted", {"mask": "chroma"}).pixel_weights(L, ab)
    composed = LOSSES.build("bg-weighted", {"base": "test-masks-left-heavy", "mask": "chroma"}).pixel_weights(L, ab)
    product = mask_only * LeftHeavy().pixel_weights(L, ab)
    assert torch.allclose(composed, product / product.mean(dim=(1, 2, 3), keepdim=True))


@pytest.mark.parametrize(
    ("options", "message"),
    [
        ({"base": "msee"}, "option 'base'.*Did you mean 'mse'"),
        ({"base": "bg-weighted"}, "cannot be its own base"),
        ({"mask": "flatt"}, "option 'mask'.*Did you mean 'flat'"),
        ({"base_options": {"lambda": 0.5}}, "loss 'mse' has no option 'lambda'"),
        ({"mask": "saliency", "mask_options": {"scale": 2}}, "mask 'saliency' has no option 'scale'"),
        ({"mask_options": {"scale": -1}}, "option 'scale'"),
        ({"background_weight": 0}, "option 'background_weight'"),
    ],
)
def test_bad_options_fail_when_the_grid_is_read(tiny_grid: dict, options: dict, message: str) -> None:
    tiny_grid["grid"]["loss"] = ["mse", {"name": "bg-weighted", **options}]
    with pytest.raises(ConfigError, match=message):
        parse_experiment(tiny_grid)


def test_resolved_config_fills_the_mask_defaults(tiny_grid: dict) -> None:
    tiny_grid["grid"]["loss"] = [{"name": "bg-weighted", "mask": "saliency", "mask_options": {"size": 32}}]
    options = parse_experiment(tiny_grid).grid.loss[0].options
    assert options["mask_options"] == {"size": 32, "sigma": 2.5, "threshold": 1.0} and options["base"] == "mse"


def test_list_shows_the_masks(capsys: pytest.CaptureFixture[str]) -> None:
    assert cli.main(["list"]) == 0
    out = capsys.readouterr().out
    assert "masks" in out and all(name in out for name in ("flat", "saliency", "chroma", "bg-weighted"))


def test_tiny_grid_end_to_end_and_figure(tiny_grid: dict, tracking_uri: str, tmp_path: Path) -> None:
    tiny_grid["train"]["epochs"] = 1
    tiny_grid["grid"]["loss"] = [{"name": "bg-weighted", "base": "mse", "mask": "saliency"}]
    tiny_grid["grid"]["splitter"] = [{"name": "holdout", "val_fraction": 0.3}]
    outcomes, _ = run_grid(parse_experiment(tiny_grid), tracking_uri)
    assert [o.failure for o in outcomes] == [None]
    mlflow.set_tracking_uri(tracking_uri)
    runs = mlflow.search_runs(experiment_names=["tiny"])
    assert set(runs["status"]) == {"FINISHED"} and set(runs["tags.colorbench.role"]) == {"cell", "fold"} and len(runs) == 2
    weighted = runs[runs["tags.colorbench.role"] == "fold"].iloc[0]
    assert weighted["params.loss.mask"] == "saliency" and weighted["params.loss.mask_options.size"] == "64"
    assert weighted["metrics.test_loss"] > 0

    out = runpy.run_path(str(FIGURE_SCRIPT))["main"](
        ["--experiment", "tiny", "--tracking-uri", tracking_uri, "--out", str(tmp_path / "m.png")]
    )
    assert out.stat().st_size > 10_000


IMPORT_PROBE = """
import sys
from colorbench.losses import LOSSES
import colorbench.checkpoints
heavy = sorted(({name.split(".")[0] for name in sys.modules} & {"optuna", "sklearn"}) | ({"colorbench.components"} & set(sys.modules)))
print(" ".join(sorted(LOSSES)), "|", " ".join(heavy))
"""


def test_every_loss_registers_whatever_is_imported_first_and_loading_a_model_stays_light() -> None:
    """In a fresh process: the losses module alone lists all six losses (bg-weighted and the hybrids too), and the checkpoint loader pulls in
    neither Optuna nor scikit-learn."""
    done = subprocess.run([sys.executable, "-c", IMPORT_PROBE], capture_output=True, text=True, check=False)
    assert done.returncode == 0, done.stderr
    losses, heavy = done.stdout.strip().split("|")
    assert losses.split() == ["bg-weighted", "ce", "ce-mse", "ce-rebalanced", "mse", "rebalanced-mse"] and heavy.split() == []
