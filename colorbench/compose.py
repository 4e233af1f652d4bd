"""Full-resolution colour from a photo's own lightness and a model's small ab map, a strip of rows at a time.

Memory is bounded by the strip (about STRIP_PIXELS pixels), whatever the photo's size; only the decoded photo itself
(1 byte a pixel for a gray scan, 4 for a colour photo: PIL's RGB) grows with it. The lightness of 8-bit sRGB and the
8-bit sRGB encoding of linear light come from tables, so a strip costs a few elementwise passes.
"""

from __future__ import annotations

import functools
import struct
import zlib
from collections.abc import Callable, Iterator
from concurrent.futures import Future, ThreadPoolExecutor
from contextlib import contextmanager
from pathlib import Path
from typing import BinaryIO

import numpy as np
import torch
import torch.nn.functional as F
from PIL import Image

from colorbench.atomic import atomic_path
from colorbench.color import LUMINANCE_FROM_LINEAR, lightness_from_luminance, linear_from_lab, linear_to_srgb, srgb_to_linear

STRIP_PIXELS = 1 << 18  # pixels per strip: bounds the working memory of composition whatever the photo's size
GAMUT_TOLERANCE = 1e-3  # linear RGB may leave [0,1] by this much (float rounding) and still count as inside the gamut
GAMUT_STEPS = 8  # bisection steps on the chroma scale of an out-of-gamut pixel (1/256 of its chroma)
PNG_LEVEL = 1  # zlib level of the written PNGs: the fastest; with the Sub filter 1.3 times the size of PIL's level-1 file (8-MP photo)
LEVELS = 65535  # linear light and luminance are quantised to this many steps before a table: below 0.05 of an 8-bit level
WriteRows = Callable[[int, int, np.ndarray], None]  # (first row, end row, uint8 rows (h,W,3)) -> stored


@functools.cache
def _tables() -> tuple[np.ndarray, np.ndarray, np.ndarray, torch.Tensor]:
    """Luminance share of each channel's 8-bit level (3,256); lightness of each gray level (256,) and of each quantised
    luminance (LEVELS+1,); the 8-bit sRGB code of each quantised linear value (LEVELS+1,)."""
    linear = srgb_to_linear(torch.arange(256, dtype=torch.float64) / 255)
    share = torch.stack([w * linear for w in LUMINANCE_FROM_LINEAR]).float().numpy()
    steps = torch.arange(LEVELS + 1, dtype=torch.float64) / LEVELS
    gray_lightness, step_lightness = (lightness_from_luminance(y).float().numpy() for y in (linear, steps))
    return share, gray_lightness, step_lightness, linear_to_srgb(steps).mul(255).round().to(torch.uint8)


def _quantised(x: np.ndarray | torch.Tensor) -> np.ndarray | torch.Tensor:
    """Values in [0,1] -> their nearest step of 1/LEVELS, as table indices."""
    return (x * LEVELS + 0.5).astype(np.int64) if isinstance(x, np.ndarray) else x.mul(LEVELS).add_(0.5).long()


def lightness(rows: np.ndarray) -> torch.Tensor:
    """uint8 rows, (h,W) gray or (h,W,3) sRGB -> their CIE lightness L (h,W) float32, as `rgb_to_lab` computes it (to 0.01)."""
    share, gray_lightness, step_lightness, _ = _tables()
    if rows.ndim == 2:
        return torch.from_numpy(gray_lightness.take(rows))
    luminance = share[0].take(rows[..., 0]) + share[1].take(rows[..., 1]) + share[2].take(rows[..., 2])
    return torch.from_numpy(step_lightness.take(_quantised(np.clip(luminance, 0, 1, out=luminance))))


def encode_srgb(linear: torch.Tensor) -> np.ndarray:
    """Linear RGB (3,h,W) -> 8-bit sRGB (h,W,3), clipped to [0,1] first."""
    return torch.take(_tables()[3], _quantised(linear.clamp(0, 1)).permute(1, 2, 0)).numpy()


def _inside(linear: tuple[torch.Tensor, ...]) -> torch.Tensor:
    r, g, b = linear
    return (torch.minimum(torch.minimum(r, g), b) > -GAMUT_TOLERANCE) & (torch.maximum(torch.maximum(r, g), b) < 1 + GAMUT_TOLERANCE)


def colour(L: torch.Tensor, ab: torch.Tensor) -> np.ndarray:
    """Lightness (h,W) and ab (2,h,W) -> uint8 sRGB (h,W,3) with that lightness: a colour outside the sRGB gamut keeps its L and
    hue and loses chroma (the largest scale of its ab, by bisection, that fits) instead of being clipped channel by channel."""
    linear = torch.stack(linear_from_lab(L, ab[0], ab[1]))
    outside = ~_inside(linear.unbind(0))
    if bool(outside.any()):
        L_out, a_out, b_out = L[outside], ab[0][outside], ab[1][outside]
        lo, hi = torch.zeros_like(L_out), torch.ones_like(L_out)  # scale 0 (gray) always fits: its linear value is Y in [0,1]
        for _ in range(GAMUT_STEPS):
            mid = (lo + hi) / 2
            fits = _inside(linear_from_lab(L_out, a_out * mid, b_out * mid))
            lo, hi = torch.where(fits, mid, lo), torch.where(fits, hi, mid)
        linear[:, outside] = torch.stack(linear_from_lab(L_out, a_out * lo, b_out * lo))
    return encode_srgb(linear)


def gray(L: torch.Tensor) -> np.ndarray:
    """Lightness (h,W) -> the gray uint8 sRGB (h,W,3) of that lightness: what the model sees."""
    return colour(L, torch.zeros(2, *L.shape))


@contextmanager
def one_torch_thread() -> Iterator[None]:
    """Torch ops on this thread only, for the block: strips are too small to gain from intra-op threads, the PNG is compressed
    on another core, and intra-op threads stall when the cores are shared (9 against 1.3-3.9 MP/s, 2 cores at load 2.6)."""
    before = torch.get_num_threads()
    torch.set_num_threads(1)
    try:
        yield
    finally:
        torch.set_num_threads(before)


def strips(height: int, width: int) -> list[tuple[int, int]]:
    """(first row, end row) of consecutive strips of about STRIP_PIXELS pixels (at least one row) covering the photo."""
    step = max(1, STRIP_PIXELS // width)
    return [(a, min(a + step, height)) for a in range(0, height, step)]


def compose(photo: Image.Image, ab_small: torch.Tensor, write: WriteRows, compare: WriteRows | None = None) -> None:
    """Colour a photo (PIL, mode L or RGB) from the model's ab (2,s,s), a strip at a time: ab upsampled bilinearly (down the
    rows once, across each strip) and combined with the strip's own lightness. `compare`, if given, receives each strip as
    gray | colorized | original (3 times the photo's width)."""
    width, height = photo.size
    down = F.interpolate(ab_small[None].float().cpu(), size=(height, ab_small.shape[-1]), mode="bilinear", align_corners=False)
    with one_torch_thread():
        for a, b in strips(height, width):
            compose_strip(photo, a, b, down, write, compare)


def compose_strip(photo: Image.Image, a: int, b: int, down: torch.Tensor, write: WriteRows, compare: WriteRows | None) -> None:
    """Rows a..b-1 of `compose`, from ab already upsampled down the rows (`down`, (1,2,H,s))."""
    width = photo.width
    rows = np.asarray(photo.crop((0, a, width, b)))
    L = lightness(rows)
    out = colour(L, F.interpolate(down[..., a:b, :], size=(b - a, width), mode="bilinear", align_corners=False)[0])
    write(a, b, out)
    if compare is not None:
        compare(a, b, np.concatenate([gray(L), out, rows if rows.ndim == 3 else np.repeat(rows[..., None], 3, axis=-1)], axis=1))


class _PngStream:
    """8-bit RGB PNG rows appended to an open file; rows use PNG's Sub filter (the difference to the pixel on the left)."""

    def __init__(self, file: BinaryIO, width: int, height: int, level: int) -> None:
        self.file, self.width, self.height, self.rows = file, width, height, 0
        self.zlib = zlib.compressobj(level)
        file.write(b"\x89PNG\r\n\x1a\n")
        self.chunk(b"IHDR", struct.pack(">IIBBBBB", width, height, 8, 2, 0, 0, 0))

    def chunk(self, kind: bytes, data: bytes) -> None:
        self.file.write(struct.pack(">I", len(data)) + kind + data + struct.pack(">I", zlib.crc32(kind + data)))

    def check(self, a: int, b: int, rows: np.ndarray) -> None:
        """Rows must come in order, with the image's width."""
        if a != self.rows or rows.shape != (b - a, self.width, 3):
            raise ValueError(f"expected rows from {self.rows} of shape (h, {self.width}, 3), got rows {a}..{b} of shape {rows.shape}")
        self.rows = b

    def append(self, rows: np.ndarray) -> None:
        flat = rows.reshape(rows.shape[0], -1)
        filtered = np.empty((flat.shape[0], flat.shape[1] + 1), np.uint8)
        filtered[:, 0] = 1  # the Sub filter's code
        filtered[:, 1:4] = flat[:, :3]
        np.subtract(flat[:, 3:], flat[:, :-3], out=filtered[:, 4:])
        if data := self.zlib.compress(filtered.tobytes()):
            self.chunk(b"IDAT", data)

    def finish(self) -> None:
        if self.rows != self.height:
            raise ValueError(f"PNG ended after {self.rows} of {self.height} rows")
        self.chunk(b"IDAT", self.zlib.flush())
        self.chunk(b"IEND", b"")


@contextmanager
def png_rows(path: Path, width: int, height: int, level: int = PNG_LEVEL) -> Iterator[WriteRows]:
    """Write an 8-bit RGB PNG a strip of rows at a time (rows in order), so no full-size image is ever held; the file appears
    at `path` only when the block ends with every row written, and not at all if it fails. Compression runs in a thread
    (zlib releases the GIL) one strip behind the caller, so it overlaps the composition of the next strip."""
    with atomic_path(path) as tmp, open(tmp, "wb") as file, ThreadPoolExecutor(1, thread_name_prefix="png") as pool:
        stream = _PngStream(file, width, height, level)
        pending: list[Future] = []

        def write(a: int, b: int, rows: np.ndarray) -> None:
            stream.check(a, b, rows)
            if pending:
                pending.pop().result()
            pending.append(pool.submit(stream.append, rows))

        yield write
        if pending:
            pending.pop().result()
        stream.finish()
