"""Decoded splits: each image decoded once into uint8 at the recipe's decode size
(data.decode_size, by default its image size), when it is first read.

A split opens at once. An image is decoded when a batch first asks for it (`DecodedSplit.gather`,
in whichever process runs the loader; several at a time on a thread pool, as PIL releases the
GIL), or earlier by the filler behind the training (`data.filler`), so the first epoch trains
while the data decodes and later epochs read decoded images. Each image is decoded alone by the
same function either way: the pixels do not depend on who decoded them or when.

Where the pixels live (`data.cache`):
- auto: an entry of the persistent cache (`data.cache_store`, ~/.cache/cvtool), filled in place
  and reused by every later run on the same files; in memory when the cache folder cannot take it
  (read-only, disk full). A split larger than `data.cache_max_gb` is not kept: it is decoded into
  an unnamed temp file for this run.
- memory: in memory, never written.
- disk: the persistent entry whatever its size, or one line saying why it cannot be written.
Either way the arrays are shared with forked loader workers (a memory map of the entry's file, or
shared anonymous memory), so what a worker decodes, every process reads.
"""

from __future__ import annotations

import shutil
import tempfile
from collections.abc import Callable
from pathlib import Path
from typing import Any

import numpy as np

from cvtool.data import cache_store
from cvtool.data.decoding import DECODED, UNREADABLE, Decoded, shared
from cvtool.data.formats import Split
from cvtool.errors import BadImageError, CvtoolError
from cvtool.tasks.frame import frame_boxes


def cache_key(split: Split, size: int, channels: int, resize: str = "squash") -> str:
    """The entry of `split` decoded at `size`, `channels`, `resize`: its files' paths, sizes, mtimes."""
    import hashlib

    digest = hashlib.sha256((f"v1|{size}|{channels}" + ("" if resize == "squash" else f"|{resize}")).encode())
    for path in split.paths:
        try:
            stat = path.stat()
            digest.update(f"{path}|{stat.st_size}|{stat.st_mtime_ns}\n".encode())
        except OSError:
            digest.update(f"{path}|missing\n".encode())
    return digest.hexdigest()[:20]


class DecodedSplit:
    """One split's view of a `Decoded` (all of it, or a fold's rows), without unreadable images
    when `data.on_bad_image: skip` left them out."""

    def __init__(self, name: str, decoded: Decoded, rows: np.ndarray | None, targets: np.ndarray | None,
                 skipped: list[tuple[str, str]] | None = None) -> None:
        self.name, self.decoded, self.rows, self.targets = name, decoded, rows, targets
        self.skipped = skipped or []  # (path, reason)
        self.resize = decoded.resize
        self.paths = decoded.split.paths if rows is None else [decoded.split.paths[i] for i in rows]

    def __len__(self) -> int:
        return len(self.paths)

    @property
    def shape(self) -> tuple[int, int, int, int]:
        """N x H x W x C of the decoded images."""
        return (len(self), self.decoded.size, self.decoded.size, self.decoded.channels)

    @property
    def nbytes(self) -> int:
        return int(np.prod(self.shape))

    def _rows(self, indices: Any) -> np.ndarray:
        index = np.asarray(indices, np.int64)
        return index if self.rows is None else self.rows[index]

    def gather(self, indices: Any) -> np.ndarray:
        """The images at `indices` (decoded first where they are not yet): len x H x W x C."""
        rows = self._rows(np.atleast_1d(indices))
        self.decoded.ensure(rows)
        return self.decoded.images[rows]

    def complete(self) -> None:
        """Decode every image of the split not decoded yet (on the thread pool), e.g. before the
        split is copied to the device whole."""
        self.decoded.ensure(self._rows(np.arange(len(self))))

    @property
    def images(self) -> np.ndarray:
        """Every image of the split (decoding those left): N x H x W x C."""
        self.complete()
        return self.decoded.images if self.rows is None else self.decoded.images[self.rows]

    def sizes_of(self, indices: Any) -> np.ndarray:
        """The original (width, height) of the images at `indices` (decoded first where needed)."""
        rows = self._rows(indices)
        self.decoded.ensure(np.atleast_1d(rows))
        return np.asarray(self.decoded.sizes[rows])

    @property
    def sizes(self) -> np.ndarray:
        """N x 2 original (width, height) sizes (decoding every image left)."""
        return self.sizes_of(np.arange(len(self)))

    @property
    def frames(self) -> Frames:
        """N x 4 model frames (x0, y0, width, height) in original pixels (`tasks.frame`), read by index."""
        return Frames(self)


class Frames:
    """A split's model frames, each computed once its image is decoded: indexing by sample
    (`frames[indices]`) decodes only those images; `np.asarray(frames)` decodes the split."""

    def __init__(self, split: DecodedSplit) -> None:
        self.split = split

    def __len__(self) -> int:
        return len(self.split)

    def __getitem__(self, key: Any) -> np.ndarray:
        if isinstance(key, tuple | slice):
            return np.asarray(self)[key]
        boxes = frame_boxes(self.split.sizes_of(np.atleast_1d(key)), self.split.resize)
        return boxes[0] if np.ndim(key) == 0 else boxes

    def __array__(self, dtype: Any = None, copy: Any = None) -> np.ndarray:
        boxes = frame_boxes(self.split.sizes, self.split.resize)
        return boxes if dtype is None else boxes.astype(dtype)


def decode_splits(splits: dict[str, Split], size: int, channels: int, *, mode: str = "auto", max_gb: float = 4.0,
                  on_bad_image: str = "fail", resize: str = "squash",
                  progress: Callable[[str, int], Callable[[int], None]] | None = None) -> dict[str, DecodedSplit]:
    """Each split opened for decoding (cut splits share the decode of the split they were cut
    from). `on_bad_image: skip` decodes a split whole now: which images it leaves out must be known
    before training (`progress(name, total)` gives the bar's advance); an unreadable image already
    known raises BadImageError under `fail`, else as its batch is read."""
    opened: dict[int, Decoded] = {}
    views = {}
    for name, split in splits.items():
        whole = split.source or split
        if id(whole) not in opened:
            opened[id(whole)] = open_decoded(whole, size, channels, mode=mode, max_gb=max_gb, resize=resize)
        decoded = opened[id(whole)]
        if on_bad_image == "skip" and not decoded.complete:
            decoded.fill(progress(name, len(decoded)) if progress else None)
        views[name] = _view(name, decoded, split, on_bad_image)
    return views


def _view(name: str, decoded: Decoded, split: Split, on_bad_image: str) -> DecodedSplit:
    rows = split.rows
    state = decoded.state if rows is None else decoded.state[rows]
    bad = np.flatnonzero(state == UNREADABLE)
    if not len(bad):
        return DecodedSplit(name, decoded, rows, split.targets)
    skipped = [(str(split.paths[i]), decoded.reasons.get(int(i if rows is None else rows[i]), "unreadable"))
               for i in bad]
    if on_bad_image == "fail":
        raise BadImageError(*skipped[0])
    kept = np.flatnonzero(state != UNREADABLE)
    targets = None if split.targets is None else split.targets[kept]
    return DecodedSplit(name, decoded, kept if rows is None else rows[kept], targets, skipped)


def open_decoded(split: Split, size: int, channels: int, *, mode: str = "auto", max_gb: float = 4.0,
                 resize: str = "squash") -> Decoded:
    """`split` (a whole one) opened for decoding: a complete cache entry when there is one, else
    empty arrays where `mode` says (module docstring)."""
    shape = (len(split), size, size, channels)
    key = cache_key(split, size, channels, resize)
    folder = cache_store.decoded_folder()
    if mode != "memory":
        loaded = cache_store.load(folder, key, shape)
        if loaded is not None:
            decoded = Decoded(split, key, loaded.images, None, size, channels, resize)
            decoded.sizes[:] = loaded.sizes
            decoded.state[:] = np.where(loaded.ok, DECODED, UNREADABLE)
            reasons = dict(loaded.skipped)
            decoded.reasons = {i: reasons.get(str(p), "unreadable") for i, p in enumerate(split.paths)
                               if not loaded.ok[i]}
            return decoded
    images, writer = _allocate(folder, key, shape, mode, max_gb * 1e9)
    return Decoded(split, key, images, writer, size, channels, resize)


def _allocate(folder: Path, key: str, shape: tuple[int, ...], mode: str,
              max_bytes: float) -> tuple[np.ndarray, cache_store.Writer | None]:
    if mode == "memory":
        return shared(shape, np.uint8), None
    try:
        writer = cache_store.reserve(folder, key, shape, max_bytes, required=mode == "disk")
    except OSError as exc:
        raise CvtoolError(f"data.cache: disk: cannot write the cache entry in {folder} "
                          f"({exc.strerror or exc}); set {cache_store.ENV} to a writable folder") from None
    if writer is not None:
        return writer.images, writer
    if np.prod(shape) <= max_bytes:
        return shared(shape, np.uint8), None
    for place in (folder, Path(tempfile.gettempdir())):  # too big for memory: an unnamed file
        try:
            place.mkdir(parents=True, exist_ok=True)
            if shutil.disk_usage(place).free < np.prod(shape) + cache_store.FREE_MARGIN:
                continue  # a memory map on a full disk dies of SIGBUS
            temp = cache_store.Writer(place, key, shape)
        except OSError:
            continue
        temp.discard()  # unlinked now; the mapping (and forked workers') lives on
        return temp.images, None
    return shared(shape, np.uint8), None


