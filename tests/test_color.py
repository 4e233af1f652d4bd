"""colorbench.color against scikit-image and brute force."""

from __future__ import annotations

import warnings

import numpy as np
import pytest
import skimage.color
import torch
from conftest import PHOTOS, SHARED_DATA
from PIL import Image

from colorbench import color
from colorbench.color import ab_gamut_bins, annealed_mean, lab_to_rgb, nearest_bins, rgb_to_lab, soft_encode, softmax_channels

DEVICES = ["cpu"] + (["cuda"] if torch.cuda.is_available() else [])


@pytest.fixture(scope="module")
def photos() -> np.ndarray:
    """Four of the real photos the dependencies bundle, uint8 (4,256,256,3)."""
    return np.stack([np.asarray(Image.open(f).convert("RGB").resize((256, 256))) for f in PHOTOS[:4]])


def to_tensor(images: np.ndarray, dtype: torch.dtype = torch.float32, device: str = "cpu") -> torch.Tensor:
    """(N,H,W,C) array -> (N,C,H,W) tensor."""
    return torch.from_numpy(np.ascontiguousarray(images)).permute(0, 3, 1, 2).to(device, dtype)


def brute_knn(ab: torch.Tensor, centres: torch.Tensor, k: int) -> tuple[torch.Tensor, torch.Tensor]:
    """Squared distances and indices (N,k) of the k nearest centres of each pixel, from a dense (N,Q) distance matrix."""
    p = ab.movedim(1, -1).reshape(-1, 2)
    return ((p[:, None] - centres) ** 2).sum(-1).topk(k, dim=1, largest=False)


def assert_knn(ab: torch.Tensor, centres: torch.Tensor, idx: torch.Tensor) -> torch.Tensor:
    """idx (B,k,H,W) are the k nearest centres, nearest first (any order among equally near ones); returns brute d^2 (N,k)."""
    k = idx.shape[1]
    d2, expected = brute_knn(ab, centres, k)
    idx = idx.permute(0, 2, 3, 1).reshape(-1, k)
    p = ab.movedim(1, -1).reshape(-1, 2)
    assert torch.equal(((p[:, None] - centres[idx]) ** 2).sum(-1), d2)
    assert (idx.sort(1).values.diff(dim=1) > 0).all()
    untied = (brute_knn(ab, centres, min(k + 1, len(centres)))[0].diff(dim=1) > 0).all(1)
    assert torch.equal(idx[untied], expected[untied])
    return d2


@pytest.mark.parametrize("device", DEVICES)
@pytest.mark.parametrize("dtype", [torch.float32, torch.float64])
def test_rgb_to_lab_matches_skimage_on_photos(photos: np.ndarray, device: str, dtype: torch.dtype) -> None:
    lab = rgb_to_lab(to_tensor(photos, dtype, device) / 255)
    assert lab.dtype == dtype and lab.device.type == device
    expected = to_tensor(np.stack([skimage.color.rgb2lab(im) for im in photos]), dtype)
    assert (lab.cpu() - expected).abs().max() < 1e-3


@pytest.mark.shared_data
def test_rgb_to_lab_matches_skimage_on_every_bsds500_photo() -> None:
    files = sorted((SHARED_DATA / "bsds500").glob("*.jpg"))
    assert len(files) == 500, f"expected BSDS500's 500 photos in {SHARED_DATA / 'bsds500'}"
    for start in range(0, len(files), 50):
        images = np.stack([np.asarray(Image.open(f).convert("RGB")) for f in files[start : start + 50]])
        expected = to_tensor(np.stack([skimage.color.rgb2lab(im) for im in images]), torch.float64)
        assert (rgb_to_lab(to_tensor(images, torch.float64) / 255) - expected).abs().max() < 1e-3


def test_lab_to_rgb_matches_skimage_and_round_trips(photos: np.ndarray) -> None:
    rgb = to_tensor(photos) / 255
    lab = np.stack([skimage.color.rgb2lab(im) for im in photos]).astype(np.float32)
    back = lab_to_rgb(to_tensor(lab))
    assert (back - to_tensor(np.stack([skimage.color.lab2rgb(x) for x in lab]))).abs().max() < 1e-3
    assert (back - rgb).abs().max() < 1e-3
    assert (lab_to_rgb(rgb_to_lab(rgb)) - rgb).abs().max() < 1e-3


def test_lab_to_rgb_clips_out_of_gamut_like_skimage() -> None:
    lab = torch.rand(1, 3, 64, 64, generator=torch.Generator().manual_seed(0), dtype=torch.float64)
    lab = lab * torch.tensor([100.0, 256.0, 256.0]).view(1, 3, 1, 1) - torch.tensor([0.0, 128.0, 128.0]).view(1, 3, 1, 1)
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")  # skimage warns about the negative Z it clips
        expected = skimage.color.lab2rgb(lab[0].permute(1, 2, 0).numpy())
    rgb = lab_to_rgb(lab)
    assert rgb.min() >= 0 and rgb.max() <= 1 and (rgb == 0).any() and (rgb == 1).any()
    assert (rgb[0].permute(1, 2, 0) - torch.from_numpy(expected)).abs().max() < 1e-6


def test_conversions_have_finite_gradients_at_black_white_and_thresholds() -> None:
    rgb = torch.tensor([0.0, 0.04045, 1.0, 0.5]).view(1, 1, 2, 2).repeat(1, 3, 1, 1).requires_grad_()
    lab_to_rgb(rgb_to_lab(rgb)).sum().backward()
    assert torch.isfinite(rgb.grad).all()


def test_conversions_reject_bad_input() -> None:
    with pytest.raises(ValueError, match="B,3,H,W"):
        rgb_to_lab(torch.zeros(3, 8, 8))
    with pytest.raises(TypeError, match="floating"):
        rgb_to_lab(torch.zeros(1, 3, 8, 8, dtype=torch.uint8))
    with pytest.raises(ValueError, match="B,2,H,W"):
        nearest_bins(torch.zeros(1, 3, 8, 8), torch.zeros(4, 2))


def test_gamut_bin_counts_order_and_cache() -> None:
    bins, rim = ab_gamut_bins(), ab_gamut_bins(rim=True)
    assert bins.shape == (261, 2) and rim.shape == (322, 2)
    assert bins.dtype == torch.float32 and bins.device.type == "cpu"
    for b in (bins, rim):
        assert torch.equal(torch.remainder(b, 10.0), torch.zeros_like(b))
        assert sorted(map(tuple, b.tolist())) == list(map(tuple, b.tolist()))
    assert set(map(tuple, bins.tolist())) < set(map(tuple, rim.tolist()))
    bins[:] = 0
    assert ab_gamut_bins().abs().sum() > 0  # callers get a copy of the cache


def srgb_ab(step: int) -> torch.Tensor:
    """skimage's (a, b) (N,2) float64 of the 8-bit colours whose channels are multiples of `step` or 255."""
    levels = np.r_[np.arange(0, 256, step), 255].astype(np.uint8)
    rgb = np.stack(np.meshgrid(levels, levels, levels, indexing="ij"), -1).reshape(1, -1, 3)
    return torch.from_numpy(skimage.color.rgb2lab(rgb)[0, :, 1:])


def cell_set(ab: torch.Tensor) -> set[tuple[float, float]]:
    return set(map(tuple, ab.reshape(-1, 2).tolist()))


def test_gamut_bins_are_the_cells_of_srgb_colours() -> None:
    """Independent check with skimage on 65^3 colours, which happen to reach every bin."""
    bins = cell_set(ab_gamut_bins())
    assert cell_set(torch.round(srgb_ab(4) / 10) * 10) == bins
    assert {(-90.0, 80.0), (80.0, 70.0), (80.0, -110.0), (0.0, 0.0)} <= bins  # green, red, blue, greys


def test_rim_bins_hold_the_5_nearest_grid_centres_of_srgb_colours() -> None:
    """Brute force over the whole lattice of multiples of 10, on 33^3 colours."""
    ab = srgb_ab(8)
    lattice = torch.cartesian_prod(*2 * [torch.arange(-130.0, 131.0, 10.0, dtype=torch.float64)])
    nearest5 = cell_set(lattice[torch.cdist(ab, lattice).topk(5, dim=1, largest=False).indices])
    assert nearest5 <= cell_set(ab_gamut_bins(rim=True))
    assert len(nearest5 - cell_set(ab_gamut_bins())) >= 50  # of the 61 rim cells


def random_ab(seed: int, shape: tuple[int, int, int] = (2, 30, 40)) -> torch.Tensor:
    """(B,2,H,W) ab uniform in [-150,150]^2, some far out of gamut, some exactly on bin centres."""
    ab = torch.rand(shape[0], 2, *shape[1:], generator=torch.Generator().manual_seed(seed)) * 300 - 150
    ab[0, :, 0, :4] = torch.tensor([[120.0, -120.0], [-150.0, 150.0], [0.0, 0.0], [30.0, -40.0]]).T
    return ab


@pytest.mark.parametrize("rim", [False, True])
@pytest.mark.parametrize("k", [1, 5, 10, 30])
def test_soft_encode_and_nearest_bins_equal_brute_force(rim: bool, k: int, monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setattr(color, "_CHUNK", 1000)  # several chunks
    centres, ab = ab_gamut_bins(rim=rim), random_ab(k)
    idx, weight = soft_encode(ab, centres, k=k, sigma=5.0)
    assert idx.shape == weight.shape == (2, k, 30, 40) and idx.dtype == torch.long and weight.dtype == torch.float32
    d2 = assert_knn(ab, centres, idx)
    assert torch.allclose(weight.permute(0, 2, 3, 1).reshape(-1, k), torch.softmax(-d2 / 50.0, dim=1), atol=1e-6)
    nearest = nearest_bins(ab, centres)
    assert nearest.shape == (2, 30, 40)
    assert_knn(ab, centres, nearest[:, None])


def test_soft_encode_on_photos(photos: np.ndarray) -> None:
    ab = rgb_to_lab(to_tensor(photos[:, ::4, ::4]) / 255)[:, 1:]
    centres = ab_gamut_bins(rim=True)
    idx, weight = soft_encode(ab, centres)
    assert_knn(ab, centres, idx)
    assert torch.allclose(weight.sum(1), torch.ones(1))
    assert (weight[:, :1] >= weight).all() and (weight[:, 0] > 0.2).all() and weight[:, 0].mean() > 0.4
    assert torch.equal(idx[:, 0], nearest_bins(ab, centres))


def test_soft_encode_with_other_centres_and_bad_arguments() -> None:
    ab = random_ab(2)
    for centres in (ab_gamut_bins() / 2, torch.randn(40, 2, generator=torch.Generator().manual_seed(1)) * 50):  # 5-grid, no grid
        assert_knn(ab, centres, soft_encode(ab, centres, k=3)[0])
    # Off-lattice by < 1e-3 spacing: the nearest centre of the pixel lies just outside its search window.
    centres = torch.tensor([[-20.0, 0.0], [29.995, 0.0], [-10.0, -50.0]])
    assert nearest_bins(torch.tensor([4.999, 0.0]).view(1, 2, 1, 1), centres).item() == 1
    with pytest.raises(ValueError, match="k must be"):
        soft_encode(ab, centres, k=4)
    with pytest.raises(ValueError, match="sigma"):
        soft_encode(ab, centres, sigma=0)


@pytest.mark.parametrize("device", DEVICES)
def test_annealed_mean(device: str) -> None:
    centres = ab_gamut_bins().to(device)
    logits = torch.randn(2, 261, 4, 5, generator=torch.Generator().manual_seed(0)).to(device)
    plain = annealed_mean(logits, centres, temperature=1.0)
    assert plain.shape == (2, 2, 4, 5) and plain.device.type == device
    p = torch.softmax(logits, dim=1)
    expected = (p[:, :, None] * centres[None, :, :, None, None]).sum(1)
    assert torch.allclose(plain, expected, atol=1e-4)
    logits[:, 37] += 100.0
    for t in (0.0, 0.01, 0.38):
        assert torch.allclose(annealed_mean(logits, centres, temperature=t), centres[37].view(1, 2, 1, 1).expand(2, 2, 4, 5), atol=1e-4)
    sharp = torch.zeros(1, 261, 1, 1, device=device)
    sharp[0, [3, 100], 0, 0] = torch.tensor([2.0, 1.0], device=device)
    assert torch.equal(annealed_mean(sharp, centres, temperature=0), centres[3].view(1, 2, 1, 1))
    lowered = annealed_mean(sharp, centres, temperature=0.38)
    assert (lowered - centres[3].view(1, 2, 1, 1)).norm() < (annealed_mean(sharp, centres, 1.0) - centres[3].view(1, 2, 1, 1)).norm()


@pytest.mark.parametrize("log", [False, True])
def test_softmax_channels_equals_softmax_over_dim_1_in_any_layout(log: bool) -> None:
    softmax = torch.log_softmax if log else torch.softmax
    logits = torch.randn(2, 261, 6, 5, generator=torch.Generator().manual_seed(1))
    nhwc = logits.contiguous(memory_format=torch.channels_last)
    for x in (logits, nhwc, nhwc[..., ::2, ::2]):
        assert torch.allclose(softmax_channels(x, log), softmax(x.contiguous(), dim=1), atol=1e-6)
    assert softmax_channels(nhwc, log).is_contiguous(memory_format=torch.channels_last)  # computed in memory order, no copy
    centres = ab_gamut_bins()
    assert torch.allclose(annealed_mean(nhwc, centres), annealed_mean(logits, centres), atol=1e-4)
