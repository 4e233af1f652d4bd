"""Decode-once cache: each source's images decoded and resized once into a uint8 memory-mapped store on disk.

An entry is `<cache dir>/<key>/` with `images.npy` ((N,S,S,3) uint8) and `meta.json` (groups, names, skipped files,
provenance, content fingerprint). It is built as a stream: each decoded file goes straight into the pre-allocated
memory-mapped `images.npy`, so a build holds a few decoded files at a time, never the set. The key hashes the source, the decoding parameters (image size, crops, crop seed) and the file list
(relative path, size, mtime), so editing, adding or removing a file or changing the size makes a new entry; every
epoch, fold, cell, grid re-run and search reads the same one. An entry is built in a hidden folder beside it and
renamed into place when complete, so an interrupted build never leaves an entry that loads; an entry that fails its
checks (unreadable meta, truncated or mis-shaped images) is removed and rebuilt.
"""

from __future__ import annotations

import hashlib
import json
import os
import re
import shutil
import tempfile
import time
from collections.abc import Callable, Iterable
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np
import platformdirs

from colorbench.errors import DataError
from colorbench.images import Decoded, ImageSet, digest_names

FORMAT = 2  # bump when the stored layout or the decoding changes: old entries are then never matched
ENV_VAR = "COLORBENCH_CACHE_DIR"
BUILDING = ".building-"  # prefix of an entry still being written (or left by a killed build)
KEY = re.compile(r"[0-9a-f]{20}")


def cache_dir() -> Path:
    """Where entries live: `$COLORBENCH_CACHE_DIR`, else the user's cache folder (e.g. ~/.cache/colorbench)."""
    env = os.environ.get(ENV_VAR)
    return Path(env).expanduser() if env else Path(platformdirs.user_cache_dir("colorbench"))


def cache_key(source: str, params: dict[str, Any], files: list[Path], root: Path) -> str:
    """Hash of the source, its decoding parameters and the ordered file list (relative path, size, mtime)."""
    listing = []
    for path in files:
        stat = path.stat()
        listing.append([str(path.relative_to(root)), stat.st_size, stat.st_mtime_ns])
    blob = json.dumps({"format": FORMAT, "source": source, "root": str(root.resolve()), "params": params, "files": listing}, sort_keys=True)
    return hashlib.sha1(blob.encode()).hexdigest()[:20]


def cached(
    source: str, params: dict[str, Any], files: list[Path], root: Path, decode: Callable[[], Iterable[Decoded]], shape: tuple[int, ...]
) -> ImageSet:
    """The entry for these files and parameters, memory-mapped; when there is none, `decode()` decodes them (once) into at most
    `shape` images."""
    entry = cache_dir() / cache_key(source, params, files, root)
    data = load(entry)
    if data is None:
        store(entry, decode(), shape, {"source": source, "params": params, "root": str(root), "n_files": len(files)})
        data = load(entry)
    if data is None:
        raise DataError(f"the decode cache entry {entry} could not be read back after writing it; run `colorbench cache clear` and retry")
    return data


def load(entry: Path) -> ImageSet | None:
    """The image set stored at `entry`, or None if there is none; a partial or corrupt entry is removed and gives None.

    Images are mapped copy-on-write: pages are read on demand and shared between processes, and writes stay private.
    """
    if not entry.is_dir():
        return None
    try:
        meta = json.loads((entry / "meta.json").read_text())
        images = np.load(entry / "images.npy", mmap_mode="c")
        if meta["format"] != FORMAT or images.dtype != np.uint8 or list(images.shape) != meta["shape"]:
            raise ValueError("images.npy does not match meta.json")
        if not len(meta["names"]) == len(meta["groups"]) == len(images):
            raise ValueError("names or groups do not match the images")
    except (OSError, ValueError, KeyError, TypeError):
        shutil.rmtree(entry, ignore_errors=True)
        return None
    skipped = [tuple(s) for s in meta["skipped"]]
    return ImageSet(images, np.asarray(meta["groups"], dtype=np.int64), meta["names"], skipped, digest=meta["fingerprint"])


def store(entry: Path, decoded: Iterable[Decoded], shape: tuple[int, ...], provenance: dict[str, Any]) -> None:
    """Write the decoded files, in order, as the entry `entry`, at most `shape` images: each file's squares go straight into
    the memory-mapped `images.npy`, which is cut to the images kept at the end; the content fingerprint is computed on the
    way. Written into a hidden folder first, renamed into place once complete and synced."""
    try:
        entry.parent.mkdir(parents=True, exist_ok=True)
        tmp = Path(tempfile.mkdtemp(prefix=BUILDING, dir=entry.parent))
    except OSError as err:
        raise DataError(f"cannot write the decode cache in {entry.parent} ({err.strerror}); set {ENV_VAR} to a writable folder") from None
    try:
        images = np.lib.format.open_memmap(tmp / "images.npy", mode="w+", dtype=np.uint8, shape=shape)
        pixels, n, groups, names, skipped = hashlib.sha1(), 0, [], [], []
        for item in decoded:
            if item.squares is None:
                skipped.append([item.name, item.reason])
                continue
            k = len(item.squares)
            images[n : n + k] = item.squares
            pixels.update(item.squares.data)
            groups += [n] * k  # a photo's group is the index of its first image
            names += [item.name] * k
            n += k
        images.flush()
        del images
        cut(tmp / "images.npy", (n, *shape[1:]))
        meta = {
            "format": FORMAT,
            **provenance,
            "shape": [n, *shape[1:]],
            "created": time.time(),
            "fingerprint": digest_names(pixels, names),
            "groups": groups,
            "names": names,
            "skipped": skipped,
        }
        (tmp / "meta.json").write_text(json.dumps(meta))
        for name in ("images.npy", "meta.json"):
            with open(tmp / name, "rb") as handle:
                os.fsync(handle.fileno())
        try:
            os.rename(tmp, entry)
        except OSError:
            if not entry.is_dir():  # else another process finished the same entry first: keep theirs
                raise
    except OSError as err:
        raise DataError(f"cannot write the decode cache entry {entry} ({err.strerror}); free disk space or set {ENV_VAR} elsewhere") from None
    finally:
        shutil.rmtree(tmp, ignore_errors=True)


def cut(path: Path, shape: tuple[int, ...]) -> None:
    """Shrink the uint8 .npy file at `path` to its first shape[0] rows: rewrite the header in place (numpy reserves room
    for the first axis to change) and truncate the data."""
    with open(path, "r+b") as handle:
        np.lib.format.read_magic(handle)
        np.lib.format.read_array_header_1_0(handle)
        offset = handle.tell()
        handle.seek(0)
        np.lib.format.write_array_header_1_0(handle, {"descr": "|u1", "fortran_order": False, "shape": shape})
        if handle.tell() != offset:
            raise OSError(f"cannot shrink {path}: its header would move")
        handle.truncate(offset + int(np.prod(shape)))


@dataclass
class EntryInfo:
    """One folder of the cache directory, as `colorbench cache info` lists it."""

    key: str
    bytes: int
    source: str = "(incomplete)"
    root: str = ""
    n_images: int = 0
    image_size: int = 0
    created: float | None = None


def _folders() -> list[Path]:
    """Entries and leftover builds in the cache directory (nothing else there is ever touched)."""
    root = cache_dir()
    if not root.is_dir():
        return []
    return sorted(p for p in root.iterdir() if p.is_dir() and (KEY.fullmatch(p.name) or p.name.startswith(BUILDING)))


def _size(folder: Path) -> int:
    return sum(f.stat().st_size for f in folder.rglob("*") if f.is_file())


def entries() -> list[EntryInfo]:
    """Every entry (and leftover partial build) in the cache directory, oldest first."""
    infos = []
    for folder in _folders():
        info = EntryInfo(folder.name, _size(folder))
        try:
            meta = json.loads((folder / "meta.json").read_text())
            info.source, info.root, info.created = meta["source"], meta["root"], meta["created"]
            info.n_images, info.image_size = meta["shape"][0], meta["shape"][1]
        except (OSError, ValueError, KeyError, TypeError, IndexError):
            pass
        infos.append(info)
    return sorted(infos, key=lambda i: i.created or 0.0)


def clear() -> tuple[int, int]:
    """Remove every entry and leftover build; return (folders removed, bytes freed)."""
    removed = freed = 0
    for folder in _folders():
        size = _size(folder)
        shutil.rmtree(folder, ignore_errors=True)
        if not folder.exists():
            removed, freed = removed + 1, freed + size
    return removed, freed


def human_bytes(n: float) -> str:
    """1536 -> '1.5 KiB'."""
    units = ("B", "KiB", "MiB", "GiB", "TiB")
    i = 0
    while n >= 1024 and i < len(units) - 1:
        n, i = n / 1024, i + 1
    return f"{n:.0f} B" if i == 0 else f"{n:.1f} {units[i]}"
