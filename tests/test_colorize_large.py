"""Photos of any size: full-resolution composition in row strips, and photos that cannot be processed skipped by name."""

from __future__ import annotations

from pathlib import Path

import numpy as np
import pytest
import torch
import torch.nn.functional as F
from PIL import Image

import colorbench
from colorbench import colorize
from colorbench.backbones import build_model
from colorbench.color import lab_to_rgb, rgb_to_lab
from colorbench.data import builtin_photo_files, lab_batch, open_rgb


@pytest.fixture(scope="module")
def colorizer(tmp_path_factory: pytest.TempPathFactory) -> colorize.Colorizer:
    """An MSE model whose head is biased towards saturated blue-green, so that many pixels leave the sRGB gamut."""
    torch.manual_seed(0)
    model = build_model("resnet18-6", {}, 2)
    head = [m for m in model.modules() if isinstance(m, torch.nn.Conv2d)][-1]
    with torch.no_grad():
        head.bias.copy_(torch.tensor([-0.9, -0.8]))
    path = tmp_path_factory.mktemp("model") / "checkpoint.pt"
    meta = {"backbone": {"name": "resnet18-6", "options": {}}, "loss": {"name": "mse", "options": {}}, "image_size": 32}
    torch.save({"state_dict": model.state_dict(), **meta}, path)
    return colorbench.load(str(path), device="cpu")


def old_keeping_L(L: torch.Tensor, ab: torch.Tensor, steps: int = 8) -> torch.Tensor:
    """The whole-image gamut bisection colorbench used before (every pixel bisected when any is out of gamut)."""

    def fits(scale: torch.Tensor) -> torch.Tensor:
        lab = torch.cat([L, ab * scale], dim=1)
        return (rgb_to_lab(lab_to_rgb(lab)) - lab).abs().amax(dim=1, keepdim=True) < colorize.GAMUT_TOLERANCE

    lo, hi = fits(torch.ones_like(L)).float(), torch.ones_like(L)
    for _ in range(steps):
        mid = (lo + hi) / 2
        ok = fits(mid)
        lo, hi = torch.where(ok, mid, lo), torch.where(ok, hi, mid)
    return lab_to_rgb(torch.cat([L, ab * lo], dim=1))


@torch.no_grad()
def whole_image(colorizer: colorize.Colorizer, rgb: np.ndarray) -> tuple[torch.Tensor, np.ndarray, float]:
    """The whole-image composition colorbench used before strips: the model's ab, the colorized photo, and the share of its
    pixels out of the sRGB gamut."""
    L = lab_batch(torch.from_numpy(rgb)[None])[0]
    small = F.interpolate(L, size=(colorizer.size, colorizer.size), mode="bilinear", antialias=True)
    ab = colorizer.objective.decode(colorizer.model(small)).float()
    ab_full = F.interpolate(ab, size=L.shape[-2:], mode="bilinear", align_corners=False)
    lab = torch.cat([L, ab_full], dim=1)
    outside = ((rgb_to_lab(lab_to_rgb(lab)) - lab).abs().amax(dim=1) >= colorize.GAMUT_TOLERANCE).float().mean().item()
    return ab[0], colorize.to_uint8(old_keeping_L(L, ab_full))[0], outside


def test_composition_in_strips_equals_the_whole_image_composition(colorizer: colorize.Colorizer, monkeypatch: pytest.MonkeyPatch) -> None:
    rgb = np.array(open_rgb(builtin_photo_files()[0]).resize((641, 459)))
    ab_whole, expected, outside = whole_image(colorizer, rgb)
    assert outside > 0.05  # the gamut bisection is exercised
    monkeypatch.setattr(colorize, "STRIP_PIXELS", 6000)  # 9 rows a strip: 51 strips
    read, write, strip_out = colorize.array_rows(rgb)
    ab = colorizer.predict_ab([(read, *rgb.shape[:2])])[0]
    colorizer.compose(read, write, *rgb.shape[:2], ab)
    torch.testing.assert_close(ab, ab_whole, atol=1e-3, rtol=0)  # float rounding of the separable resize, not more
    diff = np.abs(strip_out.astype(int) - expected.astype(int))
    assert diff.max() <= 1 and (diff == 0).mean() > 0.999
    assert np.array_equal(colorizer.colorize(rgb), strip_out)


def test_a_photo_too_large_to_decode_is_skipped_by_name_and_the_others_are_written(
    colorizer: colorize.Colorizer, tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    photos = tmp_path / "in"
    photos.mkdir()
    source = open_rgb(builtin_photo_files()[1])
    source.resize((120, 90)).save(photos / "a.png")
    source.resize((400, 300)).save(photos / "huge.jpg")
    (photos / "broken.jpg").write_bytes(b"\xff\xd8 truncated")
    source.resize((90, 120)).save(photos / "z.jpg")
    monkeypatch.setattr(Image, "MAX_IMAGE_PIXELS", 20_000)  # PIL refuses above twice this: huge.jpg has 120,000 pixels
    written, failed = colorize.colorize_files(colorizer, [photos], tmp_path / "out", compare=True)
    assert [p.name for p in written] == ["a.png", "z.png"]
    assert [Path(f).name for f, _ in failed] == ["broken.jpg", "huge.jpg"] and "DecompressionBombError" in failed[1][1]
    assert Image.open(tmp_path / "out" / "z.png").size == (90, 120) and Image.open(tmp_path / "out" / "a_compare.png").size == (360, 90)
