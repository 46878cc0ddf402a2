"""Per-class (or per-point) evaluation tables, one builder per task, and the rows of a
predictions CSV; scikit-learn computes every number. `result` is an evaluation result (paths,
targets, outputs, threshold, sizes)."""

from __future__ import annotations

import os
from dataclasses import dataclass
from typing import Any

import numpy as np

from cvtool.model_card import ModelMeta
from cvtool.tasks.frame import from_frame


@dataclass
class ClassTable:
    title: str
    header: list[str]
    rows: list[list[Any]]

    def records(self) -> list[dict[str, Any]]:
        return [dict(zip(self.header, row, strict=True)) for row in self.rows]


def first_threshold(threshold: np.ndarray | float) -> float:
    return float(np.asarray(threshold, dtype=np.float64).reshape(-1)[0])


def output_names(meta: ModelMeta) -> list[str]:
    """One name per output column (binary: the positive class)."""
    if meta.target_names:
        return list(meta.target_names)
    return list(meta.class_names)[-meta.num_outputs:]


def to_pixels(outputs: np.ndarray, frames: np.ndarray) -> np.ndarray:
    """Keypoint outputs in [-1, 1] of the model frame -> original-image pixels (tasks.frame)."""
    return from_frame(outputs, frames)


def _prf_table(names: list[str], truth: np.ndarray, predicted: np.ndarray, labels: list[int] | None,
               extra: dict[str, list[float]] | None = None) -> ClassTable:
    from sklearn.metrics import precision_recall_fscore_support

    precision, recall, f1, support = precision_recall_fscore_support(
        truth, predicted, labels=labels, average=None, zero_division=0)
    extra = extra or {}
    rows = [[name, float(p), float(r), float(f), int(s), *(float(v[i]) for v in extra.values())]
            for i, (name, p, r, f, s) in enumerate(zip(names, precision, recall, f1, support, strict=True))]
    return ClassTable("per class", ["class", "precision", "recall", "f1", "support", *extra], rows)


def multiclass_table(result: Any, meta: ModelMeta) -> ClassTable:
    classes = list(range(len(meta.class_names)))
    return _prf_table(list(meta.class_names), result.targets, result.outputs.argmax(axis=1), classes)


def positive_table(result: Any, meta: ModelMeta) -> ClassTable:
    predicted = (result.outputs.reshape(-1) > first_threshold(result.threshold)).astype(np.int64)
    return _prf_table(list(meta.class_names), result.targets.reshape(-1), predicted, [0, 1])


def label_table(result: Any, meta: ModelMeta) -> ClassTable:
    from sklearn.metrics import roc_auc_score

    truth = result.targets.astype(np.int64)
    thresholds = np.broadcast_to(np.asarray(result.threshold, np.float64), (truth.shape[1],))
    predicted = (result.outputs > thresholds).astype(np.int64)
    auc = [float(roc_auc_score(truth[:, c], result.outputs[:, c])) if len(np.unique(truth[:, c])) == 2
           else float("nan") for c in range(truth.shape[1])]
    return _prf_table(list(meta.class_names), truth, predicted, None,
                      {"auc": auc, "threshold": [float(t) for t in thresholds]})


def point_arrays(result: Any) -> tuple[np.ndarray, np.ndarray]:
    """True and predicted points in original pixels, N x points x 2."""
    count = len(result.outputs)
    truth = to_pixels(result.targets, result.sizes).reshape(count, -1, 2)
    predicted = to_pixels(result.outputs, result.sizes).reshape(count, -1, 2)
    return truth, predicted


def point_names(meta: ModelMeta) -> list[str]:
    """'Point_M0' from the column pair Point_M0_X / Point_M0_Y."""
    names = list(meta.target_names)
    pairs = [names[i:i + 2] for i in range(0, len(names), 2)]
    return [os.path.commonprefix(pair).rstrip("_-. ") or f"point{i}" for i, pair in enumerate(pairs)]


def point_table(result: Any, meta: ModelMeta) -> ClassTable:
    from sklearn.metrics import mean_squared_error
    from sklearn.metrics.pairwise import paired_euclidean_distances

    truth, predicted = point_arrays(result)
    rows = []
    for p, name in enumerate(point_names(meta)):
        distance = paired_euclidean_distances(truth[:, p], predicted[:, p])
        rmse = [float(np.sqrt(mean_squared_error(truth[:, p, a], predicted[:, p, a]))) for a in (0, 1)]
        rows.append([name, float(distance.mean()), *rmse, len(truth)])
    return ClassTable("per point (original pixels)",
                      ["point", "mean_distance_px", "rmse_x_px", "rmse_y_px", "images"], rows)


def label_predictions(paths: list[str], truth: list[str] | None, predicted: list[str], outputs: np.ndarray,
                      names: list[str]) -> tuple[list[str], list[list[Any]]]:
    """image, target (when known) and predicted label per row, then the probabilities."""
    header, columns = ["image"], []
    if truth is not None:
        header.append("target")
        columns.append([[label] for label in truth])
    header.append("predicted")
    columns.append([[label] for label in predicted])
    header += [f"prob_{n}" for n in names]
    columns.append(_flat(outputs))
    return header, _rows(paths, columns)


def point_predictions(result: Any, meta: ModelMeta) -> tuple[list[str], list[list[Any]]]:
    """image, the true (when known) and the predicted coordinates in original pixels."""
    names = output_names(meta)
    header, columns = ["image"], []
    if result.targets is not None:
        header += [f"true_{n}" for n in names]
        columns.append(_flat(to_pixels(result.targets, result.sizes)))
    header += [f"pred_{n}" for n in names]
    columns.append(_flat(to_pixels(result.outputs, result.sizes)))
    return header, _rows(result.paths, columns)


def _flat(values: np.ndarray) -> list[list[float]]:
    return values.reshape(len(values), -1).astype(np.float64).tolist()


def _rows(paths: list[str], columns: list[list[list[Any]]]) -> list[list[Any]]:
    return [[str(path), *(v for part in parts for v in part)] for path, *parts in zip(paths, *columns, strict=True)]
