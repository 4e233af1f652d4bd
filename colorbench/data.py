"""Image sources decoded once into uint8 arrays, and batching to (L, ab) on the training device."""

from __future__ import annotations

import hashlib
import warnings
from dataclasses import dataclass, field
from pathlib import Path

import numpy as np
import torch
import torch.nn.functional as F
from PIL import Image, ImageOps

from colorbench.color import lab_to_rgb, rgb_to_lab
from colorbench.errors import DataError
from colorbench.registry import Registry
from colorbench.ui import track

IMAGE_SUFFIXES = (".jpg", ".jpeg", ".png", ".webp", ".bmp", ".tif", ".tiff")
GRAY_SPREAD = 12  # 99th percentile of per-pixel channel spread below this = grayscale photo


@dataclass
class ImageSet:
    """Decoded square uint8 images with, per image, its source photo (group) and name."""

    images: np.ndarray  # (N, S, S, 3) uint8
    groups: np.ndarray  # (N,) int: images of one group come from one photo
    names: list[str]  # relative path of the photo (crops share it)
    skipped: list[tuple[str, str]] = field(default_factory=list)  # (file, reason)

    def __len__(self) -> int:
        return len(self.images)

    def subset(self, idx: np.ndarray) -> ImageSet:
        """The images at `idx` (skipped files are not carried over)."""
        return ImageSet(self.images[idx], self.groups[idx], [self.names[i] for i in idx])

    def fingerprint(self) -> str:
        """Content hash of the decoded pixels and names."""
        digest = hashlib.sha1(self.images.tobytes())
        digest.update("\n".join(self.names).encode())
        return digest.hexdigest()[:16]


SOURCES: Registry[ImageSet] = Registry("data source")


def open_rgb(path: Path, draft: bool = True) -> Image.Image:
    """Open an image as 8-bit RGB, EXIF-rotated, honouring 16-bit, CMYK and alpha; raise DataError if unreadable.

    `draft` lets huge JPEGs decode at a reduced scale (training only needs small squares); False keeps full resolution.
    """
    try:
        with warnings.catch_warnings():
            warnings.simplefilter("ignore", Image.DecompressionBombWarning)
            img = Image.open(path)
            if draft:
                img.draft("RGB", (1024, 1024))
            img = ImageOps.exif_transpose(img)
            if img.mode in ("I;16", "I;16B", "I;16L", "I"):
                arr = np.asarray(img, dtype=np.float64)
                scale = 65535.0 if arr.max() > 255 else 255.0
                img = Image.fromarray((arr / scale * 255).round().astype(np.uint8))
            if img.mode in ("RGBA", "LA", "PA") or (img.mode == "P" and "transparency" in img.info):
                img = img.convert("RGBA")
                background = Image.new("RGBA", img.size, (255, 255, 255, 255))
                img = Image.alpha_composite(background, img)
            return img.convert("RGB")
    except (OSError, ValueError, SyntaxError, Image.DecompressionBombError) as err:
        raise DataError(f"{path}: unreadable image ({type(err).__name__}: {err})") from None


def is_grayscale(rgb: np.ndarray) -> bool:
    """True when the photo carries (almost) no colour."""
    spread = rgb.max(axis=-1).astype(np.int16) - rgb.min(axis=-1)
    return float(np.percentile(spread, 99)) < GRAY_SPREAD


def square(img: Image.Image, size: int, box: tuple[float, float, float, float] | None = None) -> np.ndarray:
    """Crop `box` (default: centred square) and resize to size x size uint8 RGB."""
    w, h = img.size
    if box is None:
        side = min(w, h)
        box = ((w - side) / 2, (h - side) / 2, (w + side) / 2, (h + side) / 2)
    return np.asarray(img.resize((size, size), Image.Resampling.BILINEAR, box=box, reducing_gap=2.0))


def find_images(root: Path, include: tuple[str, ...], exclude: tuple[str, ...]) -> list[Path]:
    """Image files below `root`, recursively, sorted, filtered by glob patterns on the relative path."""
    if not root.is_dir():
        raise DataError(f"data folder {root} does not exist; set data.path to a folder of images")
    files = []
    for path in sorted(root.rglob("*")):
        rel = path.relative_to(root)
        if path.suffix.lower() not in IMAGE_SUFFIXES or not path.is_file():
            continue
        if any(rel.match(p) for p in include) and not any(rel.match(p) for p in exclude):
            files.append(path)
    return files


def decode_files(files: list[Path], root: Path, image_size: int, crops: int = 1, seed: int = 0) -> ImageSet:
    """Decode each file once into `crops` squares (1 = centred; more = random crops of 50-100% of the short side)."""
    rng = np.random.default_rng(seed)
    images, groups, names, skipped = [], [], [], []
    for path in track(files, "decoding images"):
        name = str(path.relative_to(root))
        try:
            img = open_rgb(path)
        except DataError as err:
            skipped.append((name, str(err).split(": ", 1)[1]))
            continue
        w, h = img.size
        if min(w, h) < 16:
            skipped.append((name, f"too small ({w}x{h}, need at least 16 px)"))
            continue
        first = square(img, image_size)
        if is_grayscale(first):
            skipped.append((name, "grayscale (no colour to learn from)"))
            continue
        images.append(first)
        for _ in range(crops - 1):
            side = min(w, h) * rng.uniform(0.5, 1.0)
            x, y = rng.uniform(0, w - side), rng.uniform(0, h - side)
            images.append(square(img, image_size, (x, y, x + side, y + side)))
        groups.extend([len(names)] * crops)
        names.extend([name] * crops)
    if not images:
        reasons = "; ".join(f"{n}: {r}" for n, r in skipped[:3])
        raise DataError(f"no usable colour images in {root} ({len(files)} files, {len(skipped)} skipped{': ' + reasons if reasons else ''})")
    return ImageSet(np.stack(images), np.asarray(groups), names, skipped)


def decode_cached(source: str, files: list[Path], root: Path, image_size: int, crops: int = 1, seed: int = 0) -> ImageSet:
    """`decode_files` through the decode-once cache (colorbench.cache): decoded on first use, memory-mapped from disk after."""
    from colorbench.cache import cached  # the cache stores ImageSets, so it imports this module

    params = {"image_size": image_size, "crops": crops, "seed": seed}
    return cached(source, params, files, root, lambda: decode_files(files, root, image_size, crops, seed))


def builtin_photo_files() -> list[Path]:
    """The real colour photographs bundled with scikit-image, scikit-learn and matplotlib."""
    import matplotlib
    import skimage
    import sklearn

    skimage_data = Path(skimage.__file__).parent / "data"
    files = [skimage_data / f for f in ("astronaut.png", "chelsea.png", "coffee.png", "rocket.jpg", "motorcycle_left.png")]
    files += [Path(sklearn.__file__).parent / "datasets" / "images" / f for f in ("china.jpg", "flower.jpg")]
    files.append(Path(matplotlib.get_data_path()) / "sample_data" / "grace_hopper.jpg")
    return [f for f in files if f.is_file()]


@SOURCES.register("builtin")
def builtin(image_size: int = 64, crops_per_photo: int = 24, crop_seed: int = 0) -> ImageSet:
    """8 real photos shipped by scikit-image, scikit-learn and matplotlib, as random crops (no download)."""
    files = builtin_photo_files()
    if not files:
        raise DataError("no built-in photos found: reinstall scikit-image, scikit-learn and matplotlib")
    root = Path(files[0].anchor)
    data = decode_cached("builtin", files, root, image_size, crops_per_photo, crop_seed)
    data.names = [Path(n).name for n in data.names]
    return data


@SOURCES.register("folder")
def folder(
    path: str,
    image_size: int = 64,
    include: tuple[str, ...] = ("*",),
    exclude: tuple[str, ...] = (),
    crops_per_photo: int = 1,
    crop_seed: int = 0,
) -> ImageSet:
    """All images below `path` (jpg/png/webp/bmp/tif, recursive); unreadable or grayscale files are skipped and named."""
    root = Path(path).expanduser()
    files = find_images(root, include, exclude)
    if not files:
        raise DataError(f"no image files ({'/'.join(s[1:] for s in IMAGE_SUFFIXES)}) below {root} match include={list(include)} exclude={list(exclude)}")
    return decode_cached("folder", files, root, image_size, crops_per_photo, crop_seed)


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
    L, _ = lab_batch(torch.from_numpy(np.ascontiguousarray(images)))
    gray = lab_to_rgb(torch.cat([L, torch.zeros_like(L).repeat(1, 2, 1, 1)], dim=1))
    return gray.mul(255).round().byte().permute(0, 2, 3, 1).numpy()
