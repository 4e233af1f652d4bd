"""Fit one fold: seeded mini-batch training on the device, per-epoch validation, best checkpoint, test scoring."""

from __future__ import annotations

import copy
import math
import time
from collections.abc import Callable
from dataclasses import dataclass, field

import torch

from colorbench.backbones import ColorizationNet
from colorbench.config import TrainConfig
from colorbench.data import lab_batch
from colorbench.errors import ConfigError, DivergedError
from colorbench.losses import Objective
from colorbench.metrics import ColorizationMetrics

EpochCallback = Callable[[dict[str, float]], None]


def resolve_device(name: str) -> torch.device:
    """'auto' -> CUDA when present, else CPU; otherwise the named device (clear error if absent)."""
    if name == "auto":
        return torch.device("cuda" if torch.cuda.is_available() else "cpu")
    if name.startswith("cuda") and not torch.cuda.is_available():
        raise ConfigError(f"train.device is {name!r} but CUDA is not available here; use device: auto or cpu")
    try:
        return torch.device(name)
    except RuntimeError:
        raise ConfigError(f"train.device {name!r} is not a torch device; use auto, cpu or cuda") from None


@dataclass
class FoldResult:
    """What one fold's training produced."""

    history: list[dict[str, float]]
    best_epoch: int
    best_state: dict[str, torch.Tensor]
    test_metrics: dict[str, float] = field(default_factory=dict)
    per_image: list[dict[str, float]] = field(default_factory=list)
    seconds: float = 0.0


@torch.no_grad()
def evaluate(
    model: ColorizationNet, objective: Objective, images: torch.Tensor, batch_size: int, all_variants: bool = False
) -> tuple[dict[str, float], list[dict[str, float]]]:
    """Loss and colorization metrics over uint8 images (N,H,W,3); non-default decodings get a `_variant` suffix."""
    model.eval()
    device = next(model.parameters()).device
    variants = objective.variants if all_variants else objective.variants[:1]
    meters = {v: ColorizationMetrics() for v in variants}
    loss_sum = 0.0
    for start in range(0, len(images), batch_size):
        L, ab = lab_batch(images[start : start + batch_size].to(device, non_blocking=True))
        pred = model(L)
        loss_sum += float(objective(pred, ab, objective.pixel_weights(L, ab))) * len(L)
        for variant, meter in meters.items():
            meter.update(L, objective.decode(pred, variant), ab)
    metrics = {"loss": loss_sum / len(images)}
    for variant, meter in meters.items():
        suffix = "" if variant == variants[0] else f"_{variant}"
        metrics.update({f"{k}{suffix}": v for k, v in meter.compute().items()})
    return metrics, meters[variants[0]].per_image()


def fit(
    model: ColorizationNet,
    objective: Objective,
    train_images: torch.Tensor,
    val_images: torch.Tensor,
    cfg: TrainConfig,
    on_epoch: EpochCallback | None = None,
) -> FoldResult:
    """Train with Adam; keep the state with the lowest validation loss; stop early after `cfg.patience` bad epochs."""
    started = time.perf_counter()
    device = next(model.parameters()).device
    generator = torch.Generator().manual_seed(cfg.seed)
    optimizer = torch.optim.Adam(model.parameters(), lr=cfg.lr, weight_decay=cfg.weight_decay)
    objective.prepare(train_images.to(device))
    history: list[dict[str, float]] = []
    best_loss, best_epoch, best_state = math.inf, 0, copy.deepcopy(model.state_dict())
    for epoch in range(1, cfg.epochs + 1):
        model.train()
        order = torch.randperm(len(train_images), generator=generator)
        flips = torch.rand(len(train_images), generator=generator) < 0.5
        total, seen = 0.0, 0
        for start in range(0, len(order), cfg.batch_size):
            idx = order[start : start + cfg.batch_size]
            if len(idx) < 2 < len(order):  # BatchNorm cannot train on a single image
                continue
            L, ab = lab_batch(train_images[idx].to(device, non_blocking=True), flips[idx].to(device))
            loss = objective(model(L), ab, objective.pixel_weights(L, ab))
            if not torch.isfinite(loss):
                raise DivergedError(f"training loss became {loss.item()} at epoch {epoch}; lower train.lr (now {cfg.lr})")
            optimizer.zero_grad(set_to_none=True)
            loss.backward()
            optimizer.step()
            total, seen = total + loss.item() * len(idx), seen + len(idx)
        val, _ = evaluate(model, objective, val_images, cfg.batch_size)
        record = {"epoch": epoch, "train_loss": total / max(seen, 1), **{f"val_{k}": v for k, v in val.items()}}
        history.append(record)
        if on_epoch:
            on_epoch(record)
        if val["loss"] < best_loss:
            best_loss, best_epoch = val["loss"], epoch
            best_state = {k: v.detach().to("cpu", copy=True) for k, v in model.state_dict().items()}
        elif cfg.patience and epoch - best_epoch >= cfg.patience:
            break
    model.load_state_dict(best_state)
    return FoldResult(history, best_epoch, best_state, seconds=time.perf_counter() - started)
