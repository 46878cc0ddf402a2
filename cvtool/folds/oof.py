"""Out-of-fold predictions: every training image predicted once, by the fold that did not train on it.

oof.csv columns: image (relative to the data root), fold, width, height (original pixels), the
targets (`target` for a class index, `target:<name>` per tag or keypoint column) and the
activated outputs (`output:<name>`: probabilities; keypoints normalized to [-1, 1] of the image
extent, as the metrics take them). Floats are written at full precision (repr).
"""

from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path

import numpy as np

from cvtool.errors import CvtoolError
from cvtool.fileio import read_csv_rows, write_csv


@dataclass
class OofPredictions:
    images: list[str]
    folds: np.ndarray
    sizes: np.ndarray  # N x 2 original (width, height)
    targets: np.ndarray  # as the task's metrics take them
    outputs: np.ndarray  # activated
    target_names: list[str]
    output_names: list[str]


def write_oof(path: Path, oof: OofPredictions) -> None:
    """oof.csv, rows in training-split order, written atomically."""
    targets = oof.targets.reshape(len(oof.targets), -1)
    target_header = ["target"] if oof.targets.ndim == 1 else [f"target:{n}" for n in oof.target_names]
    header = ["image", "fold", "width", "height", *target_header, *(f"output:{n}" for n in oof.output_names)]
    integer = np.issubdtype(oof.targets.dtype, np.integer)
    rows = [[image, int(fold), int(size[0]), int(size[1]),
             *(int(v) if integer else repr(float(v)) for v in target), *(repr(float(v)) for v in output)]
            for image, fold, size, target, output in zip(oof.images, oof.folds, oof.sizes, targets, oof.outputs,
                                                         strict=True)]
    write_csv(path, header, rows)


def read_oof(path: Path) -> OofPredictions:
    """oof.csv back as arrays (CvtoolError when it is missing or not cvtool's)."""
    if not path.is_file():
        raise CvtoolError(f"{path}: no out-of-fold predictions (train every fold with cvtool train --fold all)")
    columns, rows = read_csv_rows(path)
    target_cols = [c for c in columns if c == "target" or c.startswith("target:")]
    output_cols = [c for c in columns if c.startswith("output:")]
    if not rows or not output_cols or "image" not in columns:
        raise CvtoolError(f"{path}: not a cvtool oof.csv (columns: {columns[:6]})")
    try:
        targets = np.asarray([[float(r[c]) for c in target_cols] for r in rows])
        outputs = np.asarray([[float(r[c]) for c in output_cols] for r in rows], np.float32)
        sizes = np.asarray([[int(r["width"]), int(r["height"])] for r in rows], np.int64)
        folds = np.asarray([int(r["fold"]) for r in rows], np.int64)
    except (KeyError, ValueError) as exc:
        raise CvtoolError(f"{path}: unreadable value ({exc})") from None
    if target_cols == ["target"]:
        targets = targets[:, 0].astype(np.int64)
    else:
        targets = targets.astype(np.float32)
    return OofPredictions([r["image"] for r in rows], folds, sizes, targets, outputs,
                          [c.removeprefix("target:") for c in target_cols],
                          [c.removeprefix("output:") for c in output_cols])
