"""Decode each split once into a uint8 array at the recipe's decode size (data.decode_size,
by default its image size).

In memory when it fits under `data.cache_max_gb`, otherwise (or with `cache: disk`) a
memory-mapped .npy beside the data, reused across runs while the files are unchanged.
Decoding runs on a thread pool (PIL releases the GIL while it decodes and resizes).
"""

from __future__ import annotations

import hashlib
import json
import os
from collections.abc import Callable
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass, field
from pathlib import Path

import numpy as np

from cvtool.data.formats import Split
from cvtool.data.images import decode
from cvtool.errors import BadImageError, CvtoolError
from cvtool.fileio import atomic_open, write_json
from cvtool.tasks.frame import frame_boxes

CACHE_DIR = ".cvtool-cache"


@dataclass
class DecodedSplit:
    name: str
    paths: list[Path]
    images: np.ndarray  # N x H x W x C uint8 (array or memmap)
    sizes: np.ndarray  # N x 2 original (width, height)
    targets: np.ndarray | None  # raw targets of the kept images
    skipped: list[tuple[str, str]] = field(default_factory=list)  # (path, reason)
    resize: str = "squash"  # data.resize the images were decoded with

    def __len__(self) -> int:
        return len(self.paths)

    @property
    def frames(self) -> np.ndarray:
        """N x 4 model frames (x0, y0, width, height) in original pixels (`tasks.frame`)."""
        return frame_boxes(self.sizes, self.resize)


def cache_key(split: Split, size: int, channels: int, resize: str = "squash") -> str:
    digest = hashlib.sha256((f"v1|{size}|{channels}" + ("" if resize == "squash" else f"|{resize}")).encode())
    for path in split.paths:
        try:
            stat = path.stat()
            digest.update(f"{path}|{stat.st_size}|{stat.st_mtime_ns}\n".encode())
        except OSError:
            digest.update(f"{path}|missing\n".encode())
    return digest.hexdigest()[:20]


def decode_split(split: Split, size: int, channels: int, *, root: Path, mode: str = "auto",
                 max_gb: float = 4.0, on_bad_image: str = "fail",
                 progress: Callable[[int], None] | None = None, resize: str = "squash") -> DecodedSplit:
    """The decoded split; bad images raise (naming the file) or are skipped and counted."""
    nbytes = len(split) * size * size * channels
    use_disk = mode == "disk" or (mode == "auto" and nbytes > max_gb * 1e9)
    key = cache_key(split, size, channels, resize)
    folder = root / CACHE_DIR
    if use_disk:
        cached = _load_disk(folder, key, split, resize)
        if cached is not None:
            if cached.skipped and on_bad_image == "fail":
                path, reason = cached.skipped[0]
                raise BadImageError(path, reason)
            if progress:
                progress(len(split))
            return cached
    images = _allocate(folder, key, len(split), size, channels, use_disk)
    sizes = np.zeros((len(split), 2), np.int64)
    ok = np.ones(len(split), bool)
    skipped: list[tuple[str, str]] = []

    def work(i: int) -> tuple[int, str | None]:
        try:
            array, original = decode(split.paths[i], channels, size, resize)
        except BadImageError as exc:
            return i, exc.reason
        images[i] = array
        sizes[i] = original
        return i, None

    workers = min(8, os.cpu_count() or 1)
    with ThreadPoolExecutor(workers) as pool:
        for i, reason in pool.map(work, range(len(split)), chunksize=64):
            if reason is not None:
                if on_bad_image == "fail":
                    raise BadImageError(split.paths[i], reason)
                ok[i] = False
                skipped.append((str(split.paths[i]), reason))
            if progress:
                progress(1)
    if use_disk:
        images.flush()
        _finish_disk(folder, key, images, sizes, ok, skipped)
    return _keep(split, images, sizes, ok, skipped, resize)


def _keep(split: Split, images: np.ndarray, sizes: np.ndarray, ok: np.ndarray,
          skipped: list[tuple[str, str]], resize: str) -> DecodedSplit:
    if ok.all():
        return DecodedSplit(split.name, list(split.paths), images, sizes, split.targets, skipped, resize)
    index = np.flatnonzero(ok)
    targets = None if split.targets is None else split.targets[index]
    return DecodedSplit(split.name, [split.paths[i] for i in index], images[index], sizes[index], targets, skipped,
                        resize)


def _allocate(folder: Path, key: str, count: int, size: int, channels: int, disk: bool) -> np.ndarray:
    shape = (count, size, size, channels)
    if not disk:
        return np.zeros(shape, np.uint8)
    try:
        folder.mkdir(parents=True, exist_ok=True)
    except OSError as exc:
        raise CvtoolError(f"data.cache: cannot create {folder}: {exc.strerror}") from None
    # one temp file per process: DDP ranks may build the same cache at once
    return np.lib.format.open_memmap(folder / f"{key}.npy.{os.getpid()}.tmp", mode="w+", dtype=np.uint8, shape=shape)


def _finish_disk(folder: Path, key: str, images: np.ndarray, sizes: np.ndarray, ok: np.ndarray,
                 skipped: list[tuple[str, str]]) -> None:
    del images
    os.replace(folder / f"{key}.npy.{os.getpid()}.tmp", folder / f"{key}.npy")
    with atomic_open(folder / f"{key}.meta.npz", "wb") as handle:
        np.savez(handle, sizes=sizes, ok=ok)
    write_json(folder / f"{key}.skipped.json", skipped)


def _load_disk(folder: Path, key: str, split: Split, resize: str) -> DecodedSplit | None:
    data, meta, bad = folder / f"{key}.npy", folder / f"{key}.meta.npz", folder / f"{key}.skipped.json"
    if not (data.is_file() and meta.is_file() and bad.is_file()):
        return None
    try:
        images = np.load(data, mmap_mode="r")
        with np.load(meta) as arrays:
            sizes, ok = arrays["sizes"], arrays["ok"]
        skipped = [tuple(item) for item in json.loads(bad.read_text())]
    except (OSError, ValueError, KeyError):
        return None
    if len(images) != len(split):
        return None
    return _keep(split, images, sizes, ok, skipped, resize)
