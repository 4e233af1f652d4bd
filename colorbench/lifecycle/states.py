"""Fold training states: a fold's `fit` state saved every `train.checkpoint_every` epochs beside the decode cache, so an
interrupted fold continues where it stopped (`<cache dir>/training/<cell id>/<cell or trial run id>/fold<i>-repeat<r>.pt`).
"""

from __future__ import annotations

import contextlib
import pickle
import shutil
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import torch

from colorbench.atomic import atomic_path
from colorbench.cache import cache_dir

STATES = "training"  # <cache dir>/training/<cell id>/<cell or trial run id>/fold<i>-repeat<r>.pt: resumable fold trainings


def state_path(cell_id: str, run_id: str, fold: int, repeat: int) -> Path:
    """Where a fold of the cell or trial run `run_id` keeps its training state (`train.training_state`)."""
    return cache_dir() / STATES / cell_id / run_id / f"fold{fold}-repeat{repeat}.pt"


def save_state(path: Path, state: dict[str, Any]) -> None:
    """Write a training state atomically (a kill leaves the previous one)."""
    with atomic_path(path) as tmp:
        torch.save(state, tmp)


def load_state(path: Path) -> dict[str, Any] | None:
    """The training state at `path` (tensors on the CPU, loaded with weights_only=True), or None if there is none or it is unreadable."""
    try:
        return torch.load(path, map_location="cpu", weights_only=True)
    except (OSError, RuntimeError, EOFError, ValueError, pickle.UnpicklingError):
        return None


def has_states(cell_id: str, run_id: str) -> bool:
    """Whether the cell or trial run `run_id` left any fold training state."""
    folder = cache_dir() / STATES / cell_id / run_id
    return folder.is_dir() and any(folder.glob("*.pt"))


def drop_states(cell_id: str, run_id: str) -> None:
    """Forget the training states of a cell or trial run that has ended for good."""
    shutil.rmtree(cache_dir() / STATES / cell_id / run_id, ignore_errors=True)
    with contextlib.suppress(OSError):
        (cache_dir() / STATES / cell_id).rmdir()  # only when empty


@dataclass
class StateInfo:
    """One saved fold training state, as `colorbench cache info` lists it."""

    cell_id: str
    run_id: str
    fold: str
    bytes: int
    modified: float


def states() -> list[StateInfo]:
    """Every saved training state (left by an interrupted run until it resumes and finishes), oldest first."""
    root = cache_dir() / STATES
    found = [
        StateInfo(p.parent.parent.name, p.parent.name, p.stem, p.stat().st_size, p.stat().st_mtime) for p in root.glob("*/*/*.pt")
    ] if root.is_dir() else []
    return sorted(found, key=lambda s: s.modified)


def clear_states() -> tuple[int, int]:
    """Remove every saved training state (their folds then train from epoch 1); return (states removed, bytes freed)."""
    found = states()
    shutil.rmtree(cache_dir() / STATES, ignore_errors=True)
    return len(found), sum(s.bytes for s in found)
