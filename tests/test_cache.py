"""The decode-once cache, device-side augmentation and the CUDA-path options (run on the CPU)."""

from __future__ import annotations

import os
import shutil
from pathlib import Path

import numpy as np
import pytest
import torch
from conftest import PHOTOS
from PIL import Image
from skimage.color import rgb2lab

from colorbench import cache, cli, data, images
from colorbench.backbones import build_model
from colorbench.color import lab_to_rgb
from colorbench.config import TrainConfig, expand
from colorbench.errors import DataError
from colorbench.lifecycle.prepare import prepare_data
from colorbench.losses import LOSSES
from colorbench.resolve import parse_experiment
from colorbench.splitters import SPLITTERS
from colorbench.train import autocast_dtype, epoch_draws, fit, stage, train_batches


@pytest.fixture
def cache_dir(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> Path:
    """An empty cache of this test's own."""
    path = tmp_path / "cache"
    monkeypatch.setenv(cache.ENV_VAR, str(path))
    return path


@pytest.fixture
def decodes(monkeypatch: pytest.MonkeyPatch) -> list[str]:
    """The name of every file the data sources decode, in order (a spy on the real `open_rgb`)."""
    seen: list[str] = []
    real = data.open_rgb

    def spy(path: Path, draft: bool = True) -> Image.Image:
        seen.append(path.name)
        return real(path, draft)

    monkeypatch.setattr(data, "open_rgb", spy)
    return seen


def photo_folder(tmp_path: Path, n: int = 6) -> Path:
    root = tmp_path / "photos"
    root.mkdir()
    for src in PHOTOS[:n]:
        shutil.copy(src, root / src.name)
    return root


def build_folder(root: Path) -> images.ImageSet:
    return data.SOURCES.build("folder", {"path": str(root), "image_size": 32})


def test_each_image_is_decoded_once_across_cells_and_epochs(tmp_path: Path, cache_dir: Path, decodes: list[str]) -> None:
    root = photo_folder(tmp_path)
    (root / "broken.jpg").write_bytes(b"not a jpeg")
    grid = {
        "experiment": "cache",
        "data": {"source": "folder", "path": str(root), "image_size": 32},
        "test_fraction": 0.2,
        "train": {"epochs": 2, "batch_size": 4, "seed": 0},
        "grid": {"splitter": [{"name": "holdout", "val_fraction": 0.25}, {"name": "kfold", "k": 2}]},
    }
    exp = parse_experiment(grid)
    cells = expand(exp)
    assert len(cells) == 2
    first = None
    for cell in cells:  # each cell prepares its data as a separate `colorbench run` would
        prepared = prepare_data(cell)
        first = first or prepared
        assert prepared.fingerprint == first.fingerprint and prepared.skipped == [("broken.jpg", prepared.skipped[0][1])]
        fold = SPLITTERS.build(cell.splitter.name, cell.splitter.options).split(prepared.pool, exp.seed)[0]
        objective = LOSSES.build("mse", {})
        model = build_model("resnet18-6", {}, objective.out_channels)
        pool = torch.from_numpy(np.asarray(prepared.pool.images))
        assert len(fit(model, objective, pool[fold.train], pool[fold.val], cell.train).history) == 2
    assert sorted(decodes) == sorted(p.name for p in root.iterdir())  # 7 files, each opened exactly once
    assert len(cache.entries()) == 1


def test_cache_is_rebuilt_when_a_file_changes(tmp_path: Path, cache_dir: Path, decodes: list[str]) -> None:
    root = photo_folder(tmp_path, n=3)
    before = build_folder(root)
    assert isinstance(before.images, np.memmap) and len(decodes) == 3
    assert np.array_equal(build_folder(root).images, before.images) and len(decodes) == 3  # unchanged: read back, not decoded

    changed = sorted(root.iterdir())[1]
    shutil.copy(PHOTOS[-1], changed)  # another photo under the same name
    after = build_folder(root)
    assert len(decodes) == 6  # the whole set is decoded again, into a second entry
    assert np.array_equal(after.images[[0, 2]], before.images[[0, 2]]) and not np.array_equal(after.images[1], before.images[1])
    os.utime(changed, ns=(0, 0))  # same bytes, other mtime
    build_folder(root)
    assert len(decodes) == 9 and len(cache.entries()) == 3

    removed, freed = cache.clear()
    assert removed == 3 and freed > 3 * before.images.nbytes and cache.entries() == []


def test_partial_or_corrupt_entries_are_rebuilt_not_loaded(tmp_path: Path, cache_dir: Path, decodes: list[str]) -> None:
    root = photo_folder(tmp_path, n=2)
    good = np.array(build_folder(root).images)
    (entry,) = [p for p in cache_dir.iterdir()]
    with open(entry / "images.npy", "r+b") as handle:  # as if the disk filled up mid-write
        handle.truncate(1000)
    assert np.array_equal(build_folder(root).images, good) and len(decodes) == 4
    (entry / "meta.json").write_text("{")
    assert np.array_equal(build_folder(root).images, good) and len(decodes) == 6
    shutil.rmtree(entry)
    (cache_dir / f"{cache.BUILDING}killed").mkdir()  # a build killed before its rename
    (cache_dir / f"{cache.BUILDING}killed" / "images.npy").write_bytes(b"\0" * 100)
    assert np.array_equal(build_folder(root).images, good) and len(decodes) == 8
    assert sorted(e.source for e in cache.entries()) == ["(incomplete)", "folder"]
    assert cache.clear()[0] == 2 and not any(cache_dir.iterdir())


def test_unwritable_cache_is_a_clear_error(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    (tmp_path / "file").write_text("")
    monkeypatch.setenv(cache.ENV_VAR, str(tmp_path / "file" / "cache"))
    with pytest.raises(DataError, match=f"set {cache.ENV_VAR} to a writable folder"):
        build_folder(photo_folder(tmp_path, n=1))


def test_cache_info_and_clear_commands(tmp_path: Path, cache_dir: Path, capsys: pytest.CaptureFixture) -> None:
    build_folder(photo_folder(tmp_path, n=2))
    assert cli.main(["cache", "info"]) == 0
    out = capsys.readouterr().out
    assert str(cache_dir) in out and "folder" in out and "32x32" in out and "1 entry" in out
    assert cli.main(["cache", "clear"]) == 0
    assert "Removed 1 cache entry" in capsys.readouterr().err
    assert cli.main(["cache", "info"]) == 0
    assert "0 entries" in capsys.readouterr().out


def plain_batches(images: np.ndarray, cfg: TrainConfig, seed: int) -> list[np.ndarray]:
    """The seed's way, per image on the CPU, for the same draws: PIL crop-and-resize and flip -> uint8 RGB (B,S,S,3) batches."""
    size = images.shape[1]
    order, flips, boxes = epoch_draws(len(images), size, cfg, torch.Generator().manual_seed(seed))
    out = []
    for k, i in enumerate(order.tolist()):
        img = images[i]
        if boxes is not None:
            side, x0, y0 = boxes[k].tolist()
            img = data.square(Image.fromarray(img), size, (x0, y0, x0 + side, y0 + side))
        out.append(img[:, ::-1] if flips[k] else img)
    rgb = np.stack(out)
    return [rgb[s : s + cfg.batch_size] for s in range(0, len(rgb), cfg.batch_size)]


@pytest.mark.parametrize("crop", [1.0, 0.5])
def test_device_batches_match_the_plain_path(crop: float) -> None:
    images = data.SOURCES.build("builtin", {"image_size": 32, "crops_per_photo": 2}).images
    cfg, cpu = TrainConfig(batch_size=4, crop=crop, seed=3), torch.device("cpu")
    device = list(train_batches(stage(torch.from_numpy(images), cpu), cfg, torch.Generator().manual_seed(3), cpu))
    plain = plain_batches(images, cfg, seed=3)
    assert len(device) == len(plain) == 4
    for (L, ab), rgb in zip(device, plain, strict=True):
        lab = torch.cat([L, ab], 1).permute(0, 2, 3, 1).numpy()
        if crop == 1:  # flips and Lab: the same numbers as float64 skimage, image by image
            np.testing.assert_allclose(lab, rgb2lab(rgb), atol=1e-3)
        else:  # crops: PIL rounds between its horizontal and vertical passes, so the same images to within one grey level
            back = (lab_to_rgb(torch.cat([L, ab], 1)) * 255).round().permute(0, 2, 3, 1).numpy()
            diff = np.abs(back - rgb)
            assert diff.max() <= 1 and (diff == 0).mean() > 0.75
    again = list(train_batches(torch.from_numpy(images), cfg, torch.Generator().manual_seed(3), cpu))
    assert all(torch.equal(a[1], d[1]) for a, d in zip(again, device, strict=True))
    other = next(train_batches(torch.from_numpy(images), cfg, torch.Generator().manual_seed(4), cpu))
    assert not torch.equal(other[1], device[0][1])


def test_bf16_autocast_and_crops_train_on_cpu() -> None:
    cpu = torch.device("cpu")
    assert autocast_dtype("auto", cpu) is None and autocast_dtype("fp32", cpu) is None and autocast_dtype("bf16", cpu) is torch.bfloat16
    images = torch.from_numpy(np.array(data.SOURCES.build("builtin", {"image_size": 32, "crops_per_photo": 2}).images))
    cfg = TrainConfig(epochs=1, batch_size=4, lr=1e-3, precision="bf16", crop=0.6, channels_last=True)
    objective = LOSSES.build("mse", {})
    model = build_model("resnet18-6", {}, objective.out_channels)
    record = fit(model, objective, images[:8], images[8:12], cfg).history[0]
    assert np.isfinite(record["train_loss"]) and np.isfinite(record["val_loss"]) and record["train_images_per_s"] > 0
    assert all(p.dtype == torch.float32 for p in model.parameters())  # autocast leaves the weights in fp32
    convs = [m.weight for m in model.modules() if isinstance(m, torch.nn.Conv2d) and m.weight.shape[1] > 1 and m.kernel_size != (1, 1)]
    assert all(w.is_contiguous(memory_format=torch.channels_last) and not w.is_contiguous() for w in convs)
