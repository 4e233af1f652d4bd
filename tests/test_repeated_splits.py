"""Redrawn splits: repeated-holdout and kfold with repeats give new grouped partitions per repeat, lose no image, leak no photo."""

from __future__ import annotations

import numpy as np
import pytest

from colorbench.config import expand
from colorbench.data import SOURCES
from colorbench.images import ImageSet
from colorbench.resolve import cell_labels, parse_experiment
from colorbench.splitters import SPLITTERS, Fold


@pytest.fixture(scope="module")
def pool() -> ImageSet:
    """The 8 real photos the dependencies bundle, 3 crops each: 24 images in 8 groups."""
    return SOURCES.build("builtin", {"image_size": 16, "crops_per_photo": 3})


def photos(pool: ImageSet, idx: np.ndarray) -> set[int]:
    return set(pool.groups[idx].tolist())


def check_partition(pool: ImageSet, fold: Fold) -> None:
    """train and val are disjoint in photos and together hold every image of the pool exactly once."""
    assert not photos(pool, fold.train) & photos(pool, fold.val)
    assert np.array_equal(np.sort(np.concatenate([fold.train, fold.val])), np.arange(len(pool)))


def test_repeated_holdout_draws_a_new_grouped_split_per_repeat(pool: ImageSet) -> None:
    assert len(np.unique(pool.groups)) == 8
    folds = SPLITTERS.build("repeated-holdout", {"val_fraction": 0.5, "n_repeats": 4}).split(pool, seed=0)
    assert [f.index for f in folds] == [0, 1, 2, 3] and [f.draw for f in folds] == [0, 1, 2, 3]
    for fold in folds:
        check_partition(pool, fold)
        assert len(photos(pool, fold.val)) == 4  # 50 % of 8 photos
    assert len({tuple(f.val) for f in folds}) == 4  # every repeat validates on other photos


def test_kfold_repeats_draw_a_new_grouped_partition_per_repeat(pool: ImageSet) -> None:
    folds = SPLITTERS.build("kfold", {"k": 3, "repeats": 2}).split(pool, seed=0)
    assert [f.index for f in folds] == list(range(6)) and [f.draw for f in folds] == [0, 0, 0, 1, 1, 1]
    for fold in folds:
        check_partition(pool, fold)
    partitions = []
    for r in (0, 1):
        vals = [f.val for f in folds if f.draw == r]
        assert np.array_equal(np.sort(np.concatenate(vals)), np.arange(len(pool)))  # within a repeat each image validates once
        partitions.append({frozenset(photos(pool, v)) for v in vals})
    assert partitions[0] != partitions[1]


def test_kfold_with_one_repeat_keeps_todays_partition_and_cell_id(pool: ImageSet) -> None:
    once = SPLITTERS.build("kfold", {"k": 3}).split(pool, seed=0)
    first_repeat = SPLITTERS.build("kfold", {"k": 3, "repeats": 3}).split(pool, seed=0)[:3]
    assert all(np.array_equal(a.val, b.val) for a, b in zip(once, first_repeat, strict=True))
    grid = {"experiment": "ids", "grid": {"splitter": [{"name": "kfold", "k": 3}, {"name": "kfold", "k": 3, "repeats": 1}]}}
    cells = expand(parse_experiment(grid))
    assert len(cells) == 1 and cells[0].splitter.options == {"k": 3}  # `repeats: 1` is today's kfold, same config and id
    assert cell_labels(cells[0])[2] == "kfold(k=3)"
    two = expand(parse_experiment({"experiment": "ids", "grid": {"splitter": [{"name": "kfold", "k": 3, "repeats": 2}]}}))[0]
    assert two.splitter.options == {"k": 3, "repeats": 2} and two.id != cells[0].id
