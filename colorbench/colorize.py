"""Colorize photos with a trained model: `colorbench.load`, `colorbench colorize`, and the MLflow pyfunc model of a cell run."""

from __future__ import annotations

import re
import tempfile
from collections.abc import Iterable, Iterator, Sequence
from importlib.metadata import version
from pathlib import Path

import mlflow
import numpy as np
import torch
import torch.nn.functional as F
from mlflow.exceptions import MlflowException
from mlflow.models import ModelSignature
from mlflow.tracking import MlflowClient
from mlflow.types.schema import Schema, TensorSpec
from PIL import Image

from colorbench import tracking
from colorbench.checkpoints import TrainedModel, best_fold_run, load_checkpoint, load_run
from colorbench.color import lab_to_rgb, rgb_to_lab
from colorbench.data import IMAGE_SUFFIXES, gray_rgb, lab_batch, open_rgb
from colorbench.errors import ColorbenchError, ConfigError
from colorbench.plugins import loaded_plugins
from colorbench.train import resolve_device
from colorbench.ui import track

RUN_ID = re.compile(r"[0-9a-f]{32}")
BATCH_SIZE = 8
GAMUT_TOLERANCE = 0.2  # Lab units a colour may move when converted to sRGB and back
ImageLike = Image.Image | np.ndarray


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
    """Lab -> sRGB in [0,1] without changing L: out-of-gamut pixels lose chroma (bisection on an ab scale) instead of being clipped."""

    def fits(scale: torch.Tensor) -> torch.Tensor:
        lab = torch.cat([L, ab * scale], dim=1)
        return (rgb_to_lab(lab_to_rgb(lab)) - lab).abs().amax(dim=1, keepdim=True) < GAMUT_TOLERANCE

    lo = fits(torch.ones_like(L)).float()
    if bool(lo.all()):
        return lab_to_rgb(torch.cat([L, ab], dim=1))
    hi = torch.ones_like(L)
    for _ in range(steps):
        mid = (lo + hi) / 2
        ok = fits(mid)
        lo, hi = torch.where(ok, mid, lo), torch.where(ok, hi, mid)
    return lab_to_rgb(torch.cat([L, ab * lo], dim=1))


def to_uint8(rgb: torch.Tensor) -> np.ndarray:
    """Float RGB (N,3,H,W) in [0,1] -> uint8 (N,H,W,3)."""
    return rgb.mul(255).round().byte().permute(0, 2, 3, 1).cpu().numpy()


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
            lightness = [lab_batch(torch.from_numpy(as_rgb(img)).to(self.device)[None])[0] for img in images[start : start + batch_size]]
            small = torch.cat([F.interpolate(L, size=(self.size, self.size), mode="bilinear", antialias=True) for L in lightness])
            ab = self.objective.decode(self.model(small)).float()
            for L, ab_small in zip(lightness, ab, strict=True):
                ab_full = F.interpolate(ab_small[None], size=L.shape[-2:], mode="bilinear", align_corners=False)
                out.append(to_uint8(lab_to_rgb_keeping_L(L, ab_full))[0])
        return out


def load_trained(model: str, device: str | torch.device = "cpu") -> TrainedModel:
    """MODEL: a checkpoint file, an MLflow run id (fold run, or cell run = its best fold), a `runs:/<run id>/...` URI
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
    """A Colorizer from a checkpoint file, an MLflow run id (cell run = its best fold), a `runs:/` or `models:/` URI."""
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
    for batch in batches(track(files, "colorizing"), BATCH_SIZE):
        images, targets = [], []
        for path, name in batch:
            try:
                images.append(np.asarray(open_rgb(path, draft=False)))
                targets.append(out_dir / name.with_suffix(".png"))
            except ColorbenchError as err:
                failed.append((str(path), str(err).removeprefix(f"{path}: ")))
        for rgb, colorized, target in zip(images, colorizer.colorize_many(images), targets, strict=True):
            target.parent.mkdir(parents=True, exist_ok=True)
            Image.fromarray(colorized).save(target)
            written.append(target)
            if compare:
                Image.fromarray(np.concatenate([gray_image(rgb), colorized, rgb], axis=1)).save(
                    target.with_name(f"{target.stem}_compare.png")
                )
    return written, failed


def batches(items: Iterable, n: int) -> Iterator[list]:
    """Consecutive lists of up to n items."""
    batch = []
    for item in items:
        batch.append(item)
        if len(batch) == n:
            yield batch
            batch = []
    if batch:
        yield batch


IMAGES = TensorSpec(np.dtype(np.uint8), (-1, -1, -1, 3))


MODEL_CODE = Path(__file__).with_name("pyfunc_model.py")


def log_pyfunc(checkpoint_path: str | Path) -> None:
    """Log `checkpoint_path` as the active run's pyfunc model `model`, from code (`pyfunc_model.py`), with this process's
    plugin modules in its config (load: `mlflow.pyfunc.load_model("runs:/<id>/model")`)."""
    requirements = [f"{name}=={version(name).split('+')[0]}" for name in ("colorbench", "torch", "numpy", "pillow", "mlflow")]
    mlflow.pyfunc.log_model(
        name="model",
        python_model=str(MODEL_CODE),
        artifacts={"checkpoint": str(checkpoint_path)},
        model_config={"plugins": loaded_plugins()},
        signature=ModelSignature(inputs=Schema([IMAGES]), outputs=Schema([IMAGES])),
        input_example=np.zeros((1, 16, 16, 3), dtype=np.uint8),
        pip_requirements=requirements,  # colorbench itself is not on PyPI: serve with --env-manager local
    )


def log_cell_model(cell_run_id: str) -> None:
    """Log the best fold's checkpoint of the (active) cell run as its pyfunc model."""
    with tempfile.TemporaryDirectory(prefix="colorbench-") as tmp:
        log_pyfunc(str(tracking.download(best_fold_run(cell_run_id), "checkpoint.pt", Path(tmp))))
