"""Scenario 8: checkpoints and decode-cache entries are written beside their target and renamed into place, so an error or a kill -9
during the write never leaves a file that a later run would load."""

from __future__ import annotations

import signal
import subprocess
import sys
import time
from pathlib import Path

import numpy as np
import pytest
import torch

from colorbench import cache
from colorbench.atomic import atomic_path
from colorbench.backbones import build_model
from colorbench.checkpoints import load_checkpoint
from colorbench.images import Decoded

# Child processes that block in the middle of a write (after `ready` exists), waiting for the test's kill -9.
CHECKPOINT_WRITER = """
import sys, time
from pathlib import Path
import torch
from colorbench.atomic import atomic_path
target, ready = sys.argv[1:]

class Block:
    def __reduce__(self):
        Path(ready).touch()
        time.sleep(600)

with atomic_path(target) as tmp:
    torch.save({"state_dict": {"w": torch.zeros(1000, 1000)}, "block": Block()}, tmp)
"""
CACHE_WRITER = """
import sys, time
from pathlib import Path
import numpy as np
from colorbench import cache
from colorbench.images import Decoded
entry, ready = sys.argv[1:]

def decoded():  # the build streams decoded files into images.npy; it is killed halfway
    for i in range(64):
        if i == 32:
            Path(ready).touch()
            time.sleep(600)
        yield Decoded(f"{i}.jpg", np.ones((1, 32, 32, 3), np.uint8))

cache.store(Path(entry), decoded(), (64, 32, 32, 3), {"source": "test"})
"""


def kill_mid_write(script: str, target: Path, tmp_path: Path) -> None:
    """Run `script` (argv: target, ready file), kill -9 it once it is blocked inside the write."""
    ready = tmp_path / "ready"
    child = subprocess.Popen([sys.executable, "-c", script, str(target), str(ready)])
    deadline = time.monotonic() + 120
    while not ready.exists():
        assert child.poll() is None and time.monotonic() < deadline, "the writer ended before it got to the write"
        time.sleep(0.05)
    child.send_signal(signal.SIGKILL)
    assert child.wait() == -signal.SIGKILL


def save_checkpoint(path: Path) -> dict[str, torch.Tensor]:
    """A real checkpoint as `colorbench run` writes it; returns its weights."""
    model = build_model("resnet18-6", {}, 2)
    meta = {"backbone": {"name": "resnet18-6", "options": {}}, "loss": {"name": "mse", "options": {}}, "image_size": 32}
    torch.save({"state_dict": model.state_dict(), **meta}, path)
    return model.state_dict()


def test_an_error_inside_the_write_leaves_the_old_file_and_no_temporary(tmp_path: Path) -> None:
    target = tmp_path / "checkpoint.pt"
    target.write_bytes(b"old")
    with pytest.raises(RuntimeError), atomic_path(target) as tmp:
        tmp.write_bytes(b"half a checkpoi")
        raise RuntimeError("disk full")
    assert target.read_bytes() == b"old" and sorted(p.name for p in tmp_path.iterdir()) == ["checkpoint.pt"]


def test_a_kill_during_a_checkpoint_write_leaves_the_old_checkpoint_loadable(tmp_path: Path) -> None:
    target = tmp_path / "checkpoint.pt"
    weights = save_checkpoint(target)
    kill_mid_write(CHECKPOINT_WRITER, target, tmp_path)
    loaded = load_checkpoint(target)  # the old, complete one (writing the target itself would have truncated it at once)
    assert all(torch.equal(loaded.model.state_dict()[k], v) for k, v in weights.items())
    [leftover] = [p.name for p in tmp_path.iterdir() if p.name != "checkpoint.pt" and p.name != "ready"]
    assert leftover.startswith(".checkpoint.pt.") and leftover.endswith(".tmp")  # the unfinished write, under a name nothing loads


def test_a_kill_during_a_cache_build_leaves_no_entry_and_the_rerun_rebuilds_it(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv(cache.ENV_VAR, str(tmp_path / "cache"))
    entry = cache.cache_dir() / "0123456789abcdef0123"
    kill_mid_write(CACHE_WRITER, entry, tmp_path)
    [partial] = cache.cache_dir().iterdir()
    assert partial.name.startswith(cache.BUILDING) and (partial / "images.npy").is_file()  # a half-built entry under another name
    assert cache.load(entry) is None
    rebuilt = np.full((4, 32, 32, 3), 7, np.uint8)
    cache.store(entry, [Decoded(name, rebuilt[i : i + 1]) for i, name in enumerate("abcd")], (4, 32, 32, 3), {"source": "test"})
    assert np.array_equal(cache.load(entry).images, rebuilt)
