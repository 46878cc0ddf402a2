"""Who the members of an ensemble are and whether they fit together: fold sets expand to their
fold runs, members must agree on what they predict, weights are normalized, and a fold set's
OOF-tuned thresholds are found. Torch-free (the .onnx predict path uses it)."""

from __future__ import annotations

import json
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
    return json.loads(RunDir(Path(items[0])).folds.read_text(encoding="utf-8")).get("thresholds")


def parse_weights(text: str | None) -> list[float] | None:
    """--weights 2,1,1 -> [2.0, 1.0, 1.0]."""
    if text is None or not text.strip():
        return None
    try:
        return [float(part) for part in text.split(",")]
    except ValueError:
        raise CvtoolError(f"--weights: expected comma-separated numbers, got {text!r}") from None


def normalized_weights(weights: Sequence[float] | None, count: int) -> np.ndarray:
    if weights is None or len(weights) == 0:
        return np.full(count, 1.0 / count)
    if len(weights) != count:
        raise CvtoolError(f"--weights: {len(weights)} weights for {count} models")
    array = np.asarray(weights, np.float64)
    if (array < 0).any() or array.sum() <= 0:
        raise CvtoolError("--weights: weights must be non-negative with a positive sum")
    return array / array.sum()


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
