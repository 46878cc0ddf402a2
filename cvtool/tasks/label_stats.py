"""Label statistics (class counts, imbalance, target ranges) and the class weights and
pos_weight the losses derive from the training counts. numpy only; the Task picks what
applies (`Task.label_stats`, `Task.loss_class_weights`)."""

from __future__ import annotations

from typing import Any

import numpy as np

from cvtool.errors import CvtoolError

WEIGHT_MODES = ("none", "inverse", "sqrt_inverse")


def class_weights(counts: np.ndarray, total: int, mode: str) -> np.ndarray | None:
    """Per-class loss weights from training counts (multiclass: images per class; multilabel:
    positives per tag), or None for mode 'none'.

    inverse: w_c = total / (K * n_c), scikit-learn's "balanced" (for multiclass counts the mean
    weight per training image is 1). sqrt_inverse: sqrt(w_c), rescaled so the mean over the K
    classes is 1. A class without samples is counted as one sample so its weight stays finite.
    """
    if mode not in WEIGHT_MODES:
        raise CvtoolError(f"class weights: unknown mode '{mode}' (use {', '.join(WEIGHT_MODES)})")
    if mode == "none":
        return None
    if total <= 0 or len(counts) == 0:
        raise CvtoolError("class weights need at least one training image and one class")
    n = np.maximum(np.asarray(counts, dtype=np.float64), 1.0)
    inverse = total / (len(n) * n)
    if mode == "inverse":
        return inverse
    root = np.sqrt(inverse)
    return root / root.mean()


def pos_weight(targets: np.ndarray) -> float:
    """n_negative / n_positive of binary 0/1 targets (BCE's pos_weight)."""
    flat = np.asarray(targets).reshape(-1)
    positives = int((flat > 0.5).sum())
    negatives = flat.size - positives
    if positives == 0 or negatives == 0:
        raise CvtoolError(f"pos_weight: the training split has {positives} positive and {negatives} negative images")
    return negatives / positives


def class_stats(counts: dict[str, list[int]], class_names: list[str], count_of: str,
                train_images: int) -> dict[str, Any]:
    """Counts per split, the training split's imbalance and the weights of each class_weights mode."""
    train_counts = np.asarray(counts["train"])
    return {
        "names": class_names,
        "count_of": count_of,
        "counts": counts,
        "imbalance_ratio": float(train_counts.max() / train_counts.min()) if train_counts.min() > 0 else None,
        "weights": {mode: class_weights(train_counts, train_images, mode).tolist()
                    for mode in ("inverse", "sqrt_inverse")},
    }


def target_ranges(targets: np.ndarray, target_names: list[str]) -> list[dict[str, Any]]:
    """min, mean and max of every target column (keypoint coordinates)."""
    values = np.asarray(targets, dtype=np.float64)
    return [{"name": name, "min": float(col.min()), "mean": float(col.mean()), "max": float(col.max())}
            for name, col in zip(target_names, values.T, strict=True)]
