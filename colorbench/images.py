"""The image containers every layer shares: decoded sets (`ImageSet`), views of their rows (`ImageRows`), one decoded
file (`Decoded`), and batches on the training device (crops, flips, Lab).

The decode-once cache (`cache.py`) and the image sources (`data.py`) meet only here, and the training stack (`train.py`,
`losses.py`) reads its batches from here without the decoding pool.
"""

from __future__ import annotations

import hashlib
from collections.abc import Sequence
from dataclasses import dataclass, field

import numpy as np
import torch
import torch.nn.functional as F

from colorbench.color import rgb_to_lab
from colorbench.compose import gray, lightness


@dataclass(frozen=True)
class ImageRows:
    """The rows `index` of a uint8 array (N,S,S,3), usually the cache's memory map: a subset or a fold that copies nothing.

    Indexing it (an int, a slice or an index array, as on an array) reads just those rows into a new array.
    """

    base: np.ndarray
    index: np.ndarray

    def __len__(self) -> int:
        return len(self.index)

    @property
    def shape(self) -> tuple[int, ...]:
        return (len(self.index), *self.base.shape[1:])

    @property
    def dtype(self) -> np.dtype:
        return self.base.dtype

    @property
    def nbytes(self) -> int:
        return len(self.index) * self.base[:1].nbytes

    def __getitem__(self, key: int | slice | np.ndarray) -> np.ndarray:
        return self.base[self.index[key]]

    def __array__(self, dtype: np.dtype | None = None, copy: bool | None = None) -> np.ndarray:
        return self.base[self.index] if dtype is None else self.base[self.index].astype(dtype)


HostImages = np.ndarray | ImageRows  # uint8 (N,S,S,3) on the host: an array, the cache's memory map, or rows of one


def rows(images: HostImages, idx: np.ndarray) -> ImageRows:
    """The rows `idx` of `images` as a view over the same base array (nothing is copied)."""
    idx = np.asarray(idx, dtype=np.int64)
    return ImageRows(images.base, images.index[idx]) if isinstance(images, ImageRows) else ImageRows(images, idx)


def gather(images: HostImages, idx: np.ndarray, pin: bool = False) -> torch.Tensor:
    """The rows `idx` of `images` read into one new uint8 tensor, in page-locked memory when `pin` (for non-blocking CUDA copies)."""
    base, where = (images.base, images.index[idx]) if isinstance(images, ImageRows) else (images, np.asarray(idx))
    out = torch.empty((len(where), *base.shape[1:]), dtype=torch.uint8, pin_memory=pin)
    np.take(base, where, axis=0, out=out.numpy(), mode="clip")  # "clip" writes straight into `out`; the indices are valid
    return out


def digest_names(pixels: hashlib._Hash, names: Sequence[str]) -> str:
    """The content fingerprint of a decoded set: `pixels` (a sha1 fed its images in order) completed with the names."""
    pixels.update("\n".join(names).encode())
    return pixels.hexdigest()[:16]


@dataclass
class ImageSet:
    """Decoded square uint8 images with, per image, its source photo (group) and name."""

    images: HostImages  # (N, S, S, 3) uint8; a subset's are rows of its parent's (see `ImageRows`)
    groups: np.ndarray  # (N,) int: images of one group come from one photo
    names: list[str]  # relative path of the photo (crops share it)
    skipped: list[tuple[str, str]] = field(default_factory=list)  # (file, reason)
    digest: str = ""  # content fingerprint of the whole decoded set, computed once when the cache entry was built

    def __len__(self) -> int:
        return len(self.images)

    def subset(self, idx: np.ndarray) -> ImageSet:
        """The images at `idx` as a view of these (skipped files are not carried over)."""
        return ImageSet(rows(self.images, idx), self.groups[idx], [self.names[i] for i in idx], digest=self.digest)

    def fingerprint(self) -> str:
        """Identity of these images: the build-time content fingerprint (images held in memory are hashed now), combined
        with the row indices for a subset."""
        whole = self.digest or digest_names(hashlib.sha1(np.ascontiguousarray(self.images).data), self.names)
        if not isinstance(self.images, ImageRows):
            return whole
        return hashlib.sha1(whole.encode() + self.images.index.tobytes()).hexdigest()[:16]


@dataclass
class Decoded:
    """One file's outcome: its squares (uint8 (crops,S,S,3)), or the reason it was skipped."""

    name: str
    squares: np.ndarray | None = None
    reason: str = ""


def random_boxes(n: int, size: int, min_scale: float, generator: torch.Generator) -> torch.Tensor:
    """(n,3) float64 square crop boxes (side, x0, y0) in pixels of a size x size image: side uniform in [min_scale, 1] x size,
    position uniform inside the image."""
    u = torch.rand(n, 3, generator=generator, dtype=torch.float64)
    side = size * (min_scale + (1 - min_scale) * u[:, 0])
    return torch.stack([side, u[:, 1] * (size - side), u[:, 2] * (size - side)], dim=1)


def augment(rgb: torch.Tensor, flip: torch.Tensor, boxes: torch.Tensor | None = None) -> torch.Tensor:
    """uint8 (B,S,S,3) on any device -> uint8 (B,S,S,3) on it: each image's box (side, x0, y0) resized back to S x S, h-flipped where `flip`.

    The crop is bilinear and treats the box as PIL's `resize(box=...)` (= `square`) does, pixels next to the box
    included, so it matches that per-image CPU path to within one grey level; without boxes only the flip is applied.
    """
    flip = flip.to(rgb.device)
    if boxes is None:
        return torch.where(flip.view(-1, 1, 1, 1), rgb.flip(2), rgb)
    b, size = rgb.shape[0], rgb.shape[1]
    side, x0, y0 = boxes.to(rgb.device, torch.float32).unbind(1)
    theta = torch.zeros(b, 2, 3, device=rgb.device)
    theta[:, 0, 0] = torch.where(flip, -side, side) / size  # a negative x scale mirrors the output
    theta[:, 0, 2] = (2 * x0 + side) / size - 1
    theta[:, 1, 1] = side / size
    theta[:, 1, 2] = (2 * y0 + side) / size - 1
    x = rgb.permute(0, 3, 1, 2).float()
    grid = F.affine_grid(theta, [b, 3, size, size], align_corners=False)
    out = F.grid_sample(x, grid, mode="bilinear", padding_mode="border", align_corners=False)
    return out.round_().clamp_(0, 255).to(torch.uint8).permute(0, 2, 3, 1)


def lab_batch(rgb: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
    """uint8 (B,H,W,3) on any device -> L (B,1,H,W) and ab (B,2,H,W) in Lab units, on that device."""
    lab = rgb_to_lab(rgb.permute(0, 3, 1, 2).float().div_(255.0))
    return lab[:, :1], lab[:, 1:]


def gray_rgb(images: np.ndarray) -> np.ndarray:
    """uint8 (N,H,W,3) -> their lightness alone as gray uint8 RGB (what the model sees)."""
    return np.stack([gray(lightness(image)) for image in images])
