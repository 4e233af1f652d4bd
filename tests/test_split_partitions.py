"""Every registered splitter partitions the pool exactly (no row lost, none twice, no photo straddling); so does carve_test.

The splitters are taken from the SPLITTERS registry, so a new one is covered without editing this file (give it options
in SPLITTER_OPTIONS only when its defaults do not fit the 8-photo pool below).
"""

from __future__ import annotations

from pathlib import Path

import numpy as np
import pytest
from PIL import Image

from colorbench.data import SOURCES, builtin_photo_files
from colorbench.images import ImageSet
from colorbench.splitters import SPLITTERS, Fold, carve_test

SPLITTER_OPTIONS: dict[str, dict] = {"kfold": {"k": 3}}  # the rest use their defaults
CROPS = 3  # rows per photo: the groups that must never straddle


@pytest.fixture(scope="module")
def pool(tmp_path_factory: pytest.TempPathFactory) -> ImageSet:
    """The 8 bundled photos in the seed's train/ (5) and val/ (3) layout, 3 crops each: a grouped pool every splitter accepts."""
    root = tmp_path_factory.mktemp("layout")
    for i, src in enumerate(builtin_photo_files()):
        folder = root / ("train" if i < 5 else "val")
        folder.mkdir(exist_ok=True)
        with Image.open(src) as img:
            img.convert("RGB").resize((48, 48)).save(folder / f"{Path(src).stem}.png")
    with pytest.MonkeyPatch.context() as mp:
        mp.setenv("COLORBENCH_CACHE_DIR", str(tmp_path_factory.mktemp("cache")))
        data = SOURCES.build("folder", {"path": str(root), "image_size": 16, "crops_per_photo": CROPS})
    assert len(np.unique(data.groups)) == 8 and len(data) == 8 * CROPS
    return data


def assert_partition(fold: Fold, pool: ImageSet) -> None:
    """train and val are disjoint, hold every row of the pool once, and no photo has rows on both sides."""
    train, val = np.asarray(fold.train), np.asarray(fold.val)
    assert len(train) and len(val), f"fold {fold.index}: an empty side"
    assert len(np.unique(train)) == len(train) and len(np.unique(val)) == len(val), f"fold {fold.index}: a row twice"
    assert not np.intersect1d(train, val).size, f"fold {fold.index}: rows in train and val"
    lost = np.setdiff1d(np.arange(len(pool)), np.concatenate([train, val]))
    assert not lost.size, f"fold {fold.index}: rows {lost.tolist()} are in neither train nor val"
    assert not np.intersect1d(pool.groups[train], pool.groups[val]).size, f"fold {fold.index}: a photo straddles train and val"


@pytest.mark.parametrize("name", sorted(SPLITTERS))
@pytest.mark.parametrize("seed", [0, 7])
def test_every_splitter_partitions_the_pool(name: str, seed: int, pool: ImageSet) -> None:
    splitter = SPLITTERS.build(name, SPLITTER_OPTIONS.get(name, {}))
    folds = splitter.split(pool, seed)
    assert len(folds) == splitter.n_splits() and [f.index for f in folds] == list(range(len(folds)))
    for fold in folds:
        assert_partition(fold, pool)
    k = getattr(splitter, "k", None)  # a k-fold scheme: each run of k consecutive folds validates every row exactly once
    if k is not None:
        assert len(folds) % k == 0
        for start in range(0, len(folds), k):
            vals = np.concatenate([f.val for f in folds[start : start + k]])
            np.testing.assert_array_equal(np.sort(vals), np.arange(len(pool)), err_msg=f"{name}: folds {start}..{start + k - 1}")


def test_folders_splitter_follows_the_layout(pool: ImageSet) -> None:
    (fold,) = SPLITTERS.build("folders").split(pool, 0)
    assert {pool.names[i].split("/")[0] for i in fold.train} == {"train"} and {pool.names[i].split("/")[0] for i in fold.val} == {"val"}


@pytest.mark.parametrize(("fraction", "seed"), [(0.15, 0), (0.25, 3), (0.5, 11)])
def test_carve_test_partitions_all_rows_by_photo(pool: ImageSet, fraction: float, seed: int) -> None:
    rest, test = carve_test(pool, fraction, seed)
    assert_partition(Fold(0, rest, test), pool)
