"""Colorize photos with a trained model: `colorbench.load`, `colorbench colorize`, and the MLflow pyfunc model of a cell run."""

from __future__ import annotations

import re
from collections.abc import Iterable, Sequence
from contextlib import ExitStack
from pathlib import Path

import mlflow
import numpy as np
import torch
import torch.nn.functional as F
from mlflow.exceptions import MlflowException
from PIL import Image

from colorbench import tracking
from colorbench.checkpoints import TrainedModel, load_checkpoint, load_run
from colorbench.compose import WriteRows, compose, gray, lightness, one_torch_thread, png_rows, strips
from colorbench.data import IMAGE_SUFFIXES, open_rgb
from colorbench.errors import ColorbenchError, ConfigError
from colorbench.train import resolve_device
from colorbench.ui import console, track

RUN_ID = re.compile(r"[0-9a-f]{32}")
CELL_ID = re.compile(r"[0-9a-f]{12}")
BATCH_SIZE = 8
ImageLike = Image.Image | np.ndarray


def as_photo(image: ImageLike) -> Image.Image:
    """A PIL image or a uint8 array (H,W), (H,W,1|3|4) -> a PIL image in mode L (gray) or RGB (alpha dropped)."""
    if isinstance(image, Image.Image):
        return image if image.mode in ("L", "RGB") else image.convert("RGB")
    arr = np.asarray(image)
    if arr.dtype != np.uint8:
        raise ValueError(f"image arrays must be uint8, got {arr.dtype}")
    if arr.ndim == 3 and arr.shape[-1] in (1, 3, 4):
        return Image.fromarray(np.ascontiguousarray(arr[..., 0] if arr.shape[-1] == 1 else arr[..., :3]))
    if arr.ndim != 2:
        raise ValueError(f"image arrays must be (H,W) or (H,W,1|3|4), got shape {arr.shape}")
    return Image.fromarray(arr)


def gray_image(image: ImageLike) -> np.ndarray:
    """One image's lightness alone as gray uint8 RGB: what the model sees."""
    return gray(lightness(np.asarray(as_photo(image))))


def into(array: np.ndarray) -> WriteRows:
    """A WriteRows storing rows into `array`."""

    def write(a: int, b: int, rows: np.ndarray) -> None:
        array[a:b] = rows

    return write


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

    def colorize_many(self, images: Sequence[ImageLike], batch_size: int = BATCH_SIZE) -> list[np.ndarray]:
        """Colorize images of any sizes, `batch_size` at a time through the model; each output keeps its input's size."""
        out = []
        for start in range(0, len(images), batch_size):
            photos = [as_photo(image) for image in images[start : start + batch_size]]
            for photo, ab in zip(photos, self.predict_ab(photos), strict=True):
                out.append(np.empty((photo.height, photo.width, 3), np.uint8))
                compose(photo, ab, into(out[-1]))
        return out

    @torch.no_grad()
    def predict_ab(self, photos: Sequence[Image.Image]) -> torch.Tensor:
        """The model's ab (N,2,size,size) on the CPU. Its input is each photo's full-resolution lightness resized to the working
        size a strip at a time (antialiased bilinear across each strip, then down the column of strips), so colour cannot
        leak into it and memory stays bounded."""
        small = []
        with one_torch_thread():
            for photo in photos:
                across = [
                    F.interpolate(lightness(np.asarray(photo.crop((0, a, photo.width, b))))[None, None], size=(b - a, self.size), mode="bilinear", antialias=True)
                    for a, b in strips(photo.height, photo.width)
                ]
                small.append(F.interpolate(torch.cat(across, dim=2), size=(self.size, self.size), mode="bilinear", antialias=True))
        return self.objective.decode(self.model(torch.cat(small).to(self.device))).float().cpu()

    def colorize_file(self, path: Path, target: Path, compare: bool = False) -> None:
        """Colorize one image file into the PNG `target` (and `<target>_compare.png`: gray | colorized | original), written a
        strip at a time; raises DataError if it cannot be decoded (PIL's decompression-bomb limit included) and MemoryError if
        it does not fit in memory. A gray photo is held at 1 byte a pixel, a colour one at 4 (PIL's RGB)."""
        photo = open_rgb(path, draft=False, keep_gray=True)
        ab = self.predict_ab([photo])[0]
        width, height = photo.size
        with ExitStack() as files:
            write = files.enter_context(png_rows(target, width, height))
            panel = files.enter_context(png_rows(target.with_name(f"{target.stem}_compare.png"), 3 * width, height)) if compare else None
            compose(photo, ab, write, panel)


def load_trained(model: str, device: str | torch.device = "cpu") -> TrainedModel:
    """MODEL: a checkpoint file, a cell id (its newest finished cell run), an MLflow run id (fold run, or cell run = its deployed
    child), a `runs:/<run id>/...` URI or a registered `models:/<name>/<version>` URI."""
    if Path(model).is_file():
        return load_checkpoint(model, device)
    if model.startswith("models:/"):
        name, _, version = model.removeprefix("models:/").partition("/")
        model = tracking.model_version_run(name, version)
    run_id = cell_run(model) if CELL_ID.fullmatch(model) else model.removeprefix("runs:/").split("/")[0]
    if not RUN_ID.fullmatch(run_id):
        raise ConfigError(f"model {model!r} is neither a checkpoint file, a cell id (12 hex digits), an MLflow run id (32) nor a runs:/<run id> URI")
    try:
        return load_run(run_id, device)
    except MlflowException as err:
        raise ConfigError(f"cannot load the model of run {run_id} from tracking store {mlflow.get_tracking_uri()}: {err.message}") from None


def cell_run(cell_id: str) -> str:
    """The run id of the newest finished cell run of `cell_id` in the tracking store; ConfigError when it has none."""
    runs = tracking.finished_cell_runs(cell_id)
    if not runs:
        raise ConfigError(f"no finished run of cell {cell_id} in tracking store {mlflow.get_tracking_uri()}; pass --tracking-uri, or a run id")
    if len({r.info.experiment_id for r in runs}) > 1:
        names = ", ".join(sorted({tracking.experiment_name(r.info.experiment_id) for r in runs}))
        console.print(f"cell {cell_id} was trained in several experiments ({names}); using the newest run, {runs[0].info.run_id}", highlight=False)
    return runs[0].info.run_id


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
