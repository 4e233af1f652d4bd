"""Load a trained fold back: from a checkpoint file or an MLflow run (a fold run, or a cell run = its best fold)."""

from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path

import torch
from mlflow.tracking import MlflowClient

from colorbench import tracking
from colorbench.backbones import ColorizationNet, build_model
from colorbench.components import LOSSES
from colorbench.errors import ConfigError
from colorbench.losses import Objective


@dataclass
class TrainedModel:
    """A fold's best model, the objective that decodes its output, and its working image size."""

    model: ColorizationNet
    objective: Objective
    image_size: int
    meta: dict


def load_checkpoint(path: str | Path, device: str | torch.device = "cpu") -> TrainedModel:
    """Rebuild the net from a `checkpoint.pt` written by `colorbench run`."""
    try:
        ckpt = torch.load(path, map_location=device, weights_only=False)
    except (OSError, RuntimeError, EOFError) as err:
        raise ConfigError(f"cannot load checkpoint {path}: {err}") from None
    objective = LOSSES.build(ckpt["loss"]["name"], ckpt["loss"]["options"])
    model = build_model(ckpt["backbone"]["name"], ckpt["backbone"]["options"], objective.out_channels)
    model.load_state_dict(ckpt["state_dict"])
    meta = {k: v for k, v in ckpt.items() if k != "state_dict"}
    return TrainedModel(model.to(device).eval(), objective, int(ckpt["image_size"]), meta)


def best_fold_run(run_id: str) -> str:
    """A fold run id as is; for a cell or search-trial (parent) run, its fold with the highest test PSNR."""
    client = MlflowClient()
    run = client.get_run(run_id)
    if run.data.tags.get(tracking.TAG_ROLE) not in tracking.PARENT_ROLES:
        return run_id
    children = client.search_runs(
        [run.info.experiment_id],
        filter_string=f"tags.mlflow.parentRunId = '{run_id}' and attributes.status = 'FINISHED'",
        order_by=["metrics.test_psnr DESC"],
        max_results=1,
    )
    if not children:
        raise ConfigError(f"run {run_id} has no finished fold runs to load")
    return children[0].info.run_id


def load_run(run_id: str, device: str | torch.device = "cpu") -> TrainedModel:
    """The model of an MLflow fold run (or the best fold of a cell run) in the current tracking store."""
    path = tracking.download(best_fold_run(run_id), "checkpoint.pt")
    return load_checkpoint(path, device)
