"""Batched colour maths on torch tensors: sRGB <-> CIE Lab, quantised ab bins, soft encoding and decoding.

Conventions:
- Images are (B,C,H,W) float tensors on any device; results keep the input's device and dtype.
- sRGB is in [0,1]. Lab is CIE L*a*b* under D65 / 2deg with scikit-image's constants (`skimage.color.rgb2lab`):
  L in [0,100], a and b within about [-110,110] for sRGB colours.
- ab bins are the centres (a, b) of square cells of side `grid` centred on multiples of `grid`, in Lab units,
  as a (Q,2) tensor; a bin is referred to by its row index q.
- Everything is a pure function; the only state is the cache of `ab_gamut_bins`.
"""

from __future__ import annotations

import functools
import math

import torch

_XYZ_FROM_RGB = ((0.412453, 0.357580, 0.180423), (0.212671, 0.715160, 0.072169), (0.019334, 0.119193, 0.950227))
_RGB_FROM_XYZ = tuple(tuple(row) for row in torch.linalg.inv(torch.tensor(_XYZ_FROM_RGB, dtype=torch.float64)).tolist())
_WHITE_D65 = (0.95047, 1.0, 1.08883)

_AB_BOUND = 128.0  # |a| and |b| of every sRGB colour are below this (the extremes are about 98 and 108)
_WINDOW = 2  # the nearest-bin search looks at the (2 * _WINDOW + 1)^2 cells around a pixel's own cell
_CHUNK = 1 << 17  # pixels per step of the nearest-bin search, to bound its memory

# The 5 nearest lattice points of a point u (in grid units): with c = round(u) and s the signs of u - c, they are
# c, c + (s_a, 0), c + (0, s_b) and the two nearer of (s_a, s_b), (-s_a, 0), (0, -s_b); any other lattice point is
# at least as far as two of those three. Pattern index: ((s_a > 0) * 2 + (s_b > 0)) * 3 + (index of the farthest).
_NEAREST5 = tuple(
    ((0, 0), (sa, 0), (0, sb)) + tuple(o for i, o in enumerate(((sa, sb), (-sa, 0), (0, -sb))) if i != far)
    for sa in (-1, 1)
    for sb in (-1, 1)
    for far in range(3)
)


def _check_image(x: torch.Tensor, channels: int, name: str) -> None:
    if x.ndim != 4 or x.shape[1] != channels:
        raise ValueError(f"{name} must be (B,{channels},H,W), got {tuple(x.shape)}")
    if not x.is_floating_point():
        raise TypeError(f"{name} must be a floating-point tensor, got {x.dtype}")


def _mix(m: tuple[tuple[float, ...], ...], c0: torch.Tensor, c1: torch.Tensor, c2: torch.Tensor) -> tuple[torch.Tensor, ...]:
    """3x3 matrix times the vector (c0, c1, c2), elementwise (exact float32: no TF32 matmul, broadcastable inputs)."""
    return tuple(r[0] * c0 + r[1] * c1 + r[2] * c2 for r in m)


def srgb_to_linear(x: torch.Tensor) -> torch.Tensor:
    """sRGB in [0,1] -> linear light (IEC 61966-2-1)."""
    return torch.where(x > 0.04045, ((x.clamp_min(0.04045) + 0.055) / 1.055).pow(2.4), x / 12.92)


def linear_to_srgb(x: torch.Tensor) -> torch.Tensor:
    """Linear light -> sRGB (IEC 61966-2-1); not clipped."""
    return torch.where(x > 0.0031308, 1.055 * x.clamp_min(0.0031308).pow(1 / 2.4) - 0.055, x * 12.92)


def _f(t: torch.Tensor) -> torch.Tensor:
    """CIE's companding of a tristimulus ratio (X/Xn, Y/Yn or Z/Zn)."""
    return torch.where(t > 0.008856, t.clamp_min(0.008856).pow(1 / 3), 7.787 * t + 16 / 116)


def _lab_from_linear(r: torch.Tensor, g: torch.Tensor, b: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
    fx, fy, fz = (_f(v / w) for v, w in zip(_mix(_XYZ_FROM_RGB, r, g, b), _WHITE_D65))
    return 116 * fy - 16, 500 * (fx - fy), 200 * (fy - fz)


LUMINANCE_FROM_LINEAR = _XYZ_FROM_RGB[1]  # Y = these weights . linear (R, G, B); they sum to 1, so a gray's Y is its linear value


def lightness_from_luminance(y: torch.Tensor) -> torch.Tensor:
    """Relative luminance Y (white = 1) -> CIE L in [0,100]: the L of `rgb_to_lab` without computing a and b."""
    return 116 * _f(y) - 16


def rgb_to_lab(rgb: torch.Tensor) -> torch.Tensor:
    """(B,3,H,W) sRGB in [0,1] (float) -> (B,3,H,W) CIE Lab, D65 / 2deg, skimage-compatible: L in [0,100], a,b ~[-110,110]."""
    _check_image(rgb, 3, "rgb")
    return torch.stack(_lab_from_linear(*srgb_to_linear(rgb).unbind(1)), dim=1)


def lab_to_rgb(lab: torch.Tensor) -> torch.Tensor:
    """Inverse of `rgb_to_lab`, as `skimage.color.lab2rgb` (negative Z clipped to 0); output clipped to [0,1]."""
    _check_image(lab, 3, "lab")
    return linear_to_srgb(torch.stack(linear_from_lab(*lab.unbind(1)), dim=1)).clamp(0, 1)


def linear_from_lab(L: torch.Tensor, a: torch.Tensor, b: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
    """Lab channels -> linear R, G, B, not clipped: a colour is inside the sRGB gamut when all three lie in [0,1]."""
    fy = (L + 16) / 116
    f = (a / 500 + fy, fy, (fy - b / 200).clamp_min(0))
    xyz = (torch.where(t > 0.2068966, t.pow(3), (t - 16 / 116) / 7.787) * w for t, w in zip(f, _WHITE_D65))
    return _mix(_RGB_FROM_XYZ, *xyz)


@functools.lru_cache(maxsize=8)
def _gamut_patterns(grid: float) -> torch.Tensor:
    """(n,n,12) bool [i, j, p]: some 8-bit sRGB colour lies in cell (i - n // 2, j - n // 2) with `_NEAREST5` pattern p."""
    span = math.ceil(_AB_BOUND / grid) + 1  # one cell of room for the 5 nearest
    n = 2 * span + 1
    seen = torch.zeros(n * n * 12, dtype=torch.bool)
    levels = srgb_to_linear(torch.arange(256, dtype=torch.float32) / 255)
    for red in levels.split(16):
        _, a, b = _lab_from_linear(red[:, None, None], levels[:, None], levels)
        ua, ub = a / grid, b / grid
        ca, cb = ua.round(), ub.round()
        ax, ay = (ua - ca).abs(), (ub - cb).abs()
        # Farthest of (s_a, s_b), (-s_a, 0), (0, -s_b); their squared distances differ by 1 - 4ax - 2ay, 1 - 2ax - 4ay, 2(ax - ay).
        far = torch.where((4 * ax + 2 * ay <= 1) & (2 * ax + 4 * ay <= 1), 0, torch.where(ax > ay, 1, 2))
        sign = (ua >= ca).int() * 2 + (ub >= cb).int()
        seen[(((ca.int() + span) * n + cb.int() + span) * 4 + sign) * 3 + far] = True
    return seen.view(n, n, 12)


@functools.lru_cache(maxsize=8)
def _gamut_bins(grid: float, rim: bool) -> torch.Tensor:
    seen = _gamut_patterns(grid)
    n = seen.shape[0]
    if rim:
        cell, pattern = seen.view(n * n, 12).nonzero().unbind(1)
        cells = torch.stack((cell // n, cell % n), dim=1)[:, None] + torch.tensor(_NEAREST5)[pattern]
        keep = torch.zeros(n, n, dtype=torch.bool)
        keep[cells[..., 0], cells[..., 1]] = True
    else:
        keep = seen.any(-1)
    return (keep.nonzero() - n // 2).float() * grid


def ab_gamut_bins(grid: float = 10.0, rim: bool = False) -> torch.Tensor:
    """(Q,2) float32 bin centres (a,b), sorted lexicographically by (a,b), on CPU.

    The cells that contain at least one of the 256^3 8-bit sRGB colours (261 for grid 10); `rim` adds every cell
    whose centre is among the 5 nearest multiples of `grid` of some such colour (322 for grid 10). Cached.
    """
    if not grid > 0:
        raise ValueError(f"grid must be positive, got {grid}")
    return _gamut_bins(float(grid), bool(rim)).clone()


def _lattice(centres: torch.Tensor) -> tuple[float, float, torch.Tensor, torch.Tensor, torch.Tensor] | None:
    """Describe centres that sit (within 1e-3 of a spacing) on distinct multiples of one spacing g, else None.

    Returns g, the largest offset of a centre from its lattice point, the lowest and highest cell (2,) as floats,
    and a table of centre indices (-1: no centre) over those cells padded by `_WINDOW` on every side.
    """
    values = torch.unique(centres)
    if values.numel() < 2:
        return None
    g = values.diff().min().item()
    cells = torch.round(centres / g)
    offset = (cells * g - centres).abs().max().item()
    lo, hi = cells.amin(0), cells.amax(0)
    shape = (hi - lo + 1 + 2 * _WINDOW).long().tolist()
    if offset > 1e-3 * g or shape[0] * shape[1] > 1 << 22 or torch.unique(cells, dim=0).shape[0] < cells.shape[0]:
        return None
    table = torch.full(shape, -1, dtype=torch.long, device=centres.device)
    rows = (cells - lo + _WINDOW).long()
    table[rows[:, 0], rows[:, 1]] = torch.arange(centres.shape[0], device=centres.device)
    return g, offset, lo, hi, table


def _brute_knn(p: torch.Tensor, centres: torch.Tensor, k: int) -> tuple[torch.Tensor, torch.Tensor]:
    d = (p[:, :1] - centres[:, 0]).square() + (p[:, 1:] - centres[:, 1]).square()
    return d.topk(k, dim=1, largest=False)


def _window_knn(p: torch.Tensor, centres: torch.Tensor, k: int, lattice: tuple) -> tuple[torch.Tensor, torch.Tensor]:
    """k nearest among the centres in the window of cells around each point, brute force where that may miss one."""
    g, offset, lo, hi, table = lattice
    cell = torch.round(p / g).clamp(lo, hi)
    rows = (cell - lo + _WINDOW).long()
    r = torch.arange(-_WINDOW, _WINDOW + 1, device=p.device)
    window = (r[:, None] * table.shape[1] + r).flatten()
    cand = table.flatten()[(rows[:, 0] * table.shape[1] + rows[:, 1])[:, None] + window]
    ca, cb = (centres[:, i][cand.clamp_min(0)] for i in (0, 1))
    d = torch.where(cand < 0, math.inf, (p[:, :1] - ca).square() + (p[:, 1:] - cb).square())
    d, j = d.topk(k, dim=1, largest=False)
    idx = cand.gather(1, j)
    # Lower bound on the distance to any centre outside the window: the lattice lines just beyond it, where centres exist.
    below = torch.where(cell - _WINDOW > lo, p - (cell - _WINDOW - 1) * g, math.inf)
    above = torch.where(cell + _WINDOW < hi, (cell + _WINDOW + 1) * g - p, math.inf)
    bound = (torch.minimum(below, above).amin(1) - offset).clamp_min(0)
    missed = ~(d[:, -1] < bound.square())
    if missed.any():
        d[missed], idx[missed] = _brute_knn(p[missed], centres, k)
    return d, idx


def _knn(ab: torch.Tensor, centres: torch.Tensor, k: int) -> tuple[torch.Tensor, torch.Tensor]:
    """Squared distances and indices (B,k,H,W) of the k nearest centres of each pixel, nearest first."""
    _check_image(ab, 2, "ab")
    if not 1 <= k <= centres.shape[0]:
        raise ValueError(f"k must be in [1, {centres.shape[0]}] (the number of centres), got {k}")
    centres = centres.to(ab)
    lattice = _lattice(centres) if k <= (2 * _WINDOW + 1) ** 2 else None
    parts = [
        _brute_knn(p, centres, k) if lattice is None else _window_knn(p, centres, k, lattice)
        for p in ab.movedim(1, -1).reshape(-1, 2).split(_CHUNK)
    ]
    B, _, H, W = ab.shape
    return tuple(torch.cat(t).view(B, H, W, k).permute(0, 3, 1, 2) for t in zip(*parts))


def nearest_bins(ab: torch.Tensor, centres: torch.Tensor) -> torch.Tensor:
    """ab (B,2,H,W) -> (B,H,W) long index of the nearest centre."""
    return _knn(ab, centres, 1)[1][:, 0]


def soft_encode(ab: torch.Tensor, centres: torch.Tensor, k: int = 5, sigma: float = 5.0) -> tuple[torch.Tensor, torch.Tensor]:
    """ab (B,2,H,W) -> (idx (B,k,H,W) long, weight (B,k,H,W) float) over the k nearest centres, nearest first.

    Gaussian weights exp(-d^2/(2 sigma^2)) normalised to sum 1 per pixel; the dense (B,Q,H,W) target is never built.
    """
    if not sigma > 0:
        raise ValueError(f"sigma must be positive, got {sigma}")
    d2, idx = _knn(ab, centres, k)
    return idx, torch.softmax(-d2 / (2 * sigma**2), dim=1)


def softmax_channels(x: torch.Tensor, log: bool = False) -> torch.Tensor:
    """(log-)softmax over dim 1 of (B,C,H,W) along memory order, so a channels-last tensor (what a channels-last
    model outputs) is not first copied to contiguous, as `torch.softmax(x, dim=1)` does on a CPU."""
    softmax = torch.log_softmax if log else torch.softmax
    if x.ndim != 4 or x.is_contiguous() or not x.is_contiguous(memory_format=torch.channels_last):
        return softmax(x, dim=1)
    return softmax(x.permute(0, 2, 3, 1), dim=-1).permute(0, 3, 1, 2)


def annealed_mean(logits: torch.Tensor, centres: torch.Tensor, temperature: float = 0.38) -> torch.Tensor:
    """logits (B,Q,H,W) -> ab (B,2,H,W) = sum_q softmax(logits/T)_q * centre_q.

    T = 1 is the plain mean, T -> 0 the mode; T = 0 means the mode (centre of the argmax bin).
    """
    _check_image(logits, centres.shape[0], "logits")
    if temperature < 0:
        raise ValueError(f"temperature must be >= 0, got {temperature}")
    centres = centres.to(logits)
    if temperature == 0:
        return centres[logits.argmax(1)].permute(0, 3, 1, 2)
    return torch.einsum("bqhw,qc->bchw", softmax_channels(logits / temperature), centres)
