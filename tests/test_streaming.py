"""Data sets larger than memory: the cache built in a stream on several processes, folds as views of its memory map,
batches, the ab prior, evaluation and the gray baseline read from it a batch at a time."""

from __future__ import annotations

import json
import os
import signal
import subprocess
import sys
import threading
import time
from pathlib import Path

import numpy as np
import pytest
import torch
from PIL import Image

from colorbench import cache, data
from colorbench.backbones import build_model
from colorbench.config import TrainConfig
from colorbench.images import ImageRows, ImageSet
from colorbench.losses import LOSSES
from colorbench.runner import gray_baseline
from colorbench.train import DeviceRows, evaluate, fit, prefetch


@pytest.fixture(scope="module")
def photos(tmp_path_factory: pytest.TempPathFactory) -> Path:
    """40 JPEGs (random crops of the bundled real photos, re-encoded), with an unreadable and a grayscale file among them."""
    root = tmp_path_factory.mktemp("photos")
    sources = [data.open_rgb(p) for p in data.builtin_photo_files()]
    rng = np.random.default_rng(0)
    for i in range(40):
        img = sources[i % len(sources)]
        side = int(min(img.size) * rng.uniform(0.4, 0.9))
        x, y = rng.integers(0, img.width - side), rng.integers(0, img.height - side)
        img.crop((x, y, x + side, y + side)).resize((96, 96)).save(root / f"p{i:02d}.jpg", quality=90)
    (root / "p05b.jpg").write_bytes(b"not a jpeg")
    Image.fromarray(np.full((64, 64), 128, np.uint8)).save(root / "p21b.png")
    return root


def build(photos: Path, cache_dir: Path, workers: int, monkeypatch: pytest.MonkeyPatch, crops: int = 3) -> ImageSet:
    monkeypatch.setenv(cache.ENV_VAR, str(cache_dir))
    monkeypatch.setenv(data.WORKERS_ENV, str(workers))
    return data.SOURCES.build("folder", {"path": str(photos), "image_size": 24, "crops_per_photo": crops, "crop_seed": 5})


def entry_files(cache_dir: Path) -> tuple[bytes, dict]:
    [entry] = [p for p in cache_dir.iterdir() if cache.KEY.fullmatch(p.name)]
    meta = json.loads((entry / "meta.json").read_text())
    return (entry / "images.npy").read_bytes(), {k: v for k, v in meta.items() if k != "created"}


def sequential_reference(photos: Path, image_size: int, crops: int, seed: int) -> np.ndarray:
    """The single-process loop colorbench decoded with before the pool: one generator drawing every kept file's crops in turn."""
    rng, out = np.random.default_rng(seed), []
    for path in data.find_images(photos, ("*",), ()):
        if path.name == "p05b.jpg":  # the unreadable file
            continue
        img = data.open_rgb(path)
        first = data.square(img, image_size)
        if data.is_grayscale(first):
            continue
        out.append(first)
        w, h = img.size
        for _ in range(crops - 1):
            side = min(w, h) * rng.uniform(0.5, 1.0)
            x, y = rng.uniform(0, w - side), rng.uniform(0, h - side)
            out.append(data.square(img, image_size, (x, y, x + side, y + side)))
    return np.stack(out)


def test_a_parallel_build_equals_a_one_worker_build_byte_for_byte(photos: Path, tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    one = build(photos, tmp_path / "one", 1, monkeypatch)
    two = build(photos, tmp_path / "two", 2, monkeypatch)
    assert entry_files(tmp_path / "one") == entry_files(tmp_path / "two")  # images.npy and meta.json (fingerprint included)
    assert one.fingerprint() == two.fingerprint() and len(one) == 40 * 3
    assert sorted(name for name, _ in two.skipped) == ["p05b.jpg", "p21b.png"]  # one in each of the first two chunks: the later chunks' ranks shift
    np.testing.assert_array_equal(np.asarray(two.images), sequential_reference(photos, 24, 3, 5))
    assert np.array_equal(two.groups, np.repeat(np.arange(0, 120, 3), 3))


def test_a_build_killed_by_kill_9_is_never_read_and_is_rebuilt(photos: Path, tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    child = f"""
import os, sys, time
from pathlib import Path
from colorbench import data
real = data.decode_stream

def stalls(*args, **kwargs):
    for i, item in enumerate(real(*args, **kwargs)):
        if i == 20:  # 20 files written, the pool working ahead
            Path(sys.argv[1]).touch()
            time.sleep(600)
        yield item

data.decode_stream = stalls
data.SOURCES.build("folder", {{"path": {str(photos)!r}, "image_size": 24, "crops_per_photo": 3, "crop_seed": 5}})
"""
    ready, cache_dir = tmp_path / "ready", tmp_path / "killed"
    env = {**os.environ, cache.ENV_VAR: str(cache_dir), data.WORKERS_ENV: "2"}
    process = subprocess.Popen([sys.executable, "-c", child, str(ready)], env=env)
    deadline = time.monotonic() + 120
    while not ready.exists():
        assert process.poll() is None and time.monotonic() < deadline, "the build ended before it got halfway"
        time.sleep(0.05)
    workers = Path(f"/proc/{process.pid}/task/{process.pid}/children").read_text().split()
    assert len(workers) == 2
    process.send_signal(signal.SIGKILL)
    assert process.wait() == -signal.SIGKILL
    while any(Path(f"/proc/{pid}").exists() for pid in workers):  # the decoding workers die with their parent
        assert time.monotonic() < deadline, "decoding workers outlived the killed build"
        time.sleep(0.05)
    [partial] = cache_dir.iterdir()
    assert partial.name.startswith(cache.BUILDING) and (partial / "images.npy").is_file() and not (partial / "meta.json").exists()
    rebuilt = build(photos, cache_dir, 2, monkeypatch)
    build(photos, tmp_path / "fresh", 1, monkeypatch)
    assert entry_files(cache_dir) == entry_files(tmp_path / "fresh") and len(rebuilt) == 120


def test_folds_are_views_of_the_memory_map_and_train_as_copies_would(photos: Path, tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    pool = build(photos, tmp_path / "cache", 2, monkeypatch, crops=1)
    assert isinstance(pool.images, np.memmap)
    train, val = pool.subset(np.arange(0, 30)), pool.subset(np.arange(30, 40))
    inner = train.subset(np.arange(5, 25, 2))
    for view in (train.images, val.images, inner.images):
        assert isinstance(view, ImageRows) and view.base is pool.images  # no copy: rows of the entry's map
    np.testing.assert_array_equal(inner.images[3], np.asarray(pool.images)[11])
    assert len({pool.fingerprint(), train.fingerprint(), inner.fingerprint()}) == 3 and train.fingerprint() == pool.subset(np.arange(30)).fingerprint()

    cfg = TrainConfig(epochs=1, batch_size=8, lr=1e-3, seed=2, crop=0.7)
    results = []
    for images in ((train.images, val.images), (torch.from_numpy(np.asarray(train.images)), torch.from_numpy(np.asarray(val.images)))):
        torch.manual_seed(0)
        objective = LOSSES.build("ce-rebalanced", {})
        model = build_model("resnet18-6", {}, objective.out_channels)
        results.append((fit(model, objective, *images, cfg), objective.prior, evaluate(model, objective, images[1], 4, all_variants=True)[0]))
    (streamed, prior, test), (copied, prior_copied, test_copied) = results
    assert {k: v for k, v in streamed.history[0].items() if k != "train_images_per_s"} == {
        k: v for k, v in copied.history[0].items() if k != "train_images_per_s"
    }
    assert all(torch.equal(a, b) for a, b in zip(streamed.best_state.values(), copied.best_state.values(), strict=True))
    assert torch.equal(prior, prior_copied) and test == test_copied

    in_memory = ImageSet(np.asarray(val.images), val.groups, val.names)
    assert gray_baseline(val) == gray_baseline(in_memory)


def test_the_streamed_prior_equals_the_prior_of_the_whole_fold_in_memory(photos: Path, tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    pool = build(photos, tmp_path / "cache", 1, monkeypatch)
    fold = pool.subset(np.arange(1, 100, 2))
    streamed, whole = LOSSES.build("ce-rebalanced", {}), LOSSES.build("ce-rebalanced", {})
    streamed.prepare(DeviceRows(fold.images, torch.device("cpu")))  # 50 images read in slices from the map
    whole.prepare(torch.from_numpy(np.asarray(fold.images)))
    assert torch.equal(streamed.prior, whole.prior) and torch.equal(streamed.bin_weights, whole.bin_weights)


def test_prefetch_keeps_order_raises_errors_and_stops_with_its_consumer() -> None:
    assert list(prefetch(iter(range(50)))) == list(range(50))

    def failing():
        yield 1
        raise ValueError("unreadable page")

    with pytest.raises(ValueError, match="unreadable page"):
        list(prefetch(failing()))
    stream = prefetch(iter(range(10**6)))
    assert next(stream) == 0
    stream.close()
    assert not any(t.name == "colorbench-prefetch" for t in threading.enumerate())
