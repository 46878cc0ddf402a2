"""What `cvtool evaluate` writes: per-class tables, metrics.json, plots and a predictions CSV.

What differs by task is asked of the Task: its per-class (or per-point) table, its extra
figures (by name, from `FIGURES`), whether outputs are coordinates, and the `confusion` /
`roc` flags. All numbers come from scikit-learn.
"""

from __future__ import annotations

from collections.abc import Callable
from pathlib import Path
from typing import TYPE_CHECKING, Any

import numpy as np

from cvtool import plots
from cvtool.data.images import open_image
from cvtool.evaluation.results import EvalResult, Tuning
from cvtool.fileio import write_csv, write_json
from cvtool.tasks import Task
from cvtool.tasks.reports import ClassTable, first_threshold, point_arrays, to_pixels

if TYPE_CHECKING:
    from cvtool.model_card import ModelMeta
    from cvtool.runs.model import LoadedModel

WORST_SHOWN = 12


def output_names(meta: ModelMeta) -> list[str]:
    """One name per output column (binary: the positive class)."""
    if meta.target_names:
        return list(meta.target_names)
    return list(meta.class_names)[-meta.num_outputs:]


def _worst_points(result: EvalResult, meta: ModelMeta, folder: Path) -> list[Path]:
    """The predictions with the largest mean point distance, drawn on their images."""

    truth, predicted = point_arrays(result)
    errors = np.linalg.norm(truth - predicted, axis=2).mean(axis=1)
    panels = []
    for i in np.argsort(-errors, kind="stable")[:WORST_SHOWN]:
        image = np.asarray(open_image(result.paths[i]).convert("RGB"))
        panels.append((image, truth[i], predicted[i], f"{Path(result.paths[i]).name}: {errors[i]:.1f}px"))
    title = f"worst {len(panels)} of {len(errors)} ({result.split}): o true, x predicted"
    return [plots.keypoint_grid(panels, title, folder / "worst_keypoints.png")]


FIGURES: dict[str, Callable[[EvalResult, ModelMeta, Path], list[Path]]] = {"worst_keypoints": _worst_points}


def per_class_table(task: Task, meta: ModelMeta, result: EvalResult) -> ClassTable:
    return task.class_table(result, meta)


def write_plots(task: Task, meta: ModelMeta, result: EvalResult, folder: Path) -> list[Path]:
    """Confusion matrices (counts, normalized), ROC curves and the task's own figures."""

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
    for name in task.figures:
        files += FIGURES[name](result, meta, folder)
    return files


def tuning_record(tuning: Tuning) -> dict[str, Any]:
    tuned = tuning.tuned
    return {"metric": tuned.metric, "default_threshold": tuned.default,
            "global_threshold": tuned.global_threshold, "per_class_thresholds": tuned.per_class.tolist(),
            "val": {"default": tuned.at_default, "global": tuned.at_global, "per_class": tuned.at_per_class},
            "test": tuning.test, "stored_in": str(tuning.stored_in)}


def write_reports(loaded: LoadedModel, result: EvalResult, table: ClassTable, folder: Path,
                  tuning: Tuning | None = None, calibration: dict[str, Any] | None = None) -> list[Path]:
    """metrics.json, per_class.csv and the plots into `folder`; returns the files written."""
    record = {"checkpoint": str(loaded.path), "epoch": loaded.epoch, "task": loaded.task.name,
              "split": result.split, "images": len(result.outputs), "loss": result.loss,
              "thresholds": np.asarray(result.threshold).tolist(), "metrics": result.metrics,
              "per_class": table.records(), "tuning": tuning_record(tuning) if tuning else None,
              "calibration": calibration}
    write_json(folder / "metrics.json", record)
    write_csv(folder / "per_class.csv", table.header, table.rows)
    plots = write_plots(loaded.task, loaded.meta, result, folder)
    extra = [Path(calibration["diagram"])] if calibration else []
    return [folder / "metrics.json", folder / "per_class.csv", *plots, *extra]


def prediction_table(task: Task, meta: ModelMeta, result: EvalResult) -> tuple[list[str], list[list[Any]]]:
    """image, target and predicted label (class name, or tags), then the probabilities; for
    keypoints the true and predicted coordinates in original pixels."""
    if task.point_targets:
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
        columns.append(_flat(to_pixels(result.targets, result.sizes)))
    header += [f"pred_{n}" for n in names]
    columns.append(_flat(to_pixels(result.outputs, result.sizes)))
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
