"""Validation schemes (registry `SPLITTERS`) over scikit-learn's grouped splitters; crops of one photo stay together."""

from __future__ import annotations

import math
from dataclasses import dataclass, replace
from pathlib import PurePath
from typing import Annotated

import numpy as np
from pydantic import Field
from sklearn.model_selection import GroupKFold, GroupShuffleSplit

from colorbench.errors import ConfigError
from colorbench.images import ImageSet
from colorbench.registry import Registry


@dataclass(frozen=True)
class Fold:
    """One train/validation split, as indices into the training pool; `draw` is the redrawn partition it belongs to, `repeat` the
    training repeat (its training seed: `training_seed`)."""

    index: int  # position among the splitter's folds (unique across draws)
    train: np.ndarray
    val: np.ndarray
    draw: int = 0
    repeat: int = 0
    refit_epochs: int | None = None  # a refit (`train.refit`): train + validation for this many epochs, keeping the last state


class Splitter:
    """`n_splits()` folds over a pool of images; `split(pool, seed)` returns them."""

    def n_splits(self) -> int:
        raise NotImplementedError

    def split(self, pool: ImageSet, seed: int) -> list[Fold]:
        raise NotImplementedError


SPLITTERS: Registry[Splitter] = Registry("splitter")


def check_photos(pool: ImageSet, needed: int, what: str, fix: str = "add images or lower test_fraction") -> None:
    """A ConfigError when the pool has fewer than `needed` photos for splitter `what`."""
    photos = count_photos(pool)
    if photos < needed:
        raise ConfigError(f"{what} needs at least {needed} photos in the training pool, found {photos}; {fix}")


def count_photos(data: ImageSet) -> int:
    return len(np.unique(data.groups))


def subsample_photos(data: ImageSet, n: int, seed: int) -> np.ndarray:
    """Sorted indices of the images of `n` photos (all their crops) drawn at random without replacement, seeded by `seed`."""
    photos = np.unique(data.groups)
    if n > len(photos):
        raise ConfigError(f"data.subsample {n} exceeds the {len(photos)} usable photos of the data source; lower subsample or add photos")
    chosen = np.random.default_rng(seed).choice(photos, n, replace=False)
    return np.flatnonzero(np.isin(data.groups, chosen))


def carve_test(data: ImageSet, test_fraction: float, seed: int) -> tuple[np.ndarray, np.ndarray]:
    """(pool, test) indices: a fraction of the photos (all their crops) held out once per experiment."""
    photos = count_photos(data)
    if photos < 3:
        raise ConfigError(f"only {photos} usable photos: need at least 3 to carve out train, validation and test sets")
    if math.ceil(test_fraction * photos) >= photos:  # scikit-learn rounds the test share up
        raise ConfigError(f"test_fraction {test_fraction} puts all {photos} usable photos in the test set, leaving none to train on; lower it")
    pool, test = next(GroupShuffleSplit(n_splits=1, test_size=test_fraction, random_state=seed).split(data.images, groups=data.groups))
    return np.sort(pool), np.sort(test)


@SPLITTERS.register("holdout")
class HoldOut(Splitter):
    """One random train/validation split of the photos."""

    def __init__(self, val_fraction: Annotated[float, Field(gt=0, lt=1)] = 0.2) -> None:
        self.val_fraction = val_fraction

    def n_splits(self) -> int:
        return 1

    def split(self, pool: ImageSet, seed: int) -> list[Fold]:
        check_photos(pool, 2, "holdout")
        return shuffled_holdouts(pool, self.val_fraction, 1, seed)


def shuffled_holdouts(pool: ImageSet, val_fraction: float, n: int, seed: int) -> list[Fold]:
    """`n` grouped random train/validation splits (scikit-learn's GroupShuffleSplit), the i-th as draw i."""
    splitter = GroupShuffleSplit(n_splits=n, test_size=val_fraction, random_state=seed)
    return [Fold(i, np.sort(tr), np.sort(va), draw=i) for i, (tr, va) in enumerate(splitter.split(pool.images, groups=pool.groups))]


@SPLITTERS.register("repeated-holdout")
class RepeatedHoldOut(Splitter):
    """`n_repeats` hold-out splits, each a new random draw of the validation photos."""

    def __init__(self, val_fraction: Annotated[float, Field(gt=0, lt=1)] = 0.2, n_repeats: Annotated[int, Field(ge=2)] = 5) -> None:
        self.val_fraction, self.n_repeats = val_fraction, n_repeats

    def n_splits(self) -> int:
        return self.n_repeats

    def split(self, pool: ImageSet, seed: int) -> list[Fold]:
        check_photos(pool, 2, "repeated-holdout")
        return shuffled_holdouts(pool, self.val_fraction, self.n_repeats, seed)


@SPLITTERS.register("kfold")
class KFold(Splitter):
    """k folds of the photos, shuffled with the data seed; each photo validates once per repeat, each repeat a new partition."""

    omit_default = ("repeats",)  # added later: left out of the config at its default, so earlier cell ids stay the same

    def __init__(self, k: Annotated[int, Field(ge=2)] = 5, repeats: Annotated[int, Field(ge=1)] = 1) -> None:
        self.k, self.repeats = k, repeats

    def n_splits(self) -> int:
        return self.k * self.repeats

    def split(self, pool: ImageSet, seed: int) -> list[Fold]:
        check_photos(pool, self.k, f"kfold k={self.k}", "lower k")
        folds = []
        for r in range(self.repeats):  # draw r shuffles with seed + r: draw 0 is the single partition of `repeats: 1`
            splitter = GroupKFold(n_splits=self.k, shuffle=True, random_state=seed + r)
            for tr, va in splitter.split(pool.images, groups=pool.groups):
                folds.append(Fold(len(folds), np.sort(tr), np.sort(va), draw=r))
        return folds


SEED_STRIDE = 1000  # training seeds of split i: train.seed + SEED_STRIDE * i + repeat


def training_seed(seed: int, fold: Fold) -> int:
    """A child's training seed (initialisation and batch order), from the config's `train.seed`: `seed + 1000 * split + repeat`.

    Every split gets seeds of its own, so the training randomness varies from split to split and the tests across splits (the unit
    of a verdict) see it: with one seed on every split, a cell's initialisation would be a constant those tests take for an effect
    of its configuration. Cells share the seeds of a split, so their comparison on it is paired. Split 0, repeat 0 trains with `seed`."""
    return seed + SEED_STRIDE * fold.index + fold.repeat


def with_repeats(folds: list[Fold], repeats: int) -> list[Fold]:
    """Each split `repeats` times, as training repeats 0..repeats-1 (split-major): same split, training seed `training_seed`."""
    return [replace(fold, repeat=r) for fold in folds for r in range(repeats)]


@SPLITTERS.register("folders")
class Folders(Splitter):
    """Predefined split by top-level subfolder (the seed's train/ and val/ layout)."""

    def __init__(self, train: str = "train", val: str = "val") -> None:
        self.train, self.val = train, val

    def n_splits(self) -> int:
        return 1

    def split(self, pool: ImageSet, seed: int) -> list[Fold]:
        tops = np.array([PurePath(name).parts[0] for name in pool.names])
        train, val = np.flatnonzero(tops == self.train), np.flatnonzero(tops == self.val)
        if not len(train) or not len(val):
            found = ", ".join(sorted(set(tops))[:5]) or "none"
            raise ConfigError(f"folders splitter needs images under '{self.train}/' and '{self.val}/' of the data path; found folders: {found}")
        return [Fold(0, train, val)]
