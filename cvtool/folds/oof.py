"""Out-of-fold predictions: every training image predicted once, by the fold that did not train on it.

oof.csv columns: image (relative to the data root), fold, width, height (original pixels), the
targets (`target`: the class name, as `cvtool evaluate --save-predictions` writes it; `target:<name>`
per tag or keypoint column), `predicted` (the predicted class name or tags, at the recipe's
threshold; not for keypoints) and the activated outputs (`output:<name>`: probabilities; keypoints
normalized to [-1, 1] of the image extent, as the metrics take them). Floats are written at full
precision (repr). A file without `predicted` is an earlier version's, whose `target` holds class
indices: both read back the same.
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
    target_names: list[str]  # single-label tasks: the class names, in index order
    output_names: list[str]
    predicted: list[str] | None = None  # the predicted class name or tags per image (None: keypoints)


def write_oof(path: Path, oof: OofPredictions) -> None:
    """oof.csv, rows in training-split order, written atomically."""
    single = oof.targets.ndim == 1  # one class index per image: written as its name
    targets = ([[oof.target_names[int(t)]] for t in oof.targets] if single
               else [[repr(float(v)) for v in row] for row in oof.targets.reshape(len(oof.targets), -1)])
    target_header = ["target"] if single else [f"target:{n}" for n in oof.target_names]
    predicted = [[label] for label in oof.predicted] if oof.predicted is not None else [[]] * len(oof.images)
    header = ["image", "fold", "width", "height", *target_header, *(["predicted"] if oof.predicted is not None else []),
              *(f"output:{n}" for n in oof.output_names)]
    rows = [[image, int(fold), int(size[0]), int(size[1]), *target, *label, *(repr(float(v)) for v in output)]
            for image, fold, size, target, label, output in zip(oof.images, oof.folds, oof.sizes, targets, predicted,
                                                                oof.outputs, strict=True)]
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
    output_names = [c.removeprefix("output:") for c in output_cols]
    target_names = [c.removeprefix("target:") for c in target_cols]
    if target_cols == ["target"] and "predicted" in columns:  # class names (an earlier oof.csv: indices)
        target_names = _class_names(path, rows, output_names)
        index = {name: str(i) for i, name in enumerate(target_names)}
        rows = [{**r, "target": index[r["target"]]} for r in rows]
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
    predicted = [r["predicted"] for r in rows] if "predicted" in columns else None
    return OofPredictions([r["image"] for r in rows], folds, sizes, targets, outputs, target_names, output_names,
                          predicted)


def _class_names(path: Path, rows: list[dict[str, str]], output_names: list[str]) -> list[str]:
    """The classes in index order: the output columns name every class (multiclass) or the positive
    one (binary, class 1: the other name in the file is class 0)."""
    names = list(output_names)
    if len(names) == 1:
        others = sorted({r[c] for r in rows for c in ("target", "predicted")} - set(names))
        if len(others) > 1:
            raise CvtoolError(f"{path}: one output column ({names[0]}) but the classes {others[:4]}")
        names = [others[0] if others else "", names[0]]
    if unknown := next((r["target"] for r in rows if r["target"] not in names), None):
        raise CvtoolError(f"{path}: target {unknown!r} is none of the output columns' classes {names[:6]}")
    return names
