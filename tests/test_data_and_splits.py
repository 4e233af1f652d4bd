"""Image sources and splits: bad files skipped and counted, no leakage, crops of a photo kept together."""

from __future__ import annotations

import shutil
from pathlib import Path

import numpy as np
import pytest
from conftest import PHOTOS, SHARED_DATA
from PIL import Image

from colorbench.config import expand
from colorbench.data import SOURCES
from colorbench.errors import ConfigError, DataError
from colorbench.lifecycle.prepare import prepare_data
from colorbench.resolve import parse_experiment
from colorbench.splitters import SPLITTERS, carve_test


def photo_folder(tmp_path: Path, n: int = 6) -> Path:
    """A folder of n real photos (those the dependencies bundle), in a nested layout."""
    root = tmp_path / "photos"
    (root / "sub").mkdir(parents=True)
    for i, src in enumerate(PHOTOS[:n]):
        shutil.copy(src, root / ("sub" if i % 2 else ".") / src.name)
    return root


def test_builtin_source_serves_crops_of_the_bundled_photos() -> None:
    data = SOURCES.build("builtin", {"image_size": 32, "crops_per_photo": 3})
    assert len(np.unique(data.groups)) == 8
    assert data.images.shape == (24, 32, 32, 3) and data.images.dtype == np.uint8
    assert all((data.groups == g).sum() == 3 for g in np.unique(data.groups))
    assert data.skipped == []


def test_folder_skips_and_names_bad_files(tmp_path: Path) -> None:
    root = photo_folder(tmp_path)
    jpeg = next(p for p in PHOTOS if p.suffix == ".jpg")
    (root / "broken.jpg").write_bytes(jpeg.read_bytes()[:500])  # a truncated JPEG
    (root / "empty.png").write_bytes(b"")
    (root / "notes.jpg").write_text("not an image")
    Image.new("L", (64, 64), 128).save(root / "sub" / "gray.png")
    (root / "readme.txt").write_text("ignored: not an image suffix")
    data = SOURCES.build("folder", {"path": str(root), "image_size": 32})
    assert len(data) == 6
    skipped = dict(data.skipped)
    assert set(skipped) == {"broken.jpg", "empty.png", "notes.jpg", "sub/gray.png"}
    assert "grayscale" in skipped["sub/gray.png"]
    assert "unreadable" in skipped["notes.jpg"]


def test_folder_errors_are_clear(tmp_path: Path) -> None:
    with pytest.raises(DataError, match="does not exist"):
        SOURCES.build("folder", {"path": str(tmp_path / "missing")})
    (tmp_path / "empty").mkdir()
    with pytest.raises(DataError, match="no image files"):
        SOURCES.build("folder", {"path": str(tmp_path / "empty")})
    (tmp_path / "bad").mkdir()
    (tmp_path / "bad" / "x.jpg").write_text("nope")
    with pytest.raises(DataError, match=r"no usable colour images .*1 skipped"):
        SOURCES.build("folder", {"path": str(tmp_path / "bad")})


def groups_of(data, idx) -> set:
    return set(data.groups[idx].tolist())


def test_test_set_is_carved_by_photo_and_never_overlaps(tiny_grid: dict) -> None:
    data = SOURCES.build("builtin", {"image_size": 32, "crops_per_photo": 3})
    pool, test = carve_test(data, 0.25, seed=0)
    assert not groups_of(data, pool) & groups_of(data, test)
    assert len(pool) + len(test) == len(data)
    again = carve_test(data, 0.25, seed=0)
    assert np.array_equal(test, again[1])
    assert not np.array_equal(test, carve_test(data, 0.25, seed=1)[1])


@pytest.mark.parametrize("spec", [{"name": "holdout", "val_fraction": 0.3}, {"name": "kfold", "k": 3}])
def test_splits_keep_photos_together_and_never_leak(spec: dict) -> None:
    data = SOURCES.build("builtin", {"image_size": 32, "crops_per_photo": 3})
    pool_idx, _ = carve_test(data, 0.25, seed=0)
    pool = data.subset(pool_idx)
    folds = SPLITTERS.build(spec["name"], {k: v for k, v in spec.items() if k != "name"}).split(pool, seed=0)
    assert len(folds) == (3 if spec["name"] == "kfold" else 1)
    for fold in folds:
        assert not groups_of(pool, fold.train) & groups_of(pool, fold.val)
        assert len(fold.train) and len(fold.val)
    if spec["name"] == "kfold":
        validated = np.sort(np.concatenate([f.val for f in folds]))
        assert np.array_equal(validated, np.arange(len(pool)))  # each image validates exactly once


def test_test_set_is_identical_for_every_cell(tiny_grid: dict) -> None:
    tiny_grid["grid"]["backbone"] = ["resnet18-6", "resnet18-7"]
    cells = expand(parse_experiment(tiny_grid))
    tests = [prepare_data(cell).test for cell in cells]
    assert all(np.array_equal(t.images, tests[0].images) and t.names == tests[0].names for t in tests)


def test_kfold_with_too_few_photos_is_a_clear_error() -> None:
    data = SOURCES.build("builtin", {"image_size": 32, "crops_per_photo": 2})
    with pytest.raises(ConfigError, match="k=20 needs at least 20 photos"):
        SPLITTERS.build("kfold", {"k": 20}).split(data, seed=0)


def seed_layout(tmp_path: Path) -> Path:
    """The seed project's layout (train/, val/, test/ folders) made of the bundled photos: 4, 2 and 2."""
    for i, src in enumerate(PHOTOS):
        folder = tmp_path / "seed" / ("train" if i < 4 else "val" if i < 6 else "test")
        folder.mkdir(parents=True, exist_ok=True)
        shutil.copy(src, folder / src.name)
    return tmp_path / "seed"


@pytest.mark.parametrize("shared", [False, pytest.param(True, marks=pytest.mark.shared_data, id="shared-seed")])
def test_folders_splitter_uses_the_seed_layout(shared: bool, tmp_path: Path) -> None:
    root = SHARED_DATA / "seed" if shared else seed_layout(tmp_path)
    assert (root / "test").is_dir(), f"expected the seed's photos in {root}"
    grid = {
        "experiment": "seed",
        "data": {"source": "folder", "path": str(root), "image_size": 32, "exclude": ["test/*"]},
        "test_data": {"source": "folder", "path": str(root / "test"), "image_size": 32},
        "grid": {"splitter": ["folders"]},
    }
    cell = expand(parse_experiment(grid))[0]
    prepared = prepare_data(cell)
    fold = SPLITTERS.build("folders").split(prepared.pool, seed=0)[0]
    assert {prepared.pool.names[i].split("/")[0] for i in fold.train} == {"train"}
    assert {prepared.pool.names[i].split("/")[0] for i in fold.val} == {"val"}
    assert len(prepared.test) == len(list((root / "test").iterdir()))
