"""What `cvtool evaluate` writes: per-class tables, metrics.json, plots and a predictions CSV.

What differs by task lives in one table (`REPORTS`): the per-class (or per-point) report,
extra figures, and whether outputs are coordinates. Confusion matrices and ROC curves follow
the Task's own `confusion` / `roc` flags. All numbers come from scikit-learn.
"""

from __future__ import annotations

import os
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path
from typing import TYPE_CHECKING, Any

import numpy as np

from cvtool.evaluation.results import EvalResult, Tuning
from cvtool.fileio import write_csv, write_json
from cvtool.tasks import Keypoints, Task

if TYPE_CHECKING:
    from cvtool.model_card import ModelMeta
    from cvtool.runs.model import LoadedModel

WORST_SHOWN = 12


@dataclass
class ClassTable:
    title: str
    header: list[str]
    rows: list[list[Any]]

    def records(self) -> list[dict[str, Any]]:
        return [dict(zip(self.header, row, strict=True)) for row in self.rows]


def output_names(meta: ModelMeta) -> list[str]:
    """One name per output column (binary: the positive class)."""
    if meta.target_names:
        return list(meta.target_names)
    return list(meta.class_names)[-meta.num_outputs:]


def first_threshold(threshold: np.ndarray | float) -> float:
    return float(np.asarray(threshold, dtype=np.float64).reshape(-1)[0])


def _prf_table(names: list[str], truth: np.ndarray, predicted: np.ndarray, labels: list[int] | None,
               extra: dict[str, list[float]] | None = None) -> ClassTable:
    from sklearn.metrics import precision_recall_fscore_support

    precision, recall, f1, support = precision_recall_fscore_support(
        truth, predicted, labels=labels, average=None, zero_division=0)
    extra = extra or {}
    rows = [[name, float(p), float(r), float(f), int(s), *(float(v[i]) for v in extra.values())]
            for i, (name, p, r, f, s) in enumerate(zip(names, precision, recall, f1, support, strict=True))]
    return ClassTable("per class", ["class", "precision", "recall", "f1", "support", *extra], rows)


def _per_class_multiclass(result: EvalResult, meta: ModelMeta) -> ClassTable:
    classes = list(range(len(meta.class_names)))
    return _prf_table(list(meta.class_names), result.targets, result.outputs.argmax(axis=1), classes)


def _per_class_binary(result: EvalResult, meta: ModelMeta) -> ClassTable:
    predicted = (result.outputs.reshape(-1) > first_threshold(result.threshold)).astype(np.int64)
    return _prf_table(list(meta.class_names), result.targets.reshape(-1), predicted, [0, 1])


def _per_label(result: EvalResult, meta: ModelMeta) -> ClassTable:
    from sklearn.metrics import roc_auc_score

    truth = result.targets.astype(np.int64)
    thresholds = np.broadcast_to(np.asarray(result.threshold, np.float64), (truth.shape[1],))
    predicted = (result.outputs > thresholds).astype(np.int64)
    auc = [float(roc_auc_score(truth[:, c], result.outputs[:, c])) if len(np.unique(truth[:, c])) == 2
           else float("nan") for c in range(truth.shape[1])]
    return _prf_table(list(meta.class_names), truth, predicted, None,
                      {"auc": auc, "threshold": [float(t) for t in thresholds]})


def point_arrays(result: EvalResult) -> tuple[np.ndarray, np.ndarray]:
    """True and predicted points in original pixels, N x points x 2."""
    count = len(result.outputs)
    truth = Keypoints.to_pixels(result.targets, result.sizes).reshape(count, -1, 2)
    predicted = Keypoints.to_pixels(result.outputs, result.sizes).reshape(count, -1, 2)
    return truth, predicted


def point_names(meta: ModelMeta) -> list[str]:
    """'Point_M0' from the column pair Point_M0_X / Point_M0_Y."""
    names = list(meta.target_names)
    pairs = [names[i:i + 2] for i in range(0, len(names), 2)]
    return [os.path.commonprefix(pair).rstrip("_-. ") or f"point{i}" for i, pair in enumerate(pairs)]


def _per_point(result: EvalResult, meta: ModelMeta) -> ClassTable:
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


def _worst_points(result: EvalResult, meta: ModelMeta, folder: Path) -> list[Path]:
    """The predictions with the largest mean point distance, drawn on their images."""
    from cvtool import plots
    from cvtool.data.images import open_image

    truth, predicted = point_arrays(result)
    errors = np.linalg.norm(truth - predicted, axis=2).mean(axis=1)
    panels = []
    for i in np.argsort(-errors, kind="stable")[:WORST_SHOWN]:
        image = np.asarray(open_image(result.paths[i]).convert("RGB"))
        panels.append((image, truth[i], predicted[i], f"{Path(result.paths[i]).name}: {errors[i]:.1f}px"))
    title = f"worst {len(panels)} of {len(errors)} ({result.split}): o true, x predicted"
    return [plots.keypoint_grid(panels, title, folder / "worst_keypoints.png")]


@dataclass(frozen=True)
class TaskReport:
    per_class: Callable[[EvalResult, ModelMeta], ClassTable]
    figures: Callable[[EvalResult, ModelMeta, Path], list[Path]] | None = None
    pixels: bool = False  # outputs are coordinates, reported in original pixels


REPORTS: dict[str, TaskReport] = {
    "multiclass": TaskReport(_per_class_multiclass),
    "binary": TaskReport(_per_class_binary),
    "multilabel": TaskReport(_per_label),
    "keypoints": TaskReport(_per_point, _worst_points, pixels=True),
}


def per_class_table(task: Task, meta: ModelMeta, result: EvalResult) -> ClassTable:
    return REPORTS[task.name].per_class(result, meta)


def write_plots(task: Task, meta: ModelMeta, result: EvalResult, folder: Path) -> list[Path]:
    """Confusion matrices (counts, normalized), ROC curves and the task's own figures."""
    from cvtool import plots

    files: list[Path] = []
    split = result.split
    if task.confusion:
        matrix = plots.confusion_matrix(result.targets, result.outputs, len(meta.class_names),
                                        first_threshold(result.threshold))
        files.append(plots.confusion(matrix, meta.class_names, f"confusion matrix, {split}",
                                     folder / "confusion.png"))
        files.append(plots.confusion(matrix, meta.class_names, f"confusion matrix (row-normalized), {split}",
                                     folder / "confusion_normalized.png", normalize=True))
    if task.roc:
        curves = plots.roc_curves(result.targets, result.outputs, output_names(meta))
        if curves:
            files.append(plots.roc(curves, f"ROC, {split}", folder / "roc.png"))
    figures = REPORTS[task.name].figures
    if figures is not None:
        files += figures(result, meta, folder)
    return files


def tuning_record(tuning: Tuning) -> dict[str, Any]:
    tuned = tuning.tuned
    return {"metric": tuned.metric, "default_threshold": tuned.default,
            "global_threshold": tuned.global_threshold, "per_class_thresholds": tuned.per_class.tolist(),
            "val": {"default": tuned.at_default, "global": tuned.at_global, "per_class": tuned.at_per_class},
            "test": tuning.test, "stored_in": str(tuning.stored_in)}


def write_reports(loaded: LoadedModel, result: EvalResult, table: ClassTable, folder: Path,
                  tuning: Tuning | None = None) -> list[Path]:
    """metrics.json, per_class.csv and the plots into `folder`; returns the files written."""
    record = {"checkpoint": str(loaded.path), "epoch": loaded.epoch, "task": loaded.task.name,
              "split": result.split, "images": len(result.outputs), "loss": result.loss,
              "thresholds": np.asarray(result.threshold).tolist(), "metrics": result.metrics,
              "per_class": table.records(), "tuning": tuning_record(tuning) if tuning else None}
    write_json(folder / "metrics.json", record)
    write_csv(folder / "per_class.csv", table.header, table.rows)
    plots = write_plots(loaded.task, loaded.meta, result, folder)
    return [folder / "metrics.json", folder / "per_class.csv", *plots]


def prediction_table(task: Task, meta: ModelMeta, result: EvalResult) -> tuple[list[str], list[list[Any]]]:
    """image, target and predicted label (class name, or tags), then the probabilities; for
    keypoints the true and predicted coordinates in original pixels."""
    if REPORTS[task.name].pixels:
        return _point_table(meta, result)
    classes = list(meta.class_names)
    header, columns = ["image"], []
    if result.targets is not None:
        header.append("target")
        columns.append([[label] for label in task.target_labels(result.targets, classes)])
    header.append("predicted")
    columns.append([[label] for label in task.predicted_labels(result.outputs, classes, result.threshold)])
    header += [f"prob_{n}" for n in output_names(meta)]
    columns.append(_flat(result.outputs))
    return header, _rows(result.paths, columns)


def _point_table(meta: ModelMeta, result: EvalResult) -> tuple[list[str], list[list[Any]]]:
    names = output_names(meta)
    header, columns = ["image"], []
    if result.targets is not None:
        header += [f"true_{n}" for n in names]
        columns.append(_flat(Keypoints.to_pixels(result.targets, result.sizes)))
    header += [f"pred_{n}" for n in names]
    columns.append(_flat(Keypoints.to_pixels(result.outputs, result.sizes)))
    return header, _rows(result.paths, columns)


def _flat(values: np.ndarray) -> list[list[float]]:
    return values.reshape(len(values), -1).astype(np.float64).tolist()


def _rows(paths: list[str], columns: list[list[list[Any]]]) -> list[list[Any]]:
    return [[str(path), *(v for part in parts for v in part)] for path, *parts in zip(paths, *columns, strict=True)]


def write_predictions_csv(path: Path, task: Task, meta: ModelMeta, result: EvalResult) -> Path:
    """The predictions as CSV, written atomically (floats at full precision)."""
    header, rows = prediction_table(task, meta, result)
    write_csv(path, header, rows)
    return path
