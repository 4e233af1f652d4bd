"""Colorize photos with a trained model: `colorbench.load`, `colorbench colorize`, and the MLflow pyfunc model of a cell run."""

from __future__ import annotations

import re
from collections.abc import Callable, Iterable, Sequence
from pathlib import Path

import mlflow
import numpy as np
import torch
import torch.nn.functional as F
from mlflow.exceptions import MlflowException
from mlflow.tracking import MlflowClient
from PIL import Image

from colorbench.checkpoints import TrainedModel, load_checkpoint, load_run
from colorbench.color import lab_to_rgb, rgb_to_lab
from colorbench.data import IMAGE_SUFFIXES, gray_rgb, lab_batch, open_rgb
from colorbench.errors import ColorbenchError, ConfigError
from colorbench.train import resolve_device
from colorbench.ui import track

RUN_ID = re.compile(r"[0-9a-f]{32}")
BATCH_SIZE = 8
GAMUT_TOLERANCE = 0.2  # Lab units a colour may move when converted to sRGB and back
PNG_LEVEL = 1  # zlib level of the written PNGs: 3 times faster than PIL's default (6) on large photos, files about 1.7 times larger
STRIP_PIXELS = 1 << 18  # pixels per strip of full-resolution composition: bounds its working memory whatever the photo's size
ImageLike = Image.Image | np.ndarray
ReadRows = Callable[[int, int], np.ndarray]  # (first row, end row) -> those rows of a photo, uint8 (rows, W, 3)
WriteRows = Callable[[int, int, np.ndarray], None]  # (first row, end row, colorized uint8 rows) -> stored


def as_rgb(image: ImageLike) -> np.ndarray:
    """A PIL image or a uint8 array (H,W), (H,W,1|3|4) -> a new uint8 (H,W,3) RGB array (alpha dropped)."""
    if isinstance(image, Image.Image):
        return np.array(image.convert("RGB"))
    arr = np.asarray(image)
    if arr.dtype != np.uint8:
        raise ValueError(f"image arrays must be uint8, got {arr.dtype}")
    if arr.ndim == 2:
        arr = arr[..., None]
    if arr.ndim != 3 or arr.shape[-1] not in (1, 3, 4):
        raise ValueError(f"image arrays must be (H,W) or (H,W,1|3|4), got shape {arr.shape}")
    return np.array(np.broadcast_to(arr, (*arr.shape[:2], 3)) if arr.shape[-1] == 1 else arr[..., :3])


def gray_image(image: ImageLike) -> np.ndarray:
    """One image's lightness alone as gray uint8 RGB: what the model sees."""
    return gray_rgb(as_rgb(image)[None])[0]


def lab_to_rgb_keeping_L(L: torch.Tensor, ab: torch.Tensor, steps: int = 8) -> torch.Tensor:
    """Lab -> sRGB in [0,1] without changing L: out-of-gamut pixels lose chroma (bisection on an ab scale, on those pixels
    alone) instead of being clipped."""

    def convert(L: torch.Tensor, ab: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        lab = torch.cat([L, ab], dim=1)
        rgb = lab_to_rgb(lab)
        return rgb, (rgb_to_lab(rgb) - lab).abs().amax(dim=1, keepdim=True) < GAMUT_TOLERANCE

    rgb, fits = convert(L, ab)
    outside = ~fits[:, 0]  # (B,H,W)
    if not bool(outside.any()):
        return rgb
    L_out, ab_out = (x.permute(0, 2, 3, 1)[outside].T[None, :, None] for x in (L, ab))  # (1,C,1,P): the out-of-gamut pixels
    lo, hi = torch.zeros_like(L_out), torch.ones_like(L_out)
    for _ in range(steps):
        mid = (lo + hi) / 2
        ok = convert(L_out, ab_out * mid)[1]
        lo, hi = torch.where(ok, mid, lo), torch.where(ok, hi, mid)
    rgb.permute(0, 2, 3, 1)[outside] = lab_to_rgb(torch.cat([L_out, ab_out * lo], dim=1))[0, :, 0].T
    return rgb


def to_uint8(rgb: torch.Tensor) -> np.ndarray:
    """Float RGB (N,3,H,W) in [0,1] -> uint8 (N,H,W,3)."""
    return rgb.mul(255).round().byte().permute(0, 2, 3, 1).cpu().numpy()


def strips(height: int, width: int) -> list[tuple[int, int]]:
    """(first row, end row) of consecutive strips of about STRIP_PIXELS pixels (at least one row) covering the photo."""
    step = max(1, STRIP_PIXELS // width)
    return [(a, min(a + step, height)) for a in range(0, height, step)]


def array_rows(rgb: np.ndarray) -> tuple[ReadRows, WriteRows, np.ndarray]:
    """Strip access to a uint8 (H,W,3) array: reading its rows, and writing colorized rows into a new array (returned)."""
    out = np.empty_like(rgb)

    def write(a: int, b: int, rows: np.ndarray) -> None:
        out[a:b] = rows

    return lambda a, b: rgb[a:b], write, out


def pil_rows(image: Image.Image, compare: Image.Image | None = None) -> tuple[ReadRows, WriteRows]:
    """Strip access to an RGB PIL image, colorized in place (a huge photo is held once); with `compare` (3 x its width) each
    strip's gray | colorized | original is pasted there first."""

    def read(a: int, b: int) -> np.ndarray:
        return np.asarray(image.crop((0, a, image.width, b)))

    def write(a: int, b: int, rows: np.ndarray) -> None:
        if compare is not None:
            original = read(a, b)
            compare.paste(Image.fromarray(np.concatenate([gray_image(original), rows, original], axis=1)), (0, a))
        image.paste(Image.fromarray(rows), (0, a))

    return read, write


class Colorizer:
    """A trained model ready to colorize photos of any size from their own full-resolution lightness (kept exactly)."""

    def __init__(self, trained: TrainedModel, device: str | torch.device = "auto", size: int | None = None) -> None:
        self.device = resolve_device(device) if isinstance(device, str) else device
        self.model = trained.model.to(self.device).eval()
        self.objective = trained.objective
        self.size = size or trained.image_size  # the square working size the model sees
        self.meta = trained.meta

    def set_temperature(self, temperature: float) -> None:
        """Annealed-mean temperature of a cross-entropy model (lower: more saturated colours)."""
        if not hasattr(self.objective, "temperature"):
            raise ConfigError(f"--temperature applies to cross-entropy losses only; this model's loss is {self.meta['loss']['name']}")
        self.objective.temperature = temperature

    def colorize(self, image: ImageLike) -> np.ndarray:
        """One image (PIL or uint8 array) -> colorized uint8 (H,W,3) at the input's size."""
        return self.colorize_many([image])[0]

    @torch.no_grad()
    def colorize_many(self, images: Sequence[ImageLike], batch_size: int = BATCH_SIZE) -> list[np.ndarray]:
        """Colorize images of any sizes, `batch_size` at a time; each output keeps its input's size."""
        out = []
        for start in range(0, len(images), batch_size):
            rgbs = [as_rgb(img) for img in images[start : start + batch_size]]
            access = [array_rows(rgb) for rgb in rgbs]
            ab = self.predict_ab([(read, *rgb.shape[:2]) for rgb, (read, _, _) in zip(rgbs, access, strict=True)])
            for rgb, (read, write, colorized), ab_small in zip(rgbs, access, ab, strict=True):
                self.compose(read, write, *rgb.shape[:2], ab_small)
                out.append(colorized)
        return out

    def lightness(self, rgb_rows: np.ndarray) -> torch.Tensor:
        """uint8 rows (h,W,3) -> their Lab lightness (1,1,h,W) on the model's device."""
        return lab_batch(torch.from_numpy(np.array(rgb_rows)).to(self.device)[None])[0]

    @torch.no_grad()
    def predict_ab(self, photos: Sequence[tuple[ReadRows, int, int]]) -> torch.Tensor:
        """The model's ab (N,2,size,size) for photos given as (read rows, height, width): each photo's lightness is resized to
        the working size a strip at a time (antialiased bilinear across each strip, then down the column of strips)."""
        small = []
        for read, height, width in photos:
            across = [F.interpolate(self.lightness(read(a, b)), size=(b - a, self.size), mode="bilinear", antialias=True) for a, b in strips(height, width)]
            small.append(F.interpolate(torch.cat(across, dim=2), size=(self.size, self.size), mode="bilinear", antialias=True))
        return self.objective.decode(self.model(torch.cat(small))).float()

    @torch.no_grad()
    def compose(self, read: ReadRows, write: WriteRows, height: int, width: int, ab_small: torch.Tensor) -> None:
        """Full-resolution colour, a strip at a time: `ab_small` (2,s,s) upsampled bilinearly (down the rows once, across each
        strip) and combined with the strip's own lightness (`lab_to_rgb_keeping_L`), so memory stays bounded for any photo size."""
        down = F.interpolate(ab_small[None], size=(height, ab_small.shape[-1]), mode="bilinear", align_corners=False)
        for a, b in strips(height, width):
            ab = F.interpolate(down[..., a:b, :], size=(b - a, width), mode="bilinear", align_corners=False)
            write(a, b, to_uint8(lab_to_rgb_keeping_L(self.lightness(read(a, b)), ab))[0])

    def colorize_file(self, path: Path, target: Path, compare: bool = False) -> None:
        """Colorize one image file into the PNG `target` (and `<target>_compare.png`), a strip at a time, the photo decoded once
        and colorized in place; raises DataError if it cannot be decoded (PIL's decompression-bomb limit included) and
        MemoryError if it does not fit in memory."""
        image = open_rgb(path, draft=False)
        panel = Image.new("RGB", (3 * image.width, image.height)) if compare else None
        read, write = pil_rows(image, panel)
        self.compose(read, write, image.height, image.width, self.predict_ab([(read, image.height, image.width)])[0])
        target.parent.mkdir(parents=True, exist_ok=True)
        image.save(target, compress_level=PNG_LEVEL)
        if panel is not None:
            panel.save(target.with_name(f"{target.stem}_compare.png"), compress_level=PNG_LEVEL)


def load_trained(model: str, device: str | torch.device = "cpu") -> TrainedModel:
    """MODEL: a checkpoint file, an MLflow run id (fold run, or cell run = its deployed child), a `runs:/<run id>/...` URI
    or a registered `models:/<name>/<version>` URI."""
    if Path(model).is_file():
        return load_checkpoint(model, device)
    if model.startswith("models:/"):
        name, _, version = model.removeprefix("models:/").partition("/")
        try:
            model = MlflowClient().get_model_version(name, version).run_id
        except MlflowException as err:
            raise ConfigError(f"cannot find registered model {name!r} version {version!r}: {err.message}") from None
    run_id = model.removeprefix("runs:/").split("/")[0]
    if not RUN_ID.fullmatch(run_id):
        raise ConfigError(f"model {model!r} is neither a checkpoint file nor an MLflow run id (32 hex digits) or runs:/<run id> URI")
    try:
        return load_run(run_id, device)
    except MlflowException as err:
        raise ConfigError(f"cannot load the model of run {run_id} from tracking store {mlflow.get_tracking_uri()}: {err.message}") from None


def load(model: str, device: str = "auto", size: int | None = None) -> Colorizer:
    """A Colorizer from a checkpoint file, an MLflow run id (cell run = its deployed child), a `runs:/` or `models:/` URI."""
    dev = resolve_device(device)
    return Colorizer(load_trained(model, dev), dev, size)


def find_inputs(inputs: Iterable[str | Path]) -> tuple[list[tuple[Path, Path]], list[tuple[str, str]]]:
    """Files and folders (recursive) -> (file, output name relative to the output folder) pairs, and missing inputs."""
    found, missing = [], []
    for item in map(Path, inputs):
        if item.is_dir():
            found += [(p, p.relative_to(item)) for p in sorted(item.rglob("*")) if p.suffix.lower() in IMAGE_SUFFIXES and p.is_file()]
        elif item.is_file():
            found.append((item, Path(item.name)))
        else:
            missing.append((str(item), "no such file or folder"))
    return found, missing


def colorize_files(
    model: str | Colorizer,
    inputs: Iterable[str | Path],
    out_dir: str | Path,
    size: int | None = None,
    compare: bool = False,
) -> tuple[list[Path], list[tuple[str, str]]]:
    """Colorize image files and folders into `out_dir` as PNG, keeping relative names; return (written, (file, reason) failed).

    `size` overrides the model's working size; `compare` also writes `<name>_compare.png`: gray | colorized | original.
    """
    colorizer = model if isinstance(model, Colorizer) else load(model)
    colorizer.size = size or colorizer.size
    files, failed = find_inputs(inputs)
    out_dir = Path(out_dir)
    written: list[Path] = []
    for path, name in track(files, "colorizing"):
        target = out_dir / name.with_suffix(".png")
        try:
            colorizer.colorize_file(path, target, compare)
            written.append(target)
        except ColorbenchError as err:
            failed.append((str(path), str(err).removeprefix(f"{path}: ")))
        except (MemoryError, torch.OutOfMemoryError) as err:
            failed.append((str(path), f"too large for the memory available ({type(err).__name__}); colorize it on a larger machine"))
    return written, failed
