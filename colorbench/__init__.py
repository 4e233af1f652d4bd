"""colorbench: compare how image-colorization models should be trained, every run logged to MLflow."""

from __future__ import annotations

from collections.abc import Iterable
from typing import TYPE_CHECKING

from colorbench.version import __version__ as __version__

if TYPE_CHECKING:
    from colorbench.colorize import Colorizer


def load(model: str, device: str = "auto", size: int | None = None, plugins: Iterable[str] = ()) -> Colorizer:
    """A Colorizer from a checkpoint file, an MLflow run id (cell run = its deployed child) or a `runs:/` URI (imported lazily), after
    the installed plugins and the `plugins` modules (a model may use their components)."""
    from colorbench.colorize import load as load_colorizer
    from colorbench.plugins import load_plugins

    load_plugins(plugins)
    return load_colorizer(model, device, size)
