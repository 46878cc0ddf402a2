"""The persistent decode cache: decoded splits kept between runs, in one folder per user.

Where: `$CVTOOL_CACHE_DIR`, else `$XDG_CACHE_HOME/cvtool`, else `~/.cache/cvtool`; entries live
in its `decoded/` folder, not beside the data, so read-only data is cached too and
`cvtool cache list|clear` sees every entry. An entry is `<key>.npy` (N x H x W x C uint8,
memory-mapped when read), `<key>.npz` (each image's original size, which images decoded) and
`<key>.json` (what it holds: split, data root, shape, unreadable images). The key
(`data.cache.cache_key`) covers the decode size, channels, resize and every file's path, size and
mtime: a changed file makes a new key, so an entry never goes stale.

Runs that build the same entry at once (DDP ranks, two runs of one recipe) do not lock: each
fills its own temp file and renames it into place, the .npy last, so an entry whose .npy exists
is complete, and two writers of one key write the same bytes. Before an entry is written, the
least recently used ones (the .npy's mtime, touched on every read) are removed until the folder
fits `data.cache_max_gb`. Torch-free: `cvtool cache` imports this alone.
"""

from __future__ import annotations

import contextlib
import json
import os
import shutil
import socket
import time
import uuid
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np

from cvtool.fileio import atomic_open, write_json

ENV = "CVTOOL_CACHE_DIR"
FREE_MARGIN = 1 << 30  # bytes a new entry leaves free on its disk
STALE_SECONDS = 7 * 24 * 3600  # a temp file this old is abandoned, whoever wrote it
SUFFIXES = (".npy", ".npz", ".json")


def cache_folder() -> Path:
    """cvtool's cache folder: $CVTOOL_CACHE_DIR, else $XDG_CACHE_HOME/cvtool, else ~/.cache/cvtool."""
    if os.environ.get(ENV):
        return Path(os.environ[ENV]).expanduser()
    xdg = os.environ.get("XDG_CACHE_HOME")
    return (Path(xdg).expanduser() if xdg else Path.home() / ".cache") / "cvtool"


def decoded_folder() -> Path:
    """Where decoded splits are kept."""
    return cache_folder() / "decoded"


@dataclass(frozen=True)
class Entry:
    """One complete entry of the folder."""

    folder: Path
    key: str

    def path(self, suffix: str) -> Path:
        return self.folder / f"{self.key}{suffix}"

    @property
    def nbytes(self) -> int:
        return sum(_size(self.path(suffix)) for suffix in SUFFIXES)

    @property
    def last_used(self) -> float:
        with contextlib.suppress(OSError):
            return self.path(".npy").stat().st_mtime
        return 0.0

    def info(self) -> dict[str, Any]:
        """What the entry holds (its .json); {} when unreadable."""
        with contextlib.suppress(OSError, ValueError):
            return json.loads(self.path(".json").read_text(encoding="utf-8"))
        return {}


def _size(path: Path) -> int:
    with contextlib.suppress(OSError):
        return path.stat().st_size
    return 0


def entries(folder: Path) -> list[Entry]:
    """The complete entries in `folder`, most recently used first."""
    if not folder.is_dir():
        return []
    found = [Entry(folder, path.name[: -len(".npy")]) for path in folder.glob("*.npy")]
    return sorted(found, key=lambda entry: entry.last_used, reverse=True)


@dataclass
class Loaded:
    images: np.ndarray  # read-only memory map
    sizes: np.ndarray
    ok: np.ndarray
    skipped: list[tuple[str, str]]


def load(folder: Path, key: str, shape: tuple[int, ...]) -> Loaded | None:
    """The entry `key` if it is complete and has `shape`; marks it used."""
    entry = Entry(folder, key)
    try:
        images = np.load(entry.path(".npy"), mmap_mode="r")
        with np.load(entry.path(".npz")) as arrays:
            sizes, ok = arrays["sizes"], arrays["ok"]
        skipped = [(str(path), str(reason)) for path, reason in entry.info().get("skipped", [])]
    except (OSError, ValueError, KeyError):
        return None
    if images.shape != shape or images.dtype != np.uint8 or len(sizes) != shape[0] or len(ok) != shape[0]:
        return None
    with contextlib.suppress(OSError):  # a read-only cache folder is read all the same
        os.utime(entry.path(".npy"))
    return Loaded(images, sizes, ok, skipped)


class Writer:
    """A new entry, filled in place (a memory-mapped temp file that loader workers share), then
    committed by renames."""

    def __init__(self, folder: Path, key: str, shape: tuple[int, ...]) -> None:
        self.entry = Entry(folder, key)
        # host and pid in the name: `evict` removes the temp files of runs that died
        self.temp = folder / f"{key}.{os.getpid()}.{uuid.uuid4().hex[:8]}.{socket.gethostname()}.tmp"
        self.images = np.lib.format.open_memmap(self.temp, mode="w+", dtype=np.uint8, shape=shape)
        self.done = False

    def commit(self, sizes: np.ndarray, ok: np.ndarray, skipped: list[tuple[str, str]], info: dict[str, Any]) -> None:
        """Flush the images and rename the entry into place (its .npy last). A failed write leaves
        no entry behind and the run goes on."""
        if self.done:
            return
        self.done = True
        try:
            self.images.flush()
            with atomic_open(self.entry.path(".npz"), "wb") as handle:
                np.savez(handle, sizes=sizes, ok=ok)
            write_json(self.entry.path(".json"), {**info, "skipped": skipped, "created": time.time()})
            os.replace(self.temp, self.entry.path(".npy"))
        except OSError:
            self.discard()

    def discard(self) -> None:
        """Drop the temp file (the mapping stays valid while this process holds it)."""
        self.done = True
        with contextlib.suppress(OSError):
            self.temp.unlink()


def reserve(folder: Path, key: str, shape: tuple[int, ...], max_bytes: float, required: bool) -> Writer | None:
    """A Writer for a new entry, after removing least recently used entries so that the folder
    stays under `max_bytes`. None when the entry alone is larger (unless `required`), the disk
    lacks room or the folder cannot be written; OSError when `required` and it cannot."""
    nbytes = int(np.prod(shape))
    if nbytes > max_bytes and not required:
        return None
    try:
        folder.mkdir(parents=True, exist_ok=True)
        evict(folder, max_bytes - nbytes)
        if shutil.disk_usage(folder).free < nbytes + FREE_MARGIN:
            raise OSError(28, "not enough free disk space")
        return Writer(folder, key, shape)
    except OSError:
        if required:
            raise
        return None


def evict(folder: Path, budget: float) -> list[Entry]:
    """Remove least recently used entries until the rest take at most `budget` bytes, and temp
    files whose writer is gone; the removed entries."""
    _remove_abandoned(folder)
    kept, removed = 0, []
    for entry in entries(folder):
        size = entry.nbytes
        if kept + size <= budget:
            kept += size
            continue
        remove(entry)
        removed.append(entry)
    return removed


def remove(entry: Entry) -> None:
    """Remove an entry, its .npy first (then it is no longer complete); a reader that has it
    mapped keeps reading it."""
    for suffix in SUFFIXES:
        with contextlib.suppress(OSError):
            entry.path(suffix).unlink()


def _remove_abandoned(folder: Path) -> None:
    host = socket.gethostname()
    for temp in folder.glob("*.tmp"):
        parts = temp.name.split(".")
        with contextlib.suppress(OSError, ValueError, IndexError):
            mine = ".".join(parts[3:-1]) == host and not _alive(int(parts[1]))
            if mine or time.time() - temp.stat().st_mtime > STALE_SECONDS:
                temp.unlink()


def _alive(pid: int) -> bool:
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return False
    except OSError:  # exists, another user's
        return True
    return True
