"""Image sources: files found, decoded (a process pool) and resized once into the decode-once cache."""

from __future__ import annotations

import multiprocessing
import os
import sys
import warnings
from collections import deque
from collections.abc import Iterator
from concurrent.futures import Future, ProcessPoolExecutor
from pathlib import Path

import numpy as np
from PIL import Image, ImageOps

from colorbench.cache import cached
from colorbench.errors import ConfigError, DataError
from colorbench.images import Decoded, ImageSet
from colorbench.registry import Registry
from colorbench.ui import track

IMAGE_SUFFIXES = (".jpg", ".jpeg", ".png", ".webp", ".bmp", ".tif", ".tiff")
GRAY_SPREAD = 12  # 99th percentile of per-pixel channel spread below this = grayscale photo
WORKERS_ENV = "COLORBENCH_DECODE_WORKERS"  # decoding processes (default: the CPUs this process may use)
DECODE_CHUNK = 16  # files per task of the decoding pool; at most 2 tasks per worker are in flight


SOURCES: Registry[ImageSet] = Registry("data source")


def open_rgb(path: Path, draft: bool = True, keep_gray: bool = False) -> Image.Image:
    """Open an image as 8-bit RGB, EXIF-rotated, honouring 16-bit, CMYK and alpha; raise DataError if unreadable.

    `draft` lets huge JPEGs decode at a reduced scale (training only needs small squares); False keeps full resolution.
    `keep_gray` returns a gray photo (without alpha) in mode L, a third of RGB's memory.
    """
    try:
        with warnings.catch_warnings():
            warnings.simplefilter("ignore", Image.DecompressionBombWarning)
            img = Image.open(path)
            if draft:
                img.draft("RGB", (1024, 1024))
            ImageOps.exif_transpose(img, in_place=True)  # in place, and no copy to RGB below: a huge photo is never held twice
            img.load()
            if img.mode in ("I;16", "I;16B", "I;16L", "I"):
                arr = np.asarray(img, dtype=np.float64)
                scale = 65535.0 if arr.max() > 255 else 255.0
                img = Image.fromarray((arr / scale * 255).round().astype(np.uint8))
            if img.mode in ("RGBA", "LA", "PA") or (img.mode == "P" and "transparency" in img.info):
                img = img.convert("RGBA")
                background = Image.new("RGBA", img.size, (255, 255, 255, 255))
                img = Image.alpha_composite(background, img)
            if keep_gray and img.mode in ("1", "L"):
                return img.convert("L")
            return img if img.mode == "RGB" else img.convert("RGB")
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


def decode_file(path: Path, name: str, image_size: int, crops: int, seed: int, rank: int) -> Decoded:
    """One file -> `crops` squares (the centred one, then random crops of 50-100% of the short side), or why it is skipped.

    `rank` is the number of files kept before this one: its crops take the draws that one generator seeded with `seed` makes
    for them after those files' (3 per crop), so any split of the files between processes gives the same squares.
    """
    try:
        img = open_rgb(path)
    except DataError as err:
        return Decoded(name, reason=str(err).split(": ", 1)[1])
    w, h = img.size
    if min(w, h) < 16:
        return Decoded(name, reason=f"too small ({w}x{h}, need at least 16 px)")
    squares = [square(img, image_size)]
    if is_grayscale(squares[0]):
        return Decoded(name, reason="grayscale (no colour to learn from)")
    if crops > 1:
        bits = np.random.PCG64(seed)
        bits.advance(3 * (crops - 1) * rank)
        rng = np.random.Generator(bits)
        for _ in range(crops - 1):
            side = min(w, h) * rng.uniform(0.5, 1.0)
            x, y = rng.uniform(0, w - side), rng.uniform(0, h - side)
            squares.append(square(img, image_size, (x, y, x + side, y + side)))
    return Decoded(name, np.stack(squares))


def decode_chunk(files: list[Path], names: list[str], image_size: int, crops: int, seed: int, rank: int) -> list[Decoded]:
    """`decode_file` on consecutive files, the first of which has `rank` kept files before it."""
    out = []
    for path, name in zip(files, names, strict=True):
        out.append(decode_file(path, name, image_size, crops, seed, rank))
        rank += out[-1].squares is not None
    return out


def decode_workers() -> int:
    """Decoding processes: `$COLORBENCH_DECODE_WORKERS`, else the CPUs this process may run on."""
    env = os.environ.get(WORKERS_ENV, "").strip()
    if env:
        if not env.isdigit() or int(env) < 1:
            raise ConfigError(f"{WORKERS_ENV}={env!r} is not a positive whole number; set it to the number of decoding processes, e.g. 4")
        return int(env)
    return usable_cpus()


def usable_cpus() -> int:
    """The CPUs this process may run on (its affinity mask where the OS has one)."""
    return len(os.sched_getaffinity(0)) if hasattr(os, "sched_getaffinity") else os.cpu_count() or 1


def _die_with_parent() -> None:
    """Pool initializer: on Linux a worker is killed with its parent, so a `kill -9` of a build leaves no worker behind."""
    if sys.platform == "linux":
        import ctypes

        ctypes.CDLL(None).prctl(1, 9)  # PR_SET_PDEATHSIG, SIGKILL


def _decoded_chunks(files: list[Path], names: list[str], args: tuple[int, int, int], workers: int) -> Iterator[list[Decoded]]:
    """`decode_chunk` over consecutive chunks, in order: in this process for one worker, else in a pool.

    The pool works ahead on at most 2 chunks per worker, each assuming that every file before it is kept (its `rank`); with
    random crops, a chunk that skips files makes the chunks already sent decode again with their true ranks.
    """
    chunks = [slice(i, i + DECODE_CHUNK) for i in range(0, len(files), DECODE_CHUNK)]
    if workers <= 1:
        rank = 0
        for c in chunks:
            yield (items := decode_chunk(files[c], names[c], *args, rank))
            rank += sum(item.squares is not None for item in items)
        return
    method = "fork" if "fork" in multiprocessing.get_all_start_methods() else "spawn"
    with ProcessPoolExecutor(workers, multiprocessing.get_context(method), initializer=_die_with_parent) as pool:
        pending: deque[tuple[slice, int, Future]] = deque()
        todo, assumed = iter(chunks), 0
        while True:
            while len(pending) < 2 * workers and (c := next(todo, None)) is not None:
                pending.append((c, assumed, pool.submit(decode_chunk, files[c], names[c], *args, assumed)))
                assumed += len(files[c])
            if not pending:
                return
            _, _, future = pending.popleft()
            yield (items := future.result())
            missing = sum(item.squares is None for item in items)
            if missing and args[1] > 1:
                for c, rank, stale in [pending.popleft() for _ in range(len(pending))]:
                    stale.cancel()
                    pending.append((c, rank - missing, pool.submit(decode_chunk, files[c], names[c], *args, rank - missing)))
                assumed -= missing


def decode_stream(
    files: list[Path], root: Path, image_size: int, crops: int = 1, seed: int = 0, workers: int | None = None
) -> Iterator[Decoded]:
    """Each file decoded (`decode_file`), in file order, by `workers` processes (default `decode_workers()`), a chunk at a time:
    the result does not depend on the number of workers. Raises DataError at the end when no file was usable."""
    names = [str(path.relative_to(root)) for path in files]
    workers = min(workers or decode_workers(), -(-len(files) // DECODE_CHUNK))  # a handful of files decode in this process
    skipped = []
    for items in _decoded_chunks(files, names, (image_size, crops, seed), workers):
        for item in items:
            if item.squares is None:
                skipped.append((item.name, item.reason))
            yield item
    if len(skipped) == len(files):
        reasons = "; ".join(f"{n}: {r}" for n, r in skipped[:3])
        raise DataError(f"no usable colour images in {root} ({len(files)} files, {len(skipped)} skipped{': ' + reasons if reasons else ''})")


def decode_cached(source: str, files: list[Path], root: Path, image_size: int, crops: int = 1, seed: int = 0) -> ImageSet:
    """`decode_stream` through the decode-once cache (colorbench.cache): decoded on first use, memory-mapped from disk after."""
    params = {"image_size": image_size, "crops": crops, "seed": seed}
    shape = (len(files) * crops, image_size, image_size, 3)
    return cached(source, params, files, root, lambda: track(decode_stream(files, root, image_size, crops, seed), "decoding images", len(files)), shape)


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
