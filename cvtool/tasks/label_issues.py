"""Likely label errors by confident learning (Northcutt et al., 2021) on out-of-fold probabilities,
through cleanlab (the `doctor` extra). Each image gets a label-quality score in [0, 1] (lower: the
given label is less likely right; cleanlab's self-confidence) and a flag when confident learning
counts it among the estimated label errors."""

from __future__ import annotations

import numpy as np

from cvtool.errors import CvtoolError

INSTALL = 'cvtool doctor needs the doctor extra: pip install "cvtool[doctor]"'


def _cleanlab() -> None:
    try:
        import cleanlab  # noqa: F401
    except ImportError:
        raise CvtoolError(INSTALL) from None


def single_label_issues(targets: np.ndarray, class_probs: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
    """(quality score, flagged) per image of a one-class-per-image task; `class_probs` N x K."""
    _cleanlab()
    from cleanlab.filter import find_label_issues
    from cleanlab.rank import get_label_quality_scores

    labels = np.asarray(targets, np.int64).reshape(-1)
    probs = _rows_sum_to_one(class_probs)
    scores = get_label_quality_scores(labels, probs, method="self_confidence")
    flagged = find_label_issues(labels, probs, n_jobs=1)  # one process: no fork inside a CLI
    return np.asarray(scores, np.float64), np.asarray(flagged, bool)


def multi_label_issues(targets: np.ndarray, probs: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
    """(quality score, flagged) per image of a multi-label task (any tag may be wrong)."""
    _cleanlab()
    from cleanlab.multilabel_classification.filter import find_label_issues
    from cleanlab.multilabel_classification.rank import get_label_quality_scores

    truth = np.asarray(targets) > 0.5
    # A tag on every image (or on none) gives confident learning no second class to compare with
    # (cleanlab raises): such tags are left out; with none left, no image can be ranked by its tags.
    varied = truth.any(axis=0) & ~truth.all(axis=0)
    if not varied.any():
        return np.ones(len(truth)), np.zeros(len(truth), bool)
    probs = np.clip(np.asarray(probs, np.float64)[:, varied], 0.0, 1.0)
    if varied.sum() == 1:  # one tag left: a yes/no label (cleanlab's multi-label code needs two columns)
        return single_label_issues(truth[:, varied][:, 0], np.hstack([1.0 - probs, probs]))
    labels = [list(np.flatnonzero(row)) for row in truth[:, varied]]
    scores = get_label_quality_scores(labels, probs)
    flagged = find_label_issues(labels, probs, n_jobs=1)
    return np.asarray(scores, np.float64), np.asarray(flagged, bool)


def _rows_sum_to_one(probs: np.ndarray) -> np.ndarray:
    """cleanlab checks that rows sum to 1; float32 softmax rows are off by a few ulp."""
    probs = np.clip(np.asarray(probs, np.float64), 0.0, None)
    return probs / probs.sum(axis=1, keepdims=True)
