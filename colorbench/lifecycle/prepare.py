"""Step 1 of a cell's lifecycle: the data decoded once, the test set carved out identically for every cell, the gray baseline."""

from __future__ import annotations

import hashlib
from dataclasses import dataclass, field

import torch

from colorbench.config import Cell, Experiment
from colorbench.data import SOURCES
from colorbench.images import ImageSet, lab_batch
from colorbench.metrics import ColorizationMetrics
from colorbench.splitters import carve_test, subsample_photos
from colorbench.ui import console


@dataclass
class PreparedData:
    """The training pool and the fixed test set, shared by every cell of an experiment."""

    pool: ImageSet
    test: ImageSet
    fingerprint: str
    skipped: list[tuple[str, str]] = field(default_factory=list)


def prepare_data(exp: Experiment | Cell) -> PreparedData:
    """Decode the data once, draw its `subsample` and carve out the test set (or load `test_data`) identically for every cell of a
    replicate: all three seeded by the data seed."""
    data = SOURCES.build(exp.data.source, exp.data.options)
    skipped = list(data.skipped)
    if exp.data.subsample is not None:
        data = data.subset(subsample_photos(data, exp.data.subsample, exp.seed))
    if exp.test_data is not None:
        pool, test = data, SOURCES.build(exp.test_data.source, exp.test_data.options)
        skipped += test.skipped
    else:
        pool_idx, test_idx = carve_test(data, exp.test_fraction, exp.seed)
        pool, test = data.subset(pool_idx), data.subset(test_idx)
    fingerprint = hashlib.sha1((pool.fingerprint() + test.fingerprint()).encode()).hexdigest()[:16]
    return PreparedData(pool, test, fingerprint, skipped)


def report_skipped(skipped: list[tuple[str, str]]) -> None:
    """Name (up to 10) and count the files that could not be used."""
    if not skipped:
        return
    console.print(f"[yellow]Skipped {len(skipped)} file(s):[/]")
    for name, reason in skipped[:10]:
        console.print(f"  {name}: {reason}")
    if len(skipped) > 10:
        console.print(f"  ... and {len(skipped) - 10} more")


def gray_baseline(test: ImageSet) -> dict[str, float]:
    """Metrics of predicting ab = 0 (a plain gray image): the bar every model must clear."""
    meter = ColorizationMetrics()
    for start in range(0, len(test), 64):
        L, ab = lab_batch(torch.from_numpy(test.images[start : start + 64]))
        meter.update(L, torch.zeros_like(ab), ab)
    return meter.compute()
