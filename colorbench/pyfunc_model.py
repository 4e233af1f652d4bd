"""The MLflow pyfunc model of a cell run, logged as code (MLflow's models-from-code), never as a pickled object.

`checkpoints.log_pyfunc` copies this file into the model; `mlflow.pyfunc.load_model` runs it, and `set_model` hands MLflow
the model. It relies only on colorbench's public API (`colorbench.load`, `colorbench.plugins.load_plugins`), so moving
colorbench's internals does not break logged models. The model's config records the plugin modules of the run that
logged it (`plugins`); they are imported before the checkpoint is read, so plugin components load too.
"""

from __future__ import annotations

import mlflow
import numpy as np
from mlflow.models import set_model

import colorbench
from colorbench.plugins import load_plugins


class ColorizeImages(mlflow.pyfunc.PythonModel):
    """A batch of uint8 RGB images (N,H,W,3) -> their colorized versions, same shape."""

    def load_context(self, context: mlflow.pyfunc.PythonModelContext) -> None:
        load_plugins((context.model_config or {}).get("plugins", []))
        self.colorizer = colorbench.load(context.artifacts["checkpoint"])

    def predict(self, context: mlflow.pyfunc.PythonModelContext, model_input: np.ndarray, params: dict | None = None) -> np.ndarray:
        return np.stack(self.colorizer.colorize_many(list(np.asarray(model_input, dtype=np.uint8))))


set_model(ColorizeImages())
