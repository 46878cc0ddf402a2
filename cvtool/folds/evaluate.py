"""`cvtool evaluate --oof`: a fold set's out-of-fold predictions (DIR/oof.csv) scored overall and
per fold; with `--tune-thresholds` the thresholds are tuned on them and stored in folds.json,
where the fold set's ensemble (predict, export) picks them up."""

from __future__ import annotations

import json
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np

from cvtool.ensembles.members import fold_set_thresholds
from cvtool.errors import CvtoolError
from cvtool.evaluation.calibration import Calibration, calibrate_oof, stored_oof_temperature
from cvtool.evaluation.thresholds import TunedThresholds, check_tunable, tune_thresholds
from cvtool.fileio import write_json
from cvtool.folds.oof import read_oof
from cvtool.runs.layout import RunDir
from cvtool.runs.lock import hold_for_writing
from cvtool.runs.recipes import load_recipe
from cvtool.tasks import get_task


@dataclass
class OofEval:
    fold_set: Path
    images: int
    metrics: dict[str, float]
    per_fold: dict[str, dict[str, float]]
    tuned: TunedThresholds | None = None
    calibration: Calibration | None = None


def evaluate_oof(fold_set: str | Path, tune: bool = False, calibrate: bool = False) -> OofEval:
    """Metrics of oof.csv (overall and per fold); with `calibrate`, a temperature fitted on it and
    stored; with `tune`, thresholds tuned on it and stored. A stored temperature calibrates the
    outputs before they are scored or tuned on."""
    run = RunDir(Path(fold_set))
    if not run.is_fold_set():
        raise CvtoolError(f"--oof: {fold_set} is not a fold set (train one with cvtool train --fold all)")
    if tune or calibrate:  # they update folds.json and every fold's best.pt
        hold_for_writing([run.path], "evaluate")
    recipe = load_recipe(run.recipe, stored=True)
    task = get_task(recipe.task)
    oof = read_oof(run.oof)
    threshold: Any = np.asarray(fold_set_thresholds(fold_set) or recipe.evaluate.threshold, np.float32)
    if (tune or calibrate) and not run.folds.is_file():
        raise CvtoolError(f"{run.path}: no {run.folds.name} (not every fold has finished)")
    calibration = calibrate_oof(run, task, oof.targets, oof.outputs) if calibrate else None
    temperature = stored_oof_temperature(run)
    outputs = oof.outputs if temperature is None else task.calibrate(oof.outputs, np.asarray(temperature))
    tuned = None
    if tune:
        check_tunable(task, recipe.evaluate.tune_metric)
        tuned = tune_thresholds(oof.targets, outputs, recipe.evaluate.tune_metric, recipe.evaluate.threshold)
        threshold = tuned.per_class
        store_thresholds(run, [float(t) for t in tuned.per_class])
    metrics = task.metrics(oof.targets, outputs, threshold, oof.sizes)
    per_fold = {}
    for fold in np.unique(oof.folds):
        rows = oof.folds == fold
        per_fold[f"fold_{fold}"] = task.metrics(oof.targets[rows], outputs[rows], threshold, oof.sizes[rows])
    return OofEval(run.path, len(oof.images), metrics, per_fold, tuned, calibration)


def store_thresholds(run: RunDir, thresholds: list[float]) -> None:
    if not run.folds.is_file():
        raise CvtoolError(f"{run.path}: no {run.folds.name} (not every fold has finished)")
    summary = json.loads(run.folds.read_text(encoding="utf-8"))
    summary["thresholds"] = thresholds
    summary.pop("thresholds_stale", None)
    write_json(run.folds, summary)
