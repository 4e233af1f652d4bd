"""Fit one fold: seeded mini-batch training on the device, per-epoch validation, best checkpoint, test scoring."""

from __future__ import annotations

import copy
import math
import time
from collections.abc import Callable, Iterator
from contextlib import AbstractContextManager
from dataclasses import dataclass, field

import torch

from colorbench.backbones import ColorizationNet
from colorbench.config import TrainConfig
from colorbench.data import augment, lab_batch, random_boxes
from colorbench.errors import ConfigError, DivergedError
from colorbench.losses import Objective
from colorbench.metrics import ColorizationMetrics, decoded

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


def autocast_dtype(precision: str, device: torch.device) -> torch.dtype | None:
    """The autocast dtype for `train.precision` on `device`: bf16 for 'bf16', and for 'auto' on a CUDA GPU with bf16; else None (fp32)."""
    if precision == "bf16" or (precision == "auto" and device.type == "cuda" and torch.cuda.is_bf16_supported()):
        return torch.bfloat16
    return None


def autocast(device: torch.device, dtype: torch.dtype | None) -> AbstractContextManager:
    """Autocast to `dtype` on `device` (None: plain fp32)."""
    return torch.autocast(device.type, dtype=dtype or torch.bfloat16, enabled=dtype is not None)


def stage(images: torch.Tensor, device: torch.device) -> torch.Tensor:
    """Where uint8 images (N,H,W,3) wait during training: on a CUDA device in its memory when they take under half of
    what is free, else in pinned host memory (batches then copy without blocking); on other devices, where they are."""
    if device.type != "cuda":
        return images
    free, _ = torch.cuda.mem_get_info(device)
    return images.to(device) if images.nbytes < free // 2 else images.pin_memory()


def to_device(batch: torch.Tensor, device: torch.device) -> torch.Tensor:
    """A host batch on `device`: through pinned memory with a non-blocking copy when going to CUDA."""
    if batch.device.type == device.type:
        return batch
    if device.type == "cuda":
        batch = batch.pin_memory()
    return batch.to(device, non_blocking=True)


def epoch_draws(n: int, size: int, cfg: TrainConfig, generator: torch.Generator) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor | None]:
    """One epoch's random order of n images, and in that order their flips and (when `cfg.crop` < 1) crop boxes."""
    order = torch.randperm(n, generator=generator)
    flips = (torch.rand(n, generator=generator) < 0.5)[order]
    boxes = random_boxes(n, size, cfg.crop, generator)[order] if cfg.crop < 1 else None
    return order, flips, boxes


def train_batches(images: torch.Tensor, cfg: TrainConfig, generator: torch.Generator, device: torch.device) -> Iterator[tuple[torch.Tensor, torch.Tensor]]:
    """One epoch of (L, ab) training batches from uint8 images (N,S,S,3) held on `device` or on the host.

    The epoch's draws (`epoch_draws`) go to the device in one copy; each batch is gathered there (or copied there from
    the host), cropped and flipped by `augment` while still uint8, and only then converted to Lab.
    """
    n = len(images)
    order, flips, boxes = epoch_draws(n, images.shape[1], cfg, generator)
    on_device = images.device.type == device.type
    order, flips = order.to(images.device), flips.to(device)
    boxes = None if boxes is None else boxes.to(device)
    for start in range(0, n, cfg.batch_size):
        stop = min(start + cfg.batch_size, n)
        if stop - start < 2 < n:  # BatchNorm cannot train on a single image
            continue
        rgb = images[order[start:stop]]
        rgb = rgb if on_device else to_device(rgb, device)
        yield lab_batch(augment(rgb, flips[start:stop], None if boxes is None else boxes[start:stop]))


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
    model: ColorizationNet,
    objective: Objective,
    images: torch.Tensor,
    batch_size: int,
    all_variants: bool = False,
    amp: torch.dtype | None = None,
) -> tuple[dict[str, float], list[dict[str, float]]]:
    """Loss and colorization metrics over uint8 images (N,H,W,3), batched on the model's device (forward under `amp`
    autocast, loss and metrics in fp32 or better); non-default decodings are named `<metric>.<variant>` (`metrics.decoded`)."""
    model.eval()
    device = next(model.parameters()).device
    variants = objective.variants if all_variants else objective.variants[:1]
    meters = {v: ColorizationMetrics() for v in variants}
    loss_sum = torch.zeros((), dtype=torch.float64, device=device)
    for start in range(0, len(images), batch_size):
        L, ab = lab_batch(to_device(images[start : start + batch_size], device))
        with autocast(device, amp):
            pred = model(L)
        pred = pred.float()
        loss_sum += objective(pred, ab, objective.pixel_weights(L, ab)).double() * len(L)
        for variant, meter in meters.items():
            meter.update(L, objective.decode(pred, variant), ab)
    metrics = {"loss": loss_sum.item() / len(images)}
    for variant, meter in meters.items():
        metrics.update({decoded(k, variant): v for k, v in meter.compute().items()})
    return metrics, meters[variants[0]].per_image()


def fit(
    model: ColorizationNet,
    objective: Objective,
    train_images: torch.Tensor,
    val_images: torch.Tensor,
    cfg: TrainConfig,
    on_epoch: EpochCallback | None = None,
) -> FoldResult:
    """Train with Adam; keep the state with the lowest validation loss; stop early after `cfg.patience` bad epochs.

    Batches stay uint8 until they are on the device (see `train_batches`); the model runs under `cfg.precision`
    autocast, the loss in fp32; the model is channels_last if `cfg.channels_last` (faster on CUDA and on a CPU alike).
    On CUDA the images move to GPU memory when they fit (`stage`). The loss is summed on the device and checked once
    per epoch, so the host never waits for the GPU mid-epoch. Each epoch's record includes its training throughput,
    `train_images_per_s`.
    """
    started = time.perf_counter()
    device = next(model.parameters()).device
    amp = autocast_dtype(cfg.precision, device)
    if cfg.channels_last:
        model.to(memory_format=torch.channels_last)
    forward = torch.compile(model) if cfg.compile else model
    generator = torch.Generator().manual_seed(cfg.seed)
    optimizer = torch.optim.Adam(model.parameters(), lr=cfg.lr, weight_decay=cfg.weight_decay)
    train_images, val_images = stage(train_images, device), stage(val_images, device)
    objective.prepare(train_images.to(device))
    history: list[dict[str, float]] = []
    best_loss, best_epoch, best_state = math.inf, 0, copy.deepcopy(model.state_dict())
    for epoch in range(1, cfg.epochs + 1):
        model.train()
        epoch_started = time.perf_counter()
        total, seen = torch.zeros((), dtype=torch.float64, device=device), 0
        for L, ab in train_batches(train_images, cfg, generator, device):
            with autocast(device, amp):
                pred = forward(L)
            loss = objective(pred.float(), ab, objective.pixel_weights(L, ab))
            optimizer.zero_grad(set_to_none=True)
            loss.backward()
            optimizer.step()
            total += loss.detach().double() * len(L)
            seen += len(L)
        train_loss = total.item() / max(seen, 1)
        if not math.isfinite(train_loss):
            raise DivergedError(f"training loss became {train_loss} in epoch {epoch}; lower train.lr (now {cfg.lr})")
        rate = seen / (time.perf_counter() - epoch_started)
        val, _ = evaluate(model, objective, val_images, cfg.batch_size, amp=amp)
        record = {"epoch": epoch, "train_loss": train_loss, "train_images_per_s": rate, **{f"val_{k}": v for k, v in val.items()}}
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
