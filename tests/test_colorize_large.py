"""Photos of any size: full-resolution composition in row strips against scikit-image, PNGs written a strip at a time, and
photos that cannot be processed skipped by name."""

from __future__ import annotations

from pathlib import Path

import numpy as np
import pytest
import torch
from PIL import Image
from skimage import color as skcolor

import colorbench
from colorbench import colorize, compose
from colorbench.backbones import build_model
from colorbench.data import builtin_photo_files, open_rgb


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


@pytest.fixture(scope="module")
def rgb() -> np.ndarray:
    return np.array(open_rgb(builtin_photo_files()[0]).resize((641, 459)))


def test_lightness_from_tables_equals_scikit_image(rgb: np.ndarray) -> None:
    assert np.abs(compose.lightness(rgb).numpy() - skcolor.rgb2lab(rgb)[..., 0]).max() < 0.01
    gray = rgb[..., 1]
    assert np.abs(compose.lightness(gray).numpy() - skcolor.rgb2lab(np.dstack([gray] * 3))[..., 0]).max() < 1e-4


def test_in_gamut_colours_convert_as_scikit_image_does(rgb: np.ndarray) -> None:
    lab = skcolor.rgb2lab(rgb).astype(np.float32)
    lab[..., 1:] *= 0.5  # less chroma: every colour stays inside the gamut
    expected = (skcolor.lab2rgb(lab) * 255).round()
    out = compose.colour(torch.from_numpy(lab[..., 0]), torch.from_numpy(lab[..., 1:]).permute(2, 0, 1))
    assert np.abs(out - expected).max() <= 1 and (out == expected).mean() > 0.99
    gray = (skcolor.lab2rgb(np.dstack([skcolor.rgb2lab(rgb)[..., 0], np.zeros(rgb.shape[:2] + (2,))])) * 255).round()
    assert np.abs(compose.gray(compose.lightness(rgb)) - gray).max() <= 1


def test_out_of_gamut_colours_keep_lightness_and_hue_and_lose_just_enough_chroma(rgb: np.ndarray) -> None:
    lab = skcolor.rgb2lab(rgb)
    L, ab = torch.from_numpy(lab[..., 0]).float(), torch.from_numpy(lab[..., 1:] * 3).permute(2, 0, 1).float()
    linear = np.stack([c.numpy() for c in compose.linear_from_lab(L, ab[0], ab[1])])
    outside = ((linear < -0.01) | (linear > 1.01)).any(0)  # clearly outside, beyond 8-bit rounding
    assert outside.mean() > 0.2  # the bisection is exercised
    out = skcolor.rgb2lab(compose.colour(L, ab))
    assert np.percentile(np.abs(out[..., 0] - lab[..., 0]), 99) < 0.7  # L kept, up to 8-bit rounding
    chroma_in, chroma_out = np.hypot(*(lab[..., 1:] * 3).transpose(2, 0, 1)), np.hypot(out[..., 1], out[..., 2])
    assert (chroma_out[outside] < chroma_in[outside]).all()
    coloured = outside & (chroma_out > 10)
    hue_error = np.angle(np.exp(1j * (np.arctan2(out[..., 2], out[..., 1]) - np.arctan2(lab[..., 2], lab[..., 1]))))[coloured]
    assert np.percentile(np.abs(hue_error), 95) < 0.05
    # just enough: 6 bisection steps (2.3 %) more chroma than kept (read back from 8 bits) would leave the gamut
    scale = chroma_out[coloured] / chroma_in[coloured] + 6 / 2**compose.GAMUT_STEPS
    more = [c.numpy() for c in compose.linear_from_lab(L[coloured], ab[0][coloured] * torch.from_numpy(scale).float(), ab[1][coloured] * torch.from_numpy(scale).float())]
    assert ((np.stack(more) < -compose.GAMUT_TOLERANCE) | (np.stack(more) > 1 + compose.GAMUT_TOLERANCE)).any(0).mean() > 0.95


def test_composition_in_strips_equals_one_strip(colorizer: colorize.Colorizer, rgb: np.ndarray, monkeypatch: pytest.MonkeyPatch) -> None:
    whole = colorizer.colorize(rgb)
    ab_whole = colorizer.predict_ab([Image.fromarray(rgb)])[0]
    monkeypatch.setattr(compose, "STRIP_PIXELS", 6000)  # 9 rows a strip: 51 strips
    ab = colorizer.predict_ab([Image.fromarray(rgb)])[0]
    torch.testing.assert_close(ab, ab_whole, atol=1e-3, rtol=0)  # float rounding of the separable resize, not more
    diff = np.abs(colorizer.colorize(rgb).astype(int) - whole)
    assert diff.max() <= 1 and (diff == 0).mean() > 0.999


def test_png_written_in_strips_reads_back_exactly(colorizer: colorize.Colorizer, rgb: np.ndarray, tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setattr(compose, "STRIP_PIXELS", 6000)
    Image.fromarray(rgb).save(tmp_path / "photo.png")
    Image.fromarray(rgb).convert("L").save(tmp_path / "scan.png")
    written, failed = colorize.colorize_files(colorizer, [tmp_path / "photo.png", tmp_path / "scan.png"], tmp_path / "out", compare=True)
    assert failed == [] and len(written) == 2
    out = np.asarray(Image.open(tmp_path / "out" / "photo.png"))
    assert np.array_equal(out, colorizer.colorize(rgb))
    panel = np.asarray(Image.open(tmp_path / "out" / "photo_compare.png"))
    assert np.array_equal(panel[:, rgb.shape[1] : 2 * rgb.shape[1]], out) and np.array_equal(panel[:, 2 * rgb.shape[1] :], rgb)
    assert np.array_equal(panel[:, : rgb.shape[1]], colorize.gray_image(rgb))
    scan = np.asarray(Image.open(tmp_path / "scan.png"))
    assert np.array_equal(np.asarray(Image.open(tmp_path / "out" / "scan.png")), colorizer.colorize(scan))
    with pytest.raises(ValueError, match="expected rows from 0"), compose.png_rows(tmp_path / "broken.png", 4, 4) as write:
        write(2, 4, np.zeros((2, 4, 3), np.uint8))
    assert not (tmp_path / "broken.png").exists()


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
