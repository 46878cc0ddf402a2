"""One split's decode, filled row by row: the arrays every view, loader worker and the filler
share, and the decoding itself (a thread pool: PIL releases the GIL while it decodes and resizes).

A row's state is 0 until it is decoded, then DECODED or UNREADABLE; the pixels and the original
size are written before the state, so a reader that sees DECODED sees them. Two processes that
decode one row at once write the same bytes.
"""

from __future__ import annotations

import mmap
import os
import threading
from collections.abc import Callable
from concurrent.futures import ThreadPoolExecutor
from typing import Any

import numpy as np

from cvtool.data import cache_store
from cvtool.data.formats import Split
from cvtool.data.images import decode
from cvtool.errors import BadImageError

DECODED, UNREADABLE = 1, 2  # a row's state; 0: not decoded yet
PARALLEL_FROM = 4  # rows decoded at once from which the thread pool pays for its hand-off
THREADS = min(8, os.cpu_count() or 1)  # decode threads per process


class Decoded:
    """A whole split's decode, shared by its views (a fold's train and val split): uint8 images
    N x H x W x C, original (width, height) sizes and a state per row."""

    def __init__(self, split: Split, key: str, images: np.ndarray, writer: cache_store.Writer | None,
                 size: int, channels: int, resize: str) -> None:
        self.split, self.key, self.images, self.writer = split, key, images, writer
        self.size, self.channels, self.resize = size, channels, resize
        self.sizes = shared((len(split), 2), np.int64)
        self.state = shared((len(split),), np.uint8)
        self.reasons: dict[int, str] = {}  # row -> why it is unreadable (this process's decodes)
        self.owner = os.getpid()  # the process that commits the entry
        self.filled_behind = False  # a filler commits; else the decode that completes the split does
        self.lock = threading.Lock()

    def __len__(self) -> int:
        return len(self.split)

    def __getstate__(self) -> dict[str, Any]:
        """Pickled for a spawned loader worker: a copy of the arrays (what it decodes stays there)."""
        return {**self.__dict__, "lock": None}

    def __setstate__(self, state: dict[str, Any]) -> None:
        self.__dict__.update(state, lock=threading.Lock())

    @property
    def complete(self) -> bool:
        return bool((self.state != 0).all())

    def ensure(self, rows: np.ndarray) -> None:
        """Decode the rows not decoded yet; the first unreadable one raises BadImageError."""
        todo = np.unique(rows[self.state[rows] != DECODED])
        if not len(todo):
            return
        bad = self.decode_rows(todo)
        if bad:
            raise BadImageError(self.split.paths[bad[0]], self.reasons.get(bad[0], "unreadable"))
        if not self.filled_behind:
            self.commit_if_complete()

    def decode_rows(self, rows: np.ndarray, progress: Callable[[int], None] | None = None,
                    parallel: bool = True) -> list[int]:
        """Decode `rows` into the arrays (in chunks on the thread pool, except in a loader worker,
        which runs beside the others); the unreadable ones (marked, their reason kept)."""
        rows = np.asarray(rows, np.int64)
        if not parallel or len(rows) < PARALLEL_FROM or _in_loader_worker():
            chunks = [rows]
        else:
            chunks = np.array_split(rows, min(len(rows) // 2, 4 * THREADS))
        work = (self._decode_chunk(chunk, progress) for chunk in chunks) if len(chunks) == 1 else \
            _pool().map(self._decode_chunk, chunks, [progress] * len(chunks))
        return [row for bad in work for row in bad]

    def _decode_chunk(self, rows: np.ndarray, progress: Callable[[int], None] | None) -> list[int]:
        bad = [row for row in rows.tolist() if not self._decode_one(row)]
        if progress:
            progress(len(rows))
        return bad

    def fill(self, progress: Callable[[int], None] | None = None) -> None:
        """Decode every row left, unreadable ones marked (not raised), and commit."""
        todo = np.flatnonzero(self.state == 0)
        if progress:
            progress(len(self) - len(todo))
        self.decode_rows(todo, progress)
        self.commit_if_complete()

    def _decode_one(self, row: int) -> bool:
        try:
            array, original = decode(self.split.paths[row], self.channels, self.size, self.resize)
        except BadImageError as exc:
            self.reasons[row] = exc.reason
            self.state[row] = UNREADABLE
            return False
        self.images[row] = array
        self.sizes[row] = original
        self.state[row] = DECODED  # after the pixels: a reader that sees the state sees them
        return True

    def commit_if_complete(self) -> None:
        """Write the persistent entry once every row is decoded (in the process that made it)."""
        with self.lock:
            if self.writer is None or self.writer.done or os.getpid() != self.owner or not self.complete:
                return
            bad = np.flatnonzero(self.state == UNREADABLE)
            skipped = [(str(self.split.paths[i]), self.reasons.get(int(i), "unreadable")) for i in bad]
            root = os.path.commonpath([str(p) for p in self.split.paths[:1000]]) if len(self) else ""
            info = {"split": self.split.name, "root": root, "shape": list(self.images.shape)}
            self.writer.commit(np.asarray(self.sizes), self.state == DECODED, skipped, info)


def shared(shape: tuple[int, ...], dtype: Any) -> np.ndarray:
    """Zeroed memory that forked loader workers share (MAP_SHARED | MAP_ANONYMOUS)."""
    nbytes = max(1, int(np.prod(shape)) * np.dtype(dtype).itemsize)
    return np.frombuffer(mmap.mmap(-1, nbytes), dtype=dtype, count=int(np.prod(shape))).reshape(shape)


_POOL: tuple[int, ThreadPoolExecutor] | None = None


def _pool() -> ThreadPoolExecutor:
    """This process's decode threads (a forked child makes its own)."""
    global _POOL
    if _POOL is None or _POOL[0] != os.getpid():
        _POOL = (os.getpid(), ThreadPoolExecutor(THREADS, thread_name_prefix="cvtool-decode"))
    return _POOL[1]


def _in_loader_worker() -> bool:
    """In a DataLoader worker process (which decodes its batches alone; the workers run in parallel)."""
    import sys

    data = sys.modules.get("torch.utils.data")
    return data is not None and data.get_worker_info() is not None
