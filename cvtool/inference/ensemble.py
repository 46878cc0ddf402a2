"""Ensembles: the (weighted) mean of several models' activated outputs.

Members are run dirs, checkpoints, .onnx files or fold sets (each fold a member). They must agree
on task, classes / target columns, image size and channels. The mean is taken over probabilities
(softmax / sigmoid) or keypoint coordinates, then turned back into logits by the inverse of the
task's activation (`log` for softmax, `logit` for sigmoid), so an ensemble is a Predictor like any
other: decoding, thresholds and submissions stay the Task's. Torch-free (the .onnx path).
"""

from __future__ import annotations

import json
from collections.abc import Callable, Sequence
from dataclasses import replace
from pathlib import Path

import numpy as np

from cvtool.errors import CvtoolError
from cvtool.model_card import ModelCard
from cvtool.runs.layout import RunDir
from cvtool.tasks import get_task
from cvtool.tasks.base import sigmoid, softmax

EPS = 1e-7  # probabilities are clipped to [EPS, 1 - EPS] before the inverse activation


def _logit(p: np.ndarray) -> np.ndarray:
    p = np.clip(p, EPS, 1.0 - EPS)
    return np.log(p) - np.log1p(-p)


# activation -> (forward, inverse), in float64
ACTIVATIONS: dict[str, tuple[Callable[[np.ndarray], np.ndarray], Callable[[np.ndarray], np.ndarray]]] = {
    "softmax": (softmax, lambda p: np.log(np.clip(p, 1e-30, None))),
    "sigmoid": (sigmoid, _logit),
    "identity": (lambda x: x, lambda x: x),
}


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


class EnsemblePredictor:
    """Several predictors -> logits of their weighted mean output (see the module docstring)."""

    def __init__(self, members: Sequence, weights: Sequence[float] | None = None,
                 thresholds: list[float] | None = None) -> None:
        if not members:
            raise CvtoolError("ensemble: no models")
        self.members = list(members)
        check_agreement([m.card for m in self.members])
        self.weights = normalized_weights(weights, len(self.members))
        self.card = ensemble_card([m.card for m in self.members], thresholds,
                                  f"ensemble of {len(self.members)}: {', '.join(m.card.source for m in self.members)}")
        self.forward, self.inverse = ACTIVATIONS[get_task(self.card.task).activation]

    def mean(self, outputs: Sequence[np.ndarray]) -> np.ndarray:
        """Weighted mean of activated outputs (float64)."""
        return np.einsum("m,m...->...", self.weights, np.stack([np.asarray(o, np.float64) for o in outputs]))

    def __call__(self, images: np.ndarray) -> np.ndarray:
        activated = [self.forward(np.asarray(m(images), np.float64)) for m in self.members]
        return self.inverse(self.mean(activated))

    def tta(self, images: np.ndarray, passes: int, seed: int, batch_size: int,
            progress: Callable[[int], None] | None) -> np.ndarray:
        """TTA per member (each with its own recipe's transforms), then the weighted mean."""
        missing = [m.card.source for m in self.members if not hasattr(m, "tta")]
        if missing:
            raise CvtoolError(f"--tta needs PyTorch members (run dirs or .pt); {missing[0]} is an .onnx file")
        # the first member drives the progress bar: the total counts images x passes once
        outputs = [m.tta(images, passes, seed, batch_size, progress if i == 0 else None)
                   for i, m in enumerate(self.members)]
        return self.mean(outputs).astype(np.float32)

    def describe(self) -> str:
        return f"ensemble of {len(self.members)} (weights {', '.join(f'{w:.3g}' for w in self.weights)}): " + \
            "; ".join(m.describe() for m in self.members)
