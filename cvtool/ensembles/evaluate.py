"""`cvtool evaluate` of several models (or a fold set): each member and their ensemble side by side.

Every member is evaluated on the same split of the recipe's data (a fold run's own held-out fold
is not used here: members are scored on the recipe's val / test split), then the ensemble is the
weighted mean of their activated outputs, as `cvtool predict` computes it. A fold set's
out-of-fold predictions (`--oof`) are scored by `folds/evaluate.py`.
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass
from pathlib import Path

import numpy as np

from cvtool.ensembles.members import (
    check_agreement,
    ensemble_card,
    fold_set_thresholds,
    member_paths,
    normalized_weights,
)
from cvtool.errors import CvtoolError
from cvtool.evaluation.evaluate import check_split, evaluate_split, load_splits
from cvtool.model_card import card_from_checkpoint
from cvtool.runs.layout import RunDir
from cvtool.tasks import get_task


@dataclass
class EnsembleEval:
    split: str
    images: int
    columns: dict[str, dict[str, float]]  # member name (and "ensemble") -> metrics
    outputs: np.ndarray  # the ensemble's activated outputs, in split order


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
