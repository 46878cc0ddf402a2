"""Pixels of many image files, streamed: each worker decodes one chunk of files at a time and
returns exact per-channel histograms of the 0..255 values (so exact sums of x, x^2 and pixel
counts); memory stays constant however many images there are (`cvtool stats`, `normalize: auto`)."""

from __future__ import annotations

import contextlib
import multiprocessing
import os
import signal
import sys
import warnings
from collections import Counter
from collections.abc import Callable, Iterator, Sequence
from concurrent import futures
from dataclasses import dataclass, field

import numpy as np

from cvtool.data.images import decode, open_image
from cvtool.errors import BadImageError

FILES_PER_WORKER = 256  # fewer files per worker: read inline, a pool would not pay off
CHUNK_FILES = 32


@dataclass
class Tally:
    """Totals of one chunk of files, merged in the caller. Pixels are kept as exact per-channel
    histograms of the 0..255 values (fast with bincount; sums of x and x^2 follow exactly)."""

    channels: int
    files: int = 0
    images: int = 0
    histogram: np.ndarray = field(default_factory=lambda: np.zeros(0, np.int64))
    sizes: dict[str, Counter] = field(default_factory=dict)
    modes: dict[str, Counter] = field(default_factory=dict)
    unreadable: list[dict[str, str]] = field(default_factory=list)

    def __post_init__(self) -> None:
        if self.histogram.size == 0:
            self.histogram = np.zeros((self.channels, 256), np.int64)

    def add_pixels(self, arr: np.ndarray) -> None:
        flat = arr.reshape(-1, arr.shape[2])
        step = 1 << 20  # bincount copies its input to intp: bound that copy for huge native images
        for start in range(0, len(flat), step):
            for channel in range(flat.shape[1]):
                self.histogram[channel] += np.bincount(flat[start:start + step, channel], minlength=256)
        self.images += 1

    def merge(self, other: Tally) -> None:
        self.files += other.files
        self.images += other.images
        self.histogram += other.histogram
        for mine, theirs in ((self.sizes, other.sizes), (self.modes, other.modes)):
            for split, counter in theirs.items():
                mine.setdefault(split, Counter()).update(counter)
        self.unreadable.extend(other.unreadable)


def _scan_chunk(jobs: Sequence[tuple[str, str, bool]], channels: int, size: int | None,
                resize: str = "squash") -> Tally:
    """Decode each (split, path, accumulate) file; pixel sums only for training files."""
    from PIL import Image

    tally = Tally(channels, files=len(jobs))
    for split, path, accumulate in jobs:
        try:
            if accumulate:
                arr, original = decode(path, channels, size, resize)
            else:
                original = open_image(path).size
            with Image.open(path) as img:  # the mode as stored (open_image turns palette into RGBA)
                mode = img.mode
        except (BadImageError, OSError, ValueError) as exc:  # OSError, ValueError: from the header re-read
            reason = exc.reason if isinstance(exc, BadImageError) else str(exc) or type(exc).__name__
            tally.unreadable.append({"split": split, "path": path, "reason": reason})
            continue
        if accumulate:
            tally.add_pixels(arr)
        tally.sizes.setdefault(split, Counter())[f"{original[0]}x{original[1]}"] += 1
        tally.modes.setdefault(split, Counter())[mode] += 1
    return tally


@contextlib.contextmanager
def _progress_bar(show: bool, total: int, label: str) -> Iterator[Callable[[int], None]]:
    if not show:
        yield lambda _: None
        return
    from rich.console import Console
    from rich.progress import BarColumn, MofNCompleteColumn, Progress, TextColumn, TimeRemainingColumn

    columns = (TextColumn("{task.description}"), BarColumn(), MofNCompleteColumn(), TimeRemainingColumn())
    with Progress(*columns, console=Console(stderr=True), transient=True) as bar:
        task_id = bar.add_task(label, total=total)
        yield lambda n: bar.advance(task_id, n)


def _pool(workers: int) -> futures.Executor:
    """Processes forked on Linux (no re-imported __main__, so it works from scripts, stdin and
    notebooks, as torch's DataLoader workers do); threads elsewhere and inside daemon processes."""
    if sys.platform == "linux" and not multiprocessing.current_process().daemon:
        return futures.ProcessPoolExecutor(workers, mp_context=multiprocessing.get_context("fork"),
                                           initializer=signal.signal, initargs=(signal.SIGINT, signal.SIG_IGN))
    return futures.ThreadPoolExecutor(workers, thread_name_prefix="cvtool-stats")


def scan(jobs: list[tuple[str, str, bool]], channels: int, size: int | None, progress: bool,
          workers: int | None, resize: str = "squash") -> Tally:
    """Totals over all (split, path, accumulate) jobs, read in chunks on all cores."""
    cores = len(os.sched_getaffinity(0)) if hasattr(os, "sched_getaffinity") else os.cpu_count() or 1
    workers = workers or max(1, min(cores, len(jobs) // FILES_PER_WORKER))
    chunks = (jobs[i:i + CHUNK_FILES] for i in range(0, len(jobs), CHUNK_FILES))
    total = Tally(channels)
    with _progress_bar(progress, len(jobs), "reading images") as advance:
        for tally in _chunk_results(chunks, channels, size, workers, resize):
            total.merge(tally)
            advance(tally.files)
    return total


def _chunk_results(chunks: Iterator[list], channels: int, size: int | None, workers: int,
                   resize: str) -> Iterator[Tally]:
    """One tally per chunk; at most two chunks per worker in flight, so memory stays constant."""
    if workers <= 1:
        yield from (_scan_chunk(chunk, channels, size, resize) for chunk in chunks)
        return
    with warnings.catch_warnings(), _pool(workers) as pool:
        warnings.filterwarnings("ignore", message=r".*fork\(\) may lead to deadlocks", category=DeprecationWarning)
        pending: set[futures.Future] = set()
        try:
            for chunk in chunks:
                if len(pending) >= 2 * workers:
                    done, pending = futures.wait(pending, return_when=futures.FIRST_COMPLETED)
                    yield from (future.result() for future in done)
                pending.add(pool.submit(_scan_chunk, chunk, channels, size, resize))
            yield from (future.result() for future in futures.as_completed(pending))
        finally:
            for future in pending:
                future.cancel()
