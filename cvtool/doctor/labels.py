"""`doctor --oof RUN`: likely label errors of the training split, ranked by confident learning on a
fold set's out-of-fold probabilities (every image scored by the fold that did not train on it)."""

from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path

import numpy as np

from cvtool.ensembles.members import fold_set_thresholds
from cvtool.errors import CvtoolError
from cvtool.folds.oof import read_oof
from cvtool.runs.layout import RunDir
from cvtool.runs.recipes import load_recipe
from cvtool.tasks import get_task


@dataclass(frozen=True)
class LabelIssue:
    name: str  # image, relative to the data root
    given: str
    suggested: str  # the out-of-fold prediction (class, or tags above the thresholds)
    score: float  # label quality in [0, 1]; lower: the given label is less likely right
    flagged: bool  # counted among the label errors confident learning estimates


@dataclass
class LabelReport:
    fold_set: Path
    ranking: list[LabelIssue]  # every out-of-fold image, most suspicious first

    @property
    def flagged(self) -> list[LabelIssue]:
        return [issue for issue in self.ranking if issue.flagged]


def rank_label_issues(fold_set: Path, task_name: str, class_names: list[str]) -> LabelReport:
    """Every image of the fold set's oof.csv with its label-quality score, lowest first."""
    run = RunDir(Path(fold_set))
    if not run.is_fold_set():
        raise CvtoolError(f"--oof: {fold_set} is not a fold set (train one with cvtool train --fold all)")
    recipe = load_recipe(run.recipe)
    if recipe.task != task_name:
        raise CvtoolError(f"--oof: {fold_set} is a {recipe.task} fold set; the data is read as {task_name}")
    oof = read_oof(run.oof)
    names = list(class_names)
    if list(oof.output_names) != names[-len(oof.output_names):]:  # binary: one output, the positive class
        raise CvtoolError(f"--oof: {run.oof} has outputs {oof.output_names[:6]}, the data classes {names[:6]}")
    task = get_task(task_name)
    scores, flagged = task.label_issues(oof.targets, oof.outputs)
    threshold = np.asarray(fold_set_thresholds(fold_set) or recipe.evaluate.threshold, np.float32)
    given = task.target_labels(oof.targets, names) or []
    suggested = task.predicted_labels(oof.outputs, names, threshold) or []
    order = np.argsort(scores, kind="stable")
    ranking = [LabelIssue(oof.images[i], given[i], suggested[i], float(scores[i]), bool(flagged[i])) for i in order]
    return LabelReport(run.path, ranking)
