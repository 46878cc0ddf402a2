"""Decision thresholds for binary and multi-label outputs, tuned on the validation split.

One global threshold is searched first, then one threshold per class by coordinate ascent
(each class in turn, the others fixed): one sweep for F1 macro (separable), two for F2
averaged over samples (which couples the classes). A class with no positive in the tuning
split keeps the default threshold. Ties go to the threshold
closest to the recipe's default, which keeps a flat optimum from drifting to the edges.
"""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass

import numpy as np

from cvtool.errors import CvtoolError
from cvtool.tasks import TASKS, Task

GRID = np.round(np.arange(0.05, 0.951, 0.05), 4)
MAX_SCORE_CANDIDATES = 40  # midpoints between sorted unique scores, subsampled beyond this
ROUNDS = {"f1_macro": 1, "f2": 2}  # a macro average is separable: one sweep over the classes is exact


def _f1_macro(truth: np.ndarray, predicted: np.ndarray) -> float:
    from sklearn.metrics import f1_score

    return float(f1_score(truth, predicted, average="macro", zero_division=0))


def _f2(truth: np.ndarray, predicted: np.ndarray) -> float:
    from sklearn.metrics import fbeta_score

    # samples-averaged F2 (the Planet competition metric); one column: F2 of the positive class
    average = "samples" if truth.ndim == 2 else "binary"
    return float(fbeta_score(truth, predicted, beta=2, average=average, zero_division=0))


OBJECTIVES: dict[str, Callable[[np.ndarray, np.ndarray], float]] = {"f1_macro": _f1_macro, "f2": _f2}


@dataclass(frozen=True)
class TunedThresholds:
    metric: str
    default: float
    global_threshold: float
    per_class: np.ndarray  # one threshold per output column
    at_default: float  # metric value at the default threshold
    at_global: float
    at_per_class: float


def score(metric: str, targets: np.ndarray, outputs: np.ndarray, thresholds: np.ndarray | float) -> float:
    """The tuning metric (sklearn) of `outputs > thresholds` against 0/1 targets."""
    truth, scores = _columns(targets), _columns(outputs)
    predicted = (scores > np.asarray(thresholds, dtype=np.float64)).astype(np.int64)
    if truth.shape[1] == 1:
        return OBJECTIVES[metric](truth[:, 0], predicted[:, 0])
    return OBJECTIVES[metric](truth, predicted)


def check_tunable(task: Task, metric: str) -> None:
    """CvtoolError unless thresholds can be tuned for this task and metric."""
    if problem := task.check_thresholds():
        tunable = [name for name in TASKS.names() if TASKS.get(name).check_thresholds() is None]
        raise CvtoolError(f"--tune-thresholds: {problem} (only {' and '.join(tunable)})")
    if metric not in OBJECTIVES:
        raise CvtoolError(f"evaluate.tune_metric: unknown metric {metric} (use {', '.join(OBJECTIVES)})")


def tune_thresholds(targets: np.ndarray, outputs: np.ndarray, metric: str = "f1_macro",
                    default: float = 0.5) -> TunedThresholds:
    """Search a global and per-class thresholds maximizing `metric` on (targets, outputs)."""
    truth, scores = _columns(targets).astype(np.int64), _columns(outputs).astype(np.float64)
    value = lambda t: score(metric, truth, scores, t)  # noqa: E731
    at_default = value(default)
    global_threshold = _best(np.union1d(candidates(scores.ravel()), [default]), value, default)
    per_class = np.full(scores.shape[1], global_threshold)
    # A class without positives here has nothing to tune on: any threshold above its top score
    # "wins" (or one near 0 when the metric ignores it), which then tags unseen test images.
    tunable = truth.sum(axis=0) > 0
    per_class[~tunable] = default
    for _ in range(ROUNDS[metric]):
        before = per_class.copy()
        for column in np.flatnonzero(tunable):
            def trial(t: float, column: int = column) -> float:
                trial_thresholds = per_class.copy()
                trial_thresholds[column] = t
                return value(trial_thresholds)

            options = np.union1d(candidates(scores[:, column]), [per_class[column]])
            per_class[column] = _best(options, trial, per_class[column])
        if np.array_equal(before, per_class):
            break
    return TunedThresholds(metric, default, float(global_threshold), per_class.astype(np.float32),
                           at_default, value(global_threshold), value(per_class))


def candidates(scores: np.ndarray) -> np.ndarray:
    """The fixed grid plus midpoints between sorted unique scores (subsampled when many)."""
    unique = np.unique(scores)
    middles = (unique[1:] + unique[:-1]) / 2.0
    if len(middles) > MAX_SCORE_CANDIDATES:
        middles = middles[np.linspace(0, len(middles) - 1, MAX_SCORE_CANDIDATES).round().astype(int)]
    return np.unique(np.concatenate([GRID, middles[(middles > 0.0) & (middles < 1.0)]]))


def _best(options: np.ndarray, objective: Callable[[float], float], prefer: float) -> float:
    """The option with the highest objective; ties go to the one closest to `prefer`."""
    values = np.array([objective(float(t)) for t in options])
    top = np.flatnonzero(values >= values.max() - 1e-12)
    return float(options[top[np.argmin(np.abs(options[top] - prefer))]])


def _columns(array: np.ndarray) -> np.ndarray:
    return np.asarray(array).reshape(len(array), -1)
