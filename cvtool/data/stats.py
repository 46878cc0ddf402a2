"""Dataset statistics (`cvtool stats`, `normalize: auto`); label counts and class weights
live in class_stats.py and tasks/label_stats.py.

Pixels are streamed: each worker decodes one chunk of files at a time and returns exact
per-channel histograms of the 0..255 values (so exact sums of x, x^2 and pixel counts); memory
stays constant however many images there are. Mean and std are in [0, 1] units (population std).
"""

from __future__ import annotations

import contextlib
import json
import multiprocessing
import os
import signal
import sys
import warnings
from collections import Counter
from collections.abc import Callable, Iterator, Sequence
from concurrent import futures
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import numpy as np

from cvtool.data.class_stats import label_stats
from cvtool.data.formats import read_dataset
from cvtool.data.images import decode, open_image
from cvtool.errors import BadImageError, CvtoolError
from cvtool.fileio import write_json
from cvtool.recipe.schema import DataConfig, NormStats
from cvtool.tasks.label_stats import WEIGHT_MODES, class_weights, pos_weight

STATS_FILE = "cvtool-stats.json"
STATS_VERSION = 1
IMAGENET_MEAN = [0.485, 0.456, 0.406]
IMAGENET_STD = [0.229, 0.224, 0.225]
FILES_PER_WORKER = 256  # fewer files per worker: read inline, a pool would not pay off
CHUNK_FILES = 32


@dataclass
class _Tally:
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

    def merge(self, other: _Tally) -> None:
        self.files += other.files
        self.images += other.images
        self.histogram += other.histogram
        for mine, theirs in ((self.sizes, other.sizes), (self.modes, other.modes)):
            for split, counter in theirs.items():
                mine.setdefault(split, Counter()).update(counter)
        self.unreadable.extend(other.unreadable)


def _scan_chunk(jobs: Sequence[tuple[str, str, bool]], channels: int, size: int | None,
                resize: str = "squash") -> _Tally:
    """Decode each (split, path, accumulate) file; pixel sums only for training files."""
    from PIL import Image

    tally = _Tally(channels, files=len(jobs))
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


def _scan(jobs: list[tuple[str, str, bool]], channels: int, size: int | None, progress: bool,
          workers: int | None, resize: str = "squash") -> _Tally:
    """Totals over all (split, path, accumulate) jobs, read in chunks on all cores."""
    cores = len(os.sched_getaffinity(0)) if hasattr(os, "sched_getaffinity") else os.cpu_count() or 1
    workers = workers or max(1, min(cores, len(jobs) // FILES_PER_WORKER))
    chunks = (jobs[i:i + CHUNK_FILES] for i in range(0, len(jobs), CHUNK_FILES))
    total = _Tally(channels)
    with _progress_bar(progress, len(jobs), "reading images") as advance:
        for tally in _chunk_results(chunks, channels, size, workers, resize):
            total.merge(tally)
            advance(tally.files)
    return total


def _chunk_results(chunks: Iterator[list], channels: int, size: int | None, workers: int,
                   resize: str) -> Iterator[_Tally]:
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


def compute_stats(cfg: DataConfig, task: str, seed: int, image_size: int | None, progress: bool,
                  splits: Sequence[str] | None = None, workers: int | None = None) -> dict[str, Any]:
    """Everything `cvtool stats` reports, JSON-able. Mean/std over the train split at
    `image_size` (None: native size); `splits` limits which splits are read (default all).

    Keys: cvtool_stats (format version), computed_for, splits (images per split), classes
    {names, count_of, counts per split, imbalance_ratio, weights {inverse, sqrt_inverse},
    pos_weight (binary)} or targets [{name, min, mean, max}] (keypoints), sizes and modes
    (histograms per split), channels {mean, std, images, pixels} and unreadable [{split, path, reason}].
    """
    info = read_dataset(cfg, task, seed)
    chosen = [name for name in info.splits if splits is None or name in splits]
    jobs = [(name, str(path), name == "train") for name in chosen for path in info.splits[name].paths]
    tally = _scan(jobs, cfg.channels, image_size, progress, workers, cfg.resize)
    order = {name: i for i, name in enumerate(chosen)}
    unreadable = sorted(tally.unreadable, key=lambda row: (order[row["split"]], row["path"]))
    root = cfg.root.resolve()
    return {
        "cvtool_stats": STATS_VERSION,
        "computed_for": {"root": str(cfg.root), "task": task, **_identity(cfg, task, seed),
                         "image_size": image_size, "train_images": len(info.splits["train"])},
        "splits": {name: len(info.splits[name]) for name in chosen},
        **label_stats(info, chosen),
        "sizes": {name: dict(tally.sizes.get(name, Counter()).most_common()) for name in chosen},
        "modes": {name: dict(tally.modes.get(name, Counter()).most_common()) for name in chosen},
        "channels": _channel_stats(tally),
        "unreadable": [{**row, "path": _relative(Path(row["path"]), root)} for row in unreadable],
    }


def data_config_for(root: Path, fmt: str = "folder", channels: int = 3) -> DataConfig:
    """A DataConfig for a data root without a recipe: the val and test splits that exist."""
    found = [name for name in ("val", "test") if (root / name).is_dir() or (root / f"{name}.csv").is_file()]
    return DataConfig(root=root, format=fmt, channels=channels, val="val" if "val" in found else None,
                      test="test" if "test" in found else None)


def _identity(cfg: DataConfig, task: str, seed: int) -> dict[str, Any]:
    """What decides which training pixels the mean/std describe."""
    ident: dict[str, Any] = {"format": cfg.format, "train": cfg.train, "val_fraction": cfg.val_fraction,
                             "channels": cfg.channels}
    if cfg.val_fraction is not None:  # the split depends on the seed and (stratification) the task
        ident.update(seed=seed, task=task)
    if cfg.format == "csv":
        ident.update(images_dir=cfg.images_dir, image_column=cfg.image_column,
                     image_extension=cfg.image_extension)
    if cfg.resize != "squash":  # crop and pad change the pixels at image_size (squash files stay valid)
        ident.update(resize=cfg.resize)
    return ident


def _channel_stats(tally: _Tally) -> dict[str, Any] | None:
    pixels = int(tally.histogram[0].sum())
    if pixels == 0:
        return None
    values = np.arange(256, dtype=np.int64)
    sums = [int(v) for v in tally.histogram @ values]
    squares = [int(v) for v in tally.histogram @ (values * values)]
    mean = [s / (255 * pixels) for s in sums]
    # pixels * Q - S^2 is exact in Python integers, so there is no cancellation error.
    std = [float(np.sqrt(pixels * q - s * s)) / (255 * pixels) for s, q in zip(sums, squares, strict=True)]
    return {"mean": mean, "std": std, "images": tally.images, "pixels": pixels}


def _relative(path: Path, root: Path) -> str:
    resolved = path.resolve()
    return str(resolved.relative_to(root)) if resolved.is_relative_to(root) else str(path)


def load_stats(path: Path) -> dict[str, Any] | None:
    """A stats file written by cvtool, or None when it is missing or unreadable."""
    try:
        data = json.loads(path.read_text(encoding="utf-8"))
    except (OSError, ValueError):
        return None
    return data if isinstance(data, dict) and data.get("cvtool_stats") == STATS_VERSION else None


def stats_fit(stats: dict[str, Any], cfg: DataConfig, task: str, seed: int, train_images: int) -> bool:
    """Whether `stats` holds the mean/std of this training split at cfg.image_size."""
    made_for = stats.get("computed_for", {})
    if any(made_for.get(k) != v for k, v in _identity(cfg, task, seed).items()):
        return False
    if made_for.get("train_images") != train_images or not stats.get("channels"):
        return False
    if made_for.get("image_size") == cfg.image_size:
        return True
    square = f"{cfg.image_size}x{cfg.image_size}"  # native size that equals image_size also fits
    return made_for.get("image_size") is None and set(stats.get("sizes", {}).get("train", {})) == {square}


def resolve_normalization(cfg: DataConfig, task: str, seed: int,
                          progress: bool = False) -> tuple[list[float], list[float]]:
    """(mean, std) per channel for `data.normalize`. `auto` reads <root>/cvtool-stats.json when it
    was computed for the same channels, image size and train split, else computes (train split
    only) and writes it."""
    channels, norm = cfg.channels, cfg.normalize
    if isinstance(norm, NormStats):
        mean, std = list(norm.mean), list(norm.std)
        if len(mean) == 1:
            return mean * channels, std * channels
        if len(mean) != channels:
            raise CvtoolError(f"data.normalize: {len(mean)} mean/std values for {channels} channels")
        return mean, std
    if norm == "imagenet":
        if channels == 1:
            return [float(np.mean(IMAGENET_MEAN))], [float(np.mean(IMAGENET_STD))]
        return list(IMAGENET_MEAN), list(IMAGENET_STD)
    if norm == "none":
        return [0.0] * channels, [1.0] * channels
    return _auto_normalization(cfg, task, seed, progress)


def _auto_normalization(cfg: DataConfig, task: str, seed: int, progress: bool) -> tuple[list[float], list[float]]:
    path = cfg.root / STATS_FILE
    stats = load_stats(path)
    train_images = len(read_dataset(cfg, task, seed).splits["train"])
    if stats is None or not stats_fit(stats, cfg, task, seed, train_images):
        stats = compute_stats(cfg, task, seed, cfg.image_size, progress, splits=("train",))
        if not stats["channels"]:
            raise CvtoolError(f"data.normalize auto: no readable training image under {cfg.root}")
        with contextlib.suppress(OSError):  # a read-only data root: use the values, recompute next time
            write_json(path, stats)
    # A constant channel has std 0: keep it centred but unscaled instead of dividing by zero.
    std = [s if s > 1e-6 else 1.0 for s in stats["channels"]["std"]]
    return list(stats["channels"]["mean"]), std


__all__ = ["STATS_FILE", "WEIGHT_MODES", "class_weights", "compute_stats", "load_stats", "pos_weight",
           "resolve_normalization", "stats_fit"]
