"""Dataset statistics (`cvtool stats`, `normalize: auto`); label counts and class weights
live in class_stats.py and tasks/label_stats.py.

Pixels are streamed: each worker decodes one chunk of files at a time and returns exact
per-channel histograms of the 0..255 values (so exact sums of x, x^2 and pixel counts); memory
stays constant however many images there are. Mean and std are in [0, 1] units (population std).
"""

from __future__ import annotations

import contextlib
import hashlib
import json
from collections import Counter
from collections.abc import Sequence
from pathlib import Path
from typing import Any

import numpy as np

from cvtool.data.class_stats import label_stats
from cvtool.data.folds import fold_view
from cvtool.data.formats import Split, read_dataset
from cvtool.data.pixel_scan import Tally, scan
from cvtool.errors import CvtoolError
from cvtool.fileio import write_json
from cvtool.recipe.schema import DataConfig, NormStats
from cvtool.tasks.label_stats import WEIGHT_MODES, class_weights, pos_weight

STATS_FILE = "cvtool-stats.json"
STATS_VERSION = 1
IMAGENET_MEAN = [0.485, 0.456, 0.406]
IMAGENET_STD = [0.229, 0.224, 0.225]


def compute_stats(cfg: DataConfig, task: str, seed: int, image_size: int | None, progress: bool,
                  splits: Sequence[str] | None = None, workers: int | None = None) -> dict[str, Any]:
    """Everything `cvtool stats` reports, JSON-able. Mean/std over the train split at
    `image_size` (None: native size); `splits` limits which splits are read (default all).

    Keys: cvtool_stats (format version), computed_for, splits (images per split), classes
    {names, count_of, counts per split, imbalance_ratio, weights {inverse, sqrt_inverse},
    pos_weight (binary)} or targets [{name, min, mean, max}] (keypoints), sizes and modes
    (histograms per split), channels {mean, std, images, pixels} and unreadable [{split, path, reason}].
    """
    info = fold_view(read_dataset(cfg, task, seed), cfg, task, seed)  # a fold run: its own training part
    chosen = [name for name in info.splits if splits is None or name in splits]
    jobs = [(name, str(path), name == "train") for name in chosen for path in info.splits[name].paths]
    tally = scan(jobs, cfg.channels, image_size, progress, workers, cfg.resize)
    order = {name: i for i, name in enumerate(chosen)}
    unreadable = sorted(tally.unreadable, key=lambda row: (order[row["split"]], row["path"]))
    root = cfg.root.resolve()
    return {
        "cvtool_stats": STATS_VERSION,
        "computed_for": {"root": str(cfg.root), "task": task, **_identity(cfg, task, seed),
                         "image_size": image_size, "train_images": len(info.splits["train"]),
                         "train_files": files_signature(info.splits["train"].paths)},
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


def files_signature(paths: Sequence[Path]) -> str:
    """A digest of the files' paths, sizes and modification times (as the decode cache keys its
    files): an image replaced by another of the same name changes it, so do added or removed ones."""
    digest = hashlib.sha256()
    for path in paths:
        try:
            stat = Path(path).stat()
            digest.update(f"{path}|{stat.st_size}|{stat.st_mtime_ns}\n".encode())
        except OSError:
            digest.update(f"{path}|missing\n".encode())
    return digest.hexdigest()[:20]


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


def _channel_stats(tally: Tally) -> dict[str, Any] | None:
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


def stats_fit(stats: dict[str, Any], cfg: DataConfig, task: str, seed: int, train: Split) -> bool:
    """Whether `stats` holds the mean/std of this training split (its very files: names, sizes and
    modification times) at cfg.image_size."""
    made_for = stats.get("computed_for", {})
    if any(made_for.get(k) != v for k, v in _identity(cfg, task, seed).items()):
        return False
    if made_for.get("train_images") != len(train) or not stats.get("channels"):
        return False
    if made_for.get("train_files") != files_signature(train.paths):
        return False
    if made_for.get("image_size") == cfg.image_size:
        return True
    square = f"{cfg.image_size}x{cfg.image_size}"  # native size that equals image_size also fits
    return made_for.get("image_size") is None and set(stats.get("sizes", {}).get("train", {})) == {square}


def resolve_normalization(cfg: DataConfig, task: str, seed: int,
                          progress: bool = False) -> tuple[list[float], list[float]]:
    """(mean, std) per channel for `data.normalize`. `auto` reads <root>/cvtool-stats.json when it
    was computed for the same channels, image size and training files, else computes (train split
    only; a fold run: its training part, in cvtool-stats.fold<N>.json) and writes it."""
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


def stats_file(cfg: DataConfig) -> str:
    """The file `normalize: auto` keeps its statistics in: a fold run's are of its own training
    part (the held-out fold left out), kept apart so the folds do not overwrite each other."""
    return STATS_FILE if cfg.fold is None else STATS_FILE.replace(".json", f".fold{cfg.fold}.json")


def _auto_normalization(cfg: DataConfig, task: str, seed: int, progress: bool) -> tuple[list[float], list[float]]:
    path = cfg.root / stats_file(cfg)
    stats = load_stats(path)
    train = fold_view(read_dataset(cfg, task, seed), cfg, task, seed).splits["train"]
    if stats is None or not stats_fit(stats, cfg, task, seed, train):
        stats = compute_stats(cfg, task, seed, cfg.image_size, progress, splits=("train",))
        if not stats["channels"]:
            raise CvtoolError(f"data.normalize auto: no readable training image under {cfg.root}")
        with contextlib.suppress(OSError):  # a read-only data root: use the values, recompute next time
            write_json(path, stats)
    # A constant channel has std 0: keep it centred but unscaled instead of dividing by zero.
    std = [s if s > 1e-6 else 1.0 for s in stats["channels"]["std"]]
    return list(stats["channels"]["mean"]), std


__all__ = ["STATS_FILE", "WEIGHT_MODES", "class_weights", "compute_stats", "files_signature", "load_stats",
           "pos_weight", "resolve_normalization", "stats_file", "stats_fit"]
