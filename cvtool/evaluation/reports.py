"""What `cvtool evaluate` writes: per-class tables, metrics.json, plots and a predictions CSV.

What differs by task is asked of the Task: its per-class (or per-point) table, its figures (by
name, from `FIGURES`) and its predictions table. All numbers come from scikit-learn.
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
from cvtool.tasks.reports import ClassTable, first_threshold, output_names, point_arrays

if TYPE_CHECKING:
    from cvtool.model_card import ModelMeta
    from cvtool.runs.model import LoadedModel

WORST_SHOWN = 12


def _confusion(result: EvalResult, meta: ModelMeta, folder: Path) -> list[Path]:
    """The confusion matrix, in counts and row-normalized."""
    matrix = plots.confusion_matrix(result.targets, result.outputs, len(meta.class_names),
                                    first_threshold(result.threshold))
    return [plots.confusion(matrix, meta.class_names, f"confusion matrix, {result.split}", folder / "confusion.png"),
            plots.confusion(matrix, meta.class_names, f"confusion matrix (row-normalized), {result.split}",
                            folder / "confusion_normalized.png", normalize=True)]


def _roc(result: EvalResult, meta: ModelMeta, folder: Path) -> list[Path]:
    """ROC curves, one per output column with both labels present."""
    curves = plots.roc_curves(result.targets, result.outputs, output_names(meta))
    return [plots.roc(curves, f"ROC, {result.split}", folder / "roc.png")] if curves else []


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


FIGURES: dict[str, Callable[[EvalResult, ModelMeta, Path], list[Path]]] = {
    "confusion": _confusion, "roc": _roc, "worst_keypoints": _worst_points}


def per_class_table(task: Task, meta: ModelMeta, result: EvalResult) -> ClassTable:
    return task.class_table(result, meta)


def write_plots(task: Task, meta: ModelMeta, result: EvalResult, folder: Path) -> list[Path]:
    """The task's figures: confusion matrices (counts, normalized), ROC curves, worst keypoints."""
    files: list[Path] = []
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


def write_predictions_csv(path: Path, task: Task, meta: ModelMeta, result: EvalResult) -> Path:
    """The predictions as CSV, written atomically (floats at full precision)."""
    header, rows = task.prediction_table(result, meta)
    write_csv(path, header, rows)
    return path
