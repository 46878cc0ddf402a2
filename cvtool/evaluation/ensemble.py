"""`cvtool evaluate` of several models (or a fold set), and of a fold set's out-of-fold predictions.

Every member is evaluated on the same split of the recipe's data (a fold run's own held-out fold
is not used here: members are scored on the recipe's val / test split), then the ensemble is the
weighted mean of their activated outputs, as `cvtool predict` computes it. `--oof` scores
DIR/oof.csv; with `--tune-thresholds` the thresholds are tuned on it and stored in folds.json,
where the fold set's ensemble (predict, export) picks them up.
"""

from __future__ import annotations

import json
from collections.abc import Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np

from cvtool.errors import CvtoolError
from cvtool.evaluation.calibration import Calibration, calibrate_oof, stored_oof_temperature
from cvtool.evaluation.evaluate import check_split, evaluate_split, load_splits
from cvtool.evaluation.thresholds import TunedThresholds, check_tunable, tune_thresholds
from cvtool.fileio import write_json
from cvtool.model_card import card_from_checkpoint
from cvtool.runs.layout import RunDir
from cvtool.runs.members import (
    check_agreement,
    ensemble_card,
    fold_set_thresholds,
    member_paths,
    normalized_weights,
)
from cvtool.runs.oof import read_oof
from cvtool.runs.recipes import load_recipe
from cvtool.tasks import get_task


@dataclass
class EnsembleEval:
    split: str
    images: int
    columns: dict[str, dict[str, float]]  # member name (and "ensemble") -> metrics
    outputs: np.ndarray  # the ensemble's activated outputs, in split order


@dataclass
class OofEval:
    fold_set: Path
    images: int
    metrics: dict[str, float]
    per_fold: dict[str, dict[str, float]]
    tuned: TunedThresholds | None = None
    calibration: Calibration | None = None


def evaluate_ensemble(models: Sequence[str | Path], split: str = "test", which: str = "best",
                      data_root: str | Path | None = None, weights: Sequence[float] | None = None,
                      progress: bool = False) -> EnsembleEval:
    """Each member and their weighted mean on one split, side by side."""
    from cvtool.engine.accel import select_device
    from cvtool.runs.model import load_model

    check_split(split)
    device = select_device("auto")
    loaded = [load_model(p, which, device) for p in member_paths(models)]
    for member in loaded:  # score every member on the recipe's own splits, not its held-out fold
        member.recipe = member.recipe.model_copy(update={"data": member.recipe.data.model_copy(update={"fold": None})})
    cards = [card_from_checkpoint(m.meta, m.recipe, str(m.path)) for m in loaded]
    check_agreement(cards)
    card = ensemble_card(cards, fold_set_thresholds(models), "ensemble")
    share = normalized_weights(weights, len(loaded))
    bundle = load_splits(loaded[0], (split,), data_root, progress)
    results = [evaluate_split(m, split, bundle=bundle) for m in loaded]
    if results[0].targets is None:
        raise CvtoolError(f"--split {split}: the split has no labels, nothing to evaluate (use cvtool predict)")
    outputs = np.einsum("m,m...->...", share, np.stack([r.outputs.astype(np.float64) for r in results]))
    outputs = outputs.astype(np.float32)
    task = get_task(card.task)
    threshold = np.asarray(card.labels().thresholds)
    columns: dict[str, dict[str, float]] = {}
    for member, result in zip(loaded, results, strict=True):
        name = member_name(member.path)
        columns[name if name not in columns else f"{name} ({len(columns) + 1})"] = result.metrics
    columns["ensemble"] = task.metrics(results[0].targets, outputs, threshold, results[0].sizes)
    return EnsembleEval(split, len(outputs), columns, outputs)


def member_name(path: Path) -> str:
    """fold_0, or the run dir's name, for a column header."""
    run = RunDir.from_checkpoint(path)
    return run.path.name if run is not None else path.name


def evaluate_oof(fold_set: str | Path, tune: bool = False, calibrate: bool = False) -> OofEval:
    """Metrics of oof.csv (overall and per fold); with `calibrate`, a temperature fitted on it and
    stored; with `tune`, thresholds tuned on it and stored. A stored temperature calibrates the
    outputs before they are scored or tuned on."""
    run = RunDir(Path(fold_set))
    if not run.is_fold_set():
        raise CvtoolError(f"--oof: {fold_set} is not a fold set (train one with cvtool train --fold all)")
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
    write_json(run.folds, summary)
