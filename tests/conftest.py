"""Shared fixtures: tiny real grids on the bundled photos, temporary MLflow stores."""

from __future__ import annotations

import copy
import shutil
from pathlib import Path

import numpy as np
import pytest
import torch

from colorbench.data import builtin_photo_files

PHOTOS = builtin_photo_files()  # the 8 real colour photos scikit-image, scikit-learn and matplotlib ship: the suite needs no others
SHARED_DATA = Path(__file__).resolve().parents[2] / "shared" / "data"  # the larger sets beside the project: `-m shared_data` only



def rows_array(rows: object) -> np.ndarray:
    """Every row of what `fit` or `Objective.prepare` received (a tensor, an array, `images.ImageRows` or `train.DeviceRows`), as a
    numpy copy."""
    full = rows[0 : len(rows)]
    return full.cpu().numpy().copy() if isinstance(full, torch.Tensor) else np.array(full)


TINY_GRID = {
    "experiment": "tiny",
    "data": {"source": "builtin", "image_size": 32, "crops_per_photo": 3},
    "train": {"epochs": 2, "batch_size": 8, "lr": 1.0e-3, "seed": 0},
    "test_fraction": 0.25,
    "grid": {"backbone": ["resnet18-6"], "loss": ["mse"], "splitter": [{"name": "holdout", "val_fraction": 0.3}, {"name": "kfold", "k": 2}]},
}


@pytest.fixture(autouse=True)
def decode_cache(tmp_path_factory: pytest.TempPathFactory, monkeypatch: pytest.MonkeyPatch) -> Path:
    """Every test decodes into one temporary cache folder per session, never into the user's cache."""
    path = tmp_path_factory.getbasetemp() / "decode-cache"
    monkeypatch.setenv("COLORBENCH_CACHE_DIR", str(path))
    return path


@pytest.fixture
def tiny_grid() -> dict:
    """A fresh copy of a grid small enough to train in seconds on a CPU."""
    return copy.deepcopy(TINY_GRID)


@pytest.fixture(scope="session")
def empty_store(tmp_path_factory: pytest.TempPathFactory) -> Path:
    """An MLflow SQLite file with its schema created once (creating the schema takes seconds)."""
    from mlflow.tracking import MlflowClient

    path = tmp_path_factory.mktemp("store") / "mlflow.db"
    MlflowClient(f"sqlite:///{path}").search_experiments()
    return path


def run_grids_in_store(folder: Path, empty_store: Path, *grids: dict) -> tuple[str, list]:
    """Each grid trained into a copy of the empty store in `folder` (the working directory meanwhile, MLFLOW_TRACKING_URI unset):
    the store's URI and each grid's `run_grid` result."""
    from colorbench.resolve import parse_experiment
    from colorbench.runner import run_grid

    shutil.copy(empty_store, folder / "mlflow.db")
    uri = f"sqlite:///{folder / 'mlflow.db'}"
    with pytest.MonkeyPatch.context() as mp:
        mp.chdir(folder)
        mp.delenv("MLFLOW_TRACKING_URI", raising=False)
        return uri, [run_grid(parse_experiment(grid), uri) for grid in grids]


@pytest.fixture
def tracking_uri(tmp_path: Path, monkeypatch: pytest.MonkeyPatch, empty_store: Path) -> str:
    """A fresh temporary SQLite MLflow store; the working directory moves to tmp_path so nothing lands in the repo."""
    monkeypatch.chdir(tmp_path)
    monkeypatch.delenv("MLFLOW_TRACKING_URI", raising=False)
    shutil.copy(empty_store, tmp_path / "mlflow.db")
    return f"sqlite:///{tmp_path / 'mlflow.db'}"
