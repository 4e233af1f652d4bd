"""Scenario 4: broken, odd and hostile image files are each kept or skipped with their name and reason; no usable image is one error."""

from __future__ import annotations

import os
import struct
import zlib
from pathlib import Path

import numpy as np
import pytest
from PIL import Image

from colorbench.data import SOURCES
from colorbench.errors import DataError
from colorbench.lifecycle.prepare import report_skipped


def colour(size: int = 64, shift: int = 0) -> np.ndarray:
    """A smooth colour gradient (uint8 RGB)."""
    y, x = np.mgrid[0:size, 0:size]
    return np.stack([(x * 255 // size + shift) % 256, y * 255 // size, np.full_like(x, 128)], -1).astype(np.uint8)


def png16(path: Path, rgb: np.ndarray) -> None:
    """A 16-bit-per-channel RGB PNG (Pillow cannot write one)."""
    h, w, _ = rgb.shape

    def chunk(kind: bytes, data: bytes) -> bytes:
        return struct.pack(">I", len(data)) + kind + data + struct.pack(">I", zlib.crc32(kind + data))

    rows = b"".join(b"\0" + row.astype(">u2").tobytes() for row in rgb)
    header = struct.pack(">IIBBBBB", w, h, 16, 2, 0, 0, 0)
    path.write_bytes(b"\x89PNG\r\n\x1a\n" + chunk(b"IHDR", header) + chunk(b"IDAT", zlib.compress(rows)) + chunk(b"IEND", b""))


@pytest.fixture
def photos(tmp_path: Path) -> Path:
    root = tmp_path / "photos"
    (root / "nested").mkdir(parents=True)
    for i in range(3):
        Image.fromarray(colour(shift=40 * i)).save(root / f"good{i}.jpg")
    Image.fromarray(colour()).save(root / "whole.jpg")
    (root / "truncated.jpg").write_bytes((root / "whole.jpg").read_bytes()[:400])
    (root / "whole.jpg").unlink()
    (root / "empty.jpg").write_bytes(b"")
    (root / "notes.jpg").write_text("not an image\n")
    Image.fromarray(colour()).convert("L").save(root / "gray.jpg")
    Image.fromarray(colour(8)).save(root / "tiny.png")
    Image.new("RGB", (12000, 9000), (200, 40, 40)).save(root / "nested" / "huge.jpg", quality=50)  # 108 MP, above PIL's bomb warning
    Image.fromarray(colour(shift=90)).convert("CMYK").save(root / "cmyk.jpg")
    png16(root / "deep.png", colour(shift=150).astype(np.uint16) * 257)
    Image.fromarray(colour()[..., 0].astype(np.uint16) * 257).save(root / "gray16.png")  # 16-bit grayscale (mode I;16)
    os.symlink(root, root / "nested" / "loop")  # a folder that contains itself
    return root


def test_each_bad_file_is_named_and_skipped_and_the_usable_ones_are_kept(photos: Path, capsys: pytest.CaptureFixture) -> None:
    data = SOURCES.build("folder", {"path": str(photos), "image_size": 32})
    assert sorted(data.names) == ["cmyk.jpg", "deep.png", "good0.jpg", "good1.jpg", "good2.jpg", "nested/huge.jpg"]  # once each
    reasons = dict(data.skipped)
    assert sorted(reasons) == ["empty.jpg", "gray.jpg", "gray16.png", "notes.jpg", "tiny.png", "truncated.jpg"]
    for name in ("empty.jpg", "notes.jpg", "truncated.jpg"):
        assert reasons[name].startswith("unreadable image"), reasons[name]
    assert reasons["gray.jpg"] == reasons["gray16.png"] == "grayscale (no colour to learn from)"
    assert reasons["tiny.png"] == "too small (8x8, need at least 16 px)"
    deep = data.images[data.names.index("deep.png")]
    assert deep.dtype == np.uint8 and np.ptp(deep[..., 0]) > 100  # the 16-bit colour photo scaled to 8 bits, not clipped
    report_skipped(data.skipped)
    err = capsys.readouterr().err
    assert "Skipped 6 file(s):" in err and all(f"{name}: {reason}" in err for name, reason in reasons.items())


def test_an_empty_folder_is_one_clear_error(tmp_path: Path) -> None:
    (tmp_path / "empty").mkdir()
    with pytest.raises(DataError, match=r"no image files \(jpg/.*\) below .*empty match include"):
        SOURCES.build("folder", {"path": str(tmp_path / "empty"), "image_size": 32})


def test_a_folder_of_only_bad_files_is_one_clear_error(photos: Path) -> None:
    for name in ("good0.jpg", "good1.jpg", "good2.jpg", "cmyk.jpg", "deep.png", "nested/huge.jpg"):
        (photos / name).unlink()
    with pytest.raises(DataError, match=r"no usable colour images in .* \(6 files, 6 skipped: ") as info:
        SOURCES.build("folder", {"path": str(photos), "image_size": 32})
    assert "\n" not in str(info.value)
