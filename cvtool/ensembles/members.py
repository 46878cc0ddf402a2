"""Who the members of an ensemble are and whether they fit together: fold sets expand to their
fold runs, members must agree on what they predict, weights are normalized, and a fold set's
OOF-tuned thresholds are found. Torch-free (the .onnx predict path uses it)."""

from __future__ import annotations

import json
import math
import sys
from collections.abc import Sequence
from dataclasses import replace
from pathlib import Path

import numpy as np

from cvtool.errors import CvtoolError
from cvtool.model_card import ModelCard
from cvtool.runs.layout import RunDir


def member_paths(models: str | Path | Sequence[str | Path]) -> list[Path]:
    """Every member: a fold set stands for its fold runs, anything else for itself."""
    items = [models] if isinstance(models, (str, Path)) else list(models)
    found: list[Path] = []
    for item in items:
        run = RunDir(Path(item))
        if Path(item).is_dir() and run.is_fold_set():
            folds = run.fold_runs()
            if not folds:
                raise CvtoolError(f"{item}: fold set without a trained fold")
            found += folds
        else:
            found.append(Path(item))
    return found


def fold_set_thresholds(models: str | Path | Sequence[str | Path]) -> list[float] | None:
    """Thresholds tuned on a fold set's out-of-fold predictions (stored in its folds.json)."""
    items = [models] if isinstance(models, (str, Path)) else list(models)
    if len(items) != 1 or not RunDir(Path(items[0])).folds.is_file():
        return None
    summary = json.loads(RunDir(Path(items[0])).folds.read_text(encoding="utf-8"))
    if summary.get("thresholds") is not None and summary.get("thresholds_stale"):
        print(f"cvtool: {items[0]}: its thresholds were tuned on out-of-fold outputs the folds have changed since "
              f"(stale): rerun cvtool evaluate {items[0]} --oof --tune-thresholds", file=sys.stderr)
    return summary.get("thresholds")


def parse_weights(text: str | None) -> list[float] | None:
    """--weights 2,1,1 -> [2.0, 1.0, 1.0]; nan, inf and numbers beyond a float are refused."""
    if text is None or not text.strip():
        return None
    try:
        weights = [float(part) for part in text.split(",")]
    except ValueError:
        raise CvtoolError(f"--weights: expected comma-separated numbers, got {text!r}") from None
    _check_finite(weights)
    return weights


def _check_finite(weights: Sequence[float]) -> None:
    bad = next((w for w in weights if not math.isfinite(w)), None)
    if bad is not None:  # float("1e400") is inf: say so rather than print "inf" for what was typed
        raise CvtoolError(f"--weights: every weight must be a finite number, got {bad} (a value beyond "
                          f"{sys.float_info.max:.3g} reads as inf)")


def normalized_weights(weights: Sequence[float] | None, count: int) -> np.ndarray:
    """Weights summing to 1 (none: equal); refuses non-finite, negative or all-zero weights and a
    sum that overflows (1e308,1e308), each of which would turn every score into nan."""
    if weights is None or len(weights) == 0:
        return np.full(count, 1.0 / count)
    if len(weights) != count:
        raise CvtoolError(f"--weights: {len(weights)} weights for {count} models")
    _check_finite(weights)
    array = np.asarray(weights, np.float64)
    if (array < 0).any() or not (array > 0).any():
        raise CvtoolError("--weights: weights must be non-negative with a positive sum")
    with np.errstate(over="ignore"):
        total = array.sum()
    if not math.isfinite(total):  # 1e308,1e308: the same proportions with a sum that fits a float
        array = array / array.max()
        total = array.sum()
    return array / total


def check_agreement(cards: Sequence[ModelCard]) -> None:
    """CvtoolError naming the first member that disagrees with the first one."""
    first = cards[0]
    for card in cards[1:]:
        for field, what in (("task", "task"), ("class_names", "classes"), ("target_names", "target columns"),
                            ("image_size", "image size"), ("channels", "channels")):
            if getattr(card, field) != getattr(first, field):
                raise CvtoolError(f"ensemble: {card.source} differs from {first.source} in {what}: "
                                  f"{_short(getattr(card, field))} vs {_short(getattr(first, field))}")


def _short(value: object) -> str:
    text = str(list(value) if isinstance(value, (list, tuple)) else value)
    return text if len(text) <= 80 else text[:77] + "..."


def ensemble_card(cards: Sequence[ModelCard], thresholds: list[float] | None, source: str) -> ModelCard:
    """The first member's card; thresholds: the ensemble's tuned ones, else the members' when they
    all agree, else none (the default threshold)."""
    if thresholds is None:
        stored = [c.thresholds for c in cards]
        thresholds = stored[0] if all(s == stored[0] for s in stored) else None
    return replace(cards[0], thresholds=thresholds, source=source)
