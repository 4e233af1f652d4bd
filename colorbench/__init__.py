"""colorbench: compare how image-colorization models should be trained, every run logged to MLflow."""

from __future__ import annotations

from typing import TYPE_CHECKING

if TYPE_CHECKING:
    from colorbench.colorize import Colorizer

__version__ = "0.1.0"


def load(model: str, device: str = "auto", size: int | None = None) -> Colorizer:
    """A Colorizer from a checkpoint file, an MLflow run id (cell run = its best fold) or a `runs:/` URI (imported lazily)."""
    from colorbench.colorize import load as load_colorizer

    return load_colorizer(model, device, size)
