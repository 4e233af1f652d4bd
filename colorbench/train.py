"""Fit one fold: seeded mini-batch training on the device, per-epoch validation, best checkpoint, test scoring."""

from __future__ import annotations

import copy
import math
import threading
import time
from collections.abc import Callable, Iterator, Sequence
from contextlib import AbstractContextManager
from dataclasses import dataclass, field
from queue import Empty, Full, Queue
from typing import Any, TypeVar

import numpy as np
import torch

from colorbench.backbones import ColorizationNet
from colorbench.config import DecodeRule, TrainConfig
from colorbench.errors import ConfigError, DivergedError
from colorbench.images import HostImages, augment, gather, lab_batch, random_boxes
from colorbench.losses import Objective
from colorbench.metrics import ColorizationMetrics, badness, decoded

EpochCallback = Callable[[dict[str, float]], None]
MAX_AB_RMSE = 1000.0  # Lab units: real colours lie within about 260 of each other in ab, so a larger error means the model blew up
TrainingState = dict[str, Any]  # what `fit` needs to continue a fold: plain data and tensors only (loads with weights_only=True)
SaveState = Callable[[TrainingState], None]
Images = HostImages | torch.Tensor  # uint8 (N,H,W,3): rows on the host (an array, the cache's memory map, rows of it) or a tensor
T = TypeVar("T")
STAGE_CHUNK = 1024  # images per copy when a fold moves to GPU memory
RESIDENT_SHARE = 0.5  # a fold moves to GPU memory when it takes under this share of what is free (0: always stream)


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


def stage(images: Images, device: torch.device) -> Images:
    """Where uint8 images (N,H,W,3) wait during training: on a CUDA device in its memory when they take under RESIDENT_SHARE
    (half) of what is free (copied there a chunk at a time, so the host never holds the fold), else where they are: batches
    are then read from the host as they are needed (`device_batches`)."""
    if device.type != "cuda" or images.nbytes >= torch.cuda.mem_get_info(device)[0] * RESIDENT_SHARE:
        return images
    if isinstance(images, torch.Tensor):
        return images.to(device)
    staged = torch.empty(images.shape, dtype=torch.uint8, device=device)
    for start in range(0, len(images), STAGE_CHUNK):
        idx = np.arange(start, min(start + STAGE_CHUNK, len(images)))
        staged[start : start + len(idx)].copy_(gather(images, idx, pin=True), non_blocking=True)
    return staged


def to_device(batch: torch.Tensor, device: torch.device) -> torch.Tensor:
    """A host batch on `device`: through pinned memory with a non-blocking copy when going to CUDA."""
    if batch.device.type == device.type:
        return batch
    if device.type == "cuda" and not batch.is_pinned():
        batch = batch.pin_memory()
    return batch.to(device, non_blocking=True)


def prefetch(items: Iterator[T], ahead: int = 1) -> Iterator[T]:
    """`items`, produced by a background thread that stays `ahead` items (plus the one it is making) in front of the consumer;
    its exceptions are raised here, and it stops when the consumer does."""
    queue: Queue = Queue(ahead)
    stop = threading.Event()
    end = object()

    def put(entry: tuple) -> bool:
        while not stop.is_set():
            try:
                queue.put(entry, timeout=0.1)
                return True
            except Full:
                continue
        return False

    def produce() -> None:
        try:
            for item in items:
                if not put((item, None)):
                    return
            put((end, None))
        except Exception as err:  # noqa: BLE001 - raised again in the consumer
            put((end, err))

    thread = threading.Thread(target=produce, name="colorbench-prefetch", daemon=True)
    thread.start()
    try:
        while True:
            try:
                item, err = queue.get(timeout=0.1)
            except Empty:
                if not thread.is_alive():
                    raise RuntimeError("the prefetching thread ended without a result") from None
                continue
            if err is not None:
                raise err
            if item is end:
                return
            yield item
    finally:
        stop.set()
        thread.join()


def device_batches(images: Images, order: torch.Tensor, bounds: Sequence[tuple[int, int]], device: torch.device) -> Iterator[torch.Tensor]:
    """The images order[a:b] for each (a, b) of `bounds`, as uint8 batches on `device`: gathered there when the images are on
    it; else read from the host (and from disk, for a memory map) by a background thread one or two batches ahead, into pinned
    memory when `device` is CUDA, and copied without blocking."""
    if isinstance(images, torch.Tensor) and images.device.type == device.type:
        order = order.to(images.device)
        for a, b in bounds:
            yield images[order[a:b]]
        return
    host, order_np, pin = images.numpy() if isinstance(images, torch.Tensor) else images, order.numpy(), device.type == "cuda"
    for batch in prefetch(gather(host, order_np[a:b], pin) for a, b in bounds):
        yield to_device(batch, device)


@dataclass(frozen=True)
class DeviceRows:
    """Images seen from `device`: len() and row slices as uint8 tensors there (how `Objective.prepare` reads a fold, a chunk
    at a time, wherever it is held)."""

    images: Images
    device: torch.device

    def __len__(self) -> int:
        return len(self.images)

    def __getitem__(self, key: slice) -> torch.Tensor:
        batch = self.images[key]
        return to_device(batch if isinstance(batch, torch.Tensor) else torch.from_numpy(batch), self.device)


def epoch_draws(n: int, size: int, cfg: TrainConfig, generator: torch.Generator) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor | None]:
    """One epoch's random order of n images, and in that order their flips and (when `cfg.crop` < 1) crop boxes."""
    order = torch.randperm(n, generator=generator)
    flips = (torch.rand(n, generator=generator) < 0.5)[order]
    boxes = random_boxes(n, size, cfg.crop, generator)[order] if cfg.crop < 1 else None
    return order, flips, boxes


def train_batches(images: Images, cfg: TrainConfig, generator: torch.Generator, device: torch.device) -> Iterator[tuple[torch.Tensor, torch.Tensor]]:
    """One epoch of (L, ab) training batches from uint8 images (N,S,S,3) held on `device` or on the host.

    The epoch's draws (`epoch_draws`) go to the device in one copy; each batch is gathered there (or read from the host
    ahead of time and copied there, `device_batches`), cropped and flipped by `augment` while still uint8, and only then
    converted to Lab.
    """
    n = len(images)
    order, flips, boxes = epoch_draws(n, images.shape[1], cfg, generator)
    flips, boxes = flips.to(device), None if boxes is None else boxes.to(device)
    starts = range(0, n, cfg.batch_size)
    bounds = [(a, min(a + cfg.batch_size, n)) for a in starts if not min(a + cfg.batch_size, n) - a < 2 < n]  # BatchNorm needs 2 images
    for (start, stop), rgb in zip(bounds, device_batches(images, order, bounds, device), strict=True):
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
    images: Images,
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
    n = len(images)
    for rgb in device_batches(images, torch.arange(n), [(a, min(a + batch_size, n)) for a in range(0, n, batch_size)], device):
        L, ab = lab_batch(rgb)
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


def check_divergence(record: dict[str, float], lr: float) -> None:
    """Raise DivergedError if an epoch's record shows divergence: a loss that is not finite, or a validation ab error beyond any real
    colour's. `fit` checks the training loss alone before validating (a blown-up model is not evaluated), then the whole record."""
    shown = {"train_loss": "train loss", "val_loss": "val loss", "val_ab_rmse": "val ab RMSE"}
    values = {key: record[key] for key in shown if key in record}
    if all(math.isfinite(v) for v in values.values()) and values.get("val_ab_rmse", 0.0) <= MAX_AB_RMSE:
        return
    found = ", ".join(f"{shown[key]} {value:.3g}" for key, value in values.items())
    raise DivergedError(f"diverged at epoch {int(record['epoch'])}: {found}; lower train.lr (now {lr})")


def pick_decoding(scores: dict[float, dict[str, float]], rule: DecodeRule) -> float:
    """The candidate `rule` picks from {candidate: its validation metrics}: among those with a colourfulness ratio of at least
    `rule.min_colorfulness_ratio` (all when unset), the best by `rule.choose`; when none reaches it, the most colourful. Ties go to the
    first candidate."""
    ratio, metric = "colorfulness_ratio", rule.choose.removeprefix("val_")
    floor = rule.min_colorfulness_ratio
    eligible = [c for c, m in scores.items() if floor is None or m[ratio] >= floor]
    if not eligible:
        return max(scores, key=lambda c: scores[c][ratio])
    return min(eligible, key=lambda c: badness(metric, scores[c][metric]))


@torch.no_grad()
def choose_decoding(
    model: ColorizationNet, objective: Objective, val_images: Images, rule: DecodeRule, batch_size: int, amp: torch.dtype | None = None
) -> tuple[float, dict[float, dict[str, float]]]:
    """Tune `objective`'s decoding parameter (`Objective.tuning`) on VALIDATION images by `rule` (`pick_decoding`): one forward pass
    per batch, every candidate decoded from it. Leaves the objective tuned to the choice; returns it and every candidate's metrics."""
    if objective.tuning is None:
        raise ConfigError(f"train.decode: loss {type(objective).__name__} has no decoding parameter to choose on validation; drop train.decode")
    candidates = rule.temperatures if objective.tuning == "decode_temperature" else rule.chroma_scales
    model.eval()
    device = next(model.parameters()).device
    meters = {c: ColorizationMetrics() for c in candidates}
    n = len(val_images)
    if n == 0:
        raise ConfigError("train.decode chooses on the validation rows, and this fold has none: use a splitter with validation rows")
    for rgb in device_batches(val_images, torch.arange(n), [(a, min(a + batch_size, n)) for a in range(0, n, batch_size)], device):
        L, ab = lab_batch(rgb)
        with autocast(device, amp):
            pred = model(L)
        pred = pred.float()
        for candidate, meter in meters.items():
            objective.tune(candidate)
            meter.update(L, objective.decode(pred), ab)
    scores = {c: meter.compute() for c, meter in meters.items()}
    chosen = pick_decoding(scores, rule)
    objective.tune(chosen)
    return chosen, scores


def fit(
    model: ColorizationNet,
    objective: Objective,
    train_images: Images,
    val_images: Images,
    cfg: TrainConfig,
    on_epoch: EpochCallback | None = None,
    keep_last: bool = False,
    resume: TrainingState | None = None,
    save_state: SaveState | None = None,
) -> FoldResult:
    """Train with Adam; keep the state with the lowest validation loss (`keep_last`: the last epoch's, for a refit that trains a
    fixed number of epochs); stop early after `cfg.patience` bad epochs.

    Batches stay uint8 until they are on the device (see `train_batches`); the model runs under `cfg.precision`
    autocast, the loss in fp32; the model is channels_last if `cfg.channels_last` (faster on CUDA and on a CPU alike).
    On CUDA the images move to GPU memory when they fit (`stage`); otherwise, and on a CPU, each batch is read from the host
    (the cache's memory map) while the previous one trains, so a fold is never loaded whole. The loss is summed on the device and checked once
    per epoch, so the host never waits for the GPU mid-epoch. Each epoch's record includes its training throughput,
    `train_images_per_s`; it goes to `on_epoch`, then through `check_divergence` (the training loss alone is checked before
    validation).

    Every `cfg.checkpoint_every` epochs, after the last one and when stopping early, `save_state` gets the training state
    (`training_state`); `resume`, such a state, continues after its epoch exactly as the uninterrupted run would have (same
    model, optimizer, data order and augmentation draws; `on_epoch` sees only the epochs trained now).
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
    objective.prepare(DeviceRows(train_images, device))
    history: list[dict[str, float]] = []
    best_loss, best_epoch, best_state = math.inf, 0, copy.deepcopy(model.state_dict())
    done, stopped, earlier = 0, False, 0.0
    if resume is not None:
        model.load_state_dict(resume["model"])
        optimizer.load_state_dict(resume["optimizer"])
        generator.set_state(resume["generator"])
        torch.set_rng_state(resume["torch_rng"])
        history, best_loss, best_epoch, best_state = list(resume["history"]), resume["best_loss"], resume["best_epoch"], resume["best_state"]
        done, stopped, earlier = resume["epoch"], resume["stopped"], resume["seconds"]
    for epoch in range(done + 1, cfg.epochs + 1):
        if stopped:
            break
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
        check_divergence({"epoch": epoch, "train_loss": train_loss}, cfg.lr)
        rate = seen / (time.perf_counter() - epoch_started)
        val, _ = evaluate(model, objective, val_images, cfg.batch_size, amp=amp)
        record = {"epoch": epoch, "train_loss": train_loss, "train_images_per_s": rate, **{f"val_{k}": v for k, v in val.items()}}
        history.append(record)
        if on_epoch:
            on_epoch(record)
        check_divergence(record, cfg.lr)
        if val["loss"] < best_loss or keep_last:
            best_loss, best_epoch = val["loss"], epoch
            best_state = {k: v.detach().to("cpu", copy=True) for k, v in model.state_dict().items()}
        elif cfg.patience and epoch - best_epoch >= cfg.patience:
            stopped = True
        if save_state and (stopped or epoch == cfg.epochs or epoch % cfg.checkpoint_every == 0):
            seconds = earlier + time.perf_counter() - started
            save_state(training_state(model, optimizer, generator, epoch, stopped, history, best_loss, best_epoch, best_state, seconds))
    model.load_state_dict(best_state)
    return FoldResult(history, best_epoch, best_state, seconds=earlier + time.perf_counter() - started)


def training_state(
    model: ColorizationNet,
    optimizer: torch.optim.Optimizer,
    generator: torch.Generator,
    epoch: int,
    stopped: bool,
    history: list[dict[str, float]],
    best_loss: float,
    best_epoch: int,
    best_state: dict[str, torch.Tensor],
    seconds: float,
) -> TrainingState:
    """A fold's training after `epoch` as plain data and tensors: model, optimizer, data-order generator and torch RNG, history,
    best state so far, whether it stopped early and the seconds spent."""
    return {
        "model": model.state_dict(),
        "optimizer": optimizer.state_dict(),
        "generator": generator.get_state(),
        "torch_rng": torch.get_rng_state(),
        "epoch": epoch,
        "stopped": stopped,
        "history": history,
        "best_loss": best_loss,
        "best_epoch": best_epoch,
        "best_state": best_state,
        "seconds": seconds,
    }
