"""Model files: a fold's `checkpoint.pt` written and read back as tensors and plain data only (never unpickled objects),
the trained fold of an MLflow run (a fold run, or a cell run = its deployed child, chosen without the test set), and the MLflow
pyfunc model logged from a checkpoint.

A checkpoint is a dict: `format` (FORMAT), `state_dict` (tensors), `backbone` and `loss` ({name, options}), `image_size`,
`cell_id`, `fold`, and `decoding` ({`decode_temperature` or `chroma_scale`: value}) when `train.decode` chose one on validation:
every load applies it (`load_checkpoint`). It loads with `torch.load(weights_only=True)`, so a file that holds any other object is refused before
that object is built: loading a checkpoint from someone else cannot run their code.
"""

from __future__ import annotations

import pickle
import re
from dataclasses import dataclass
from importlib.metadata import version
from pathlib import Path
from typing import Any

import mlflow
import numpy as np
import torch
from mlflow.models import ModelSignature
from mlflow.types.schema import Schema, TensorSpec

from colorbench import tracking
from colorbench.atomic import atomic_path
from colorbench.backbones import ColorizationNet, build_model
from colorbench.config import Cell
from colorbench.errors import ConfigError
from colorbench.losses import LOSSES, Objective
from colorbench.plugins import load_plugins, loaded_plugins

FORMAT = 1  # checkpoints without `format` (written before it existed) have the same layout
REQUIRED = ("state_dict", "backbone", "loss", "image_size")
REFUSED_GLOBAL = re.compile(r"GLOBAL (\S+)")


@dataclass
class TrainedModel:
    """A fold's best model, the objective that decodes its output, and its working image size."""

    model: ColorizationNet
    objective: Objective
    image_size: int
    meta: dict


def save_checkpoint(
    path: str | Path, cell: Cell, fold: int, image_size: int, state_dict: dict[str, torch.Tensor], decoding: dict[str, float] | None = None
) -> None:
    """Write a fold's best weights with what rebuilds its net and decodes its output, atomically (a kill mid-write leaves the old file)."""
    checkpoint = {
        "format": FORMAT,
        "state_dict": state_dict,
        "backbone": cell.backbone.model_dump(),
        "loss": cell.loss.model_dump(),
        "image_size": int(image_size),
        "cell_id": cell.id,
        "fold": int(fold),
        **({"decoding": {k: float(v) for k, v in decoding.items()}} if decoding else {}),
    }
    with atomic_path(path) as tmp:
        torch.save(checkpoint, tmp)


def read_checkpoint(path: str | Path, device: str | torch.device = "cpu") -> dict[str, Any]:
    """A checkpoint's dict, loaded as tensors and plain data only; anything else is a one-line ConfigError."""
    try:
        ckpt = torch.load(path, map_location=device, weights_only=True)
    except pickle.UnpicklingError as err:
        refused = REFUSED_GLOBAL.search(str(err))
        if refused is None:
            raise ConfigError(f"cannot load checkpoint {path}: not a readable torch file") from None
        raise ConfigError(
            f"refusing checkpoint {path}: it holds a Python object ({refused.group(1)}), and loading one can run code; a colorbench "
            "checkpoint holds only tensors and plain data. If you made it and trust it, load it once with torch.load(path, weights_only=False) "
            f"and torch.save a dict of only its tensors and plain values ({', '.join(REQUIRED)})"
        ) from None
    except (OSError, RuntimeError, EOFError) as err:
        raise ConfigError(f"cannot load checkpoint {path}: {err}") from None
    if not isinstance(ckpt, dict) or any(key not in ckpt for key in REQUIRED):
        raise ConfigError(f"{path} is not a colorbench checkpoint: it needs the keys {', '.join(REQUIRED)}")
    if ckpt.get("format", FORMAT) != FORMAT:
        raise ConfigError(f"checkpoint {path} has format {ckpt['format']!r}; this colorbench reads format {FORMAT}: use the version that wrote it")
    return ckpt


def load_checkpoint(path: str | Path, device: str | torch.device = "cpu") -> TrainedModel:
    """Rebuild the net from a `checkpoint.pt` written by `colorbench run` (see `read_checkpoint`), its objective tuned to the decoding
    chosen on validation when there is one."""
    ckpt = read_checkpoint(path, device)
    objective = LOSSES.build(ckpt["loss"]["name"], ckpt["loss"]["options"])
    for name, value in ckpt.get("decoding", {}).items():
        if name != objective.tuning:
            raise ConfigError(f"checkpoint {path} sets the decoding {name!r}, which loss {ckpt['loss']['name']!r} does not have ({objective.tuning}): it is damaged")
        objective.tune(value)
    model = build_model(ckpt["backbone"]["name"], ckpt["backbone"]["options"], objective.out_channels)
    model.load_state_dict(ckpt["state_dict"])
    meta = {k: v for k, v in ckpt.items() if k != "state_dict"}
    return TrainedModel(model.to(device).eval(), objective, int(ckpt["image_size"]), meta)


def load_run(run_id: str, device: str | torch.device = "cpu") -> TrainedModel:
    """The model of an MLflow fold run (or the deployed child of a cell run) in the current tracking store, after importing the
    plugin modules the run recorded (its components may come from them)."""
    child = tracking.deployed_run(run_id)
    load_plugins(tracking.plugins_of(tracking.run_tags(child)))
    with tracking.downloaded(child, "checkpoint.pt") as path:
        return load_checkpoint(path, device)


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
    """Log the deployed child's checkpoint of the (active) cell run as its pyfunc model."""
    with tracking.downloaded(tracking.deployed_run(cell_run_id), "checkpoint.pt") as path:
        log_pyfunc(str(path))
