"""The Task abstraction: one object per problem type owns every rule that differs between
multiclass, binary, multilabel and keypoints (output size, label encoding, class counts,
losses, activation, metrics, decoding, TTA aggregation, submission rows, per-class reports).
Code outside `cvtool/tasks/` asks the task and never branches on its name.

Importing the tasks does not import torch (the ONNX predict path relies on that); only
building a loss does.
"""

from __future__ import annotations

from abc import ABC, abstractmethod
from typing import Any

import numpy as np

from cvtool.model_card import Labels

LOWER_IS_BETTER = {"loss", "mse", "rmse", "mae"}


def higher_is_better(metric: str) -> bool:
    """Direction of a metric name such as 'val/accuracy' or 'val/rmse'."""
    return metric.split("/")[-1] not in LOWER_IS_BETTER


def softmax(logits: np.ndarray) -> np.ndarray:
    z = logits - logits.max(axis=1, keepdims=True)
    e = np.exp(z)
    return e / e.sum(axis=1, keepdims=True)


def sigmoid(logits: np.ndarray) -> np.ndarray:
    return np.where(logits >= 0, 1.0 / (1.0 + np.exp(-np.clip(logits, 0, None))),
                    np.exp(np.clip(logits, None, 0)) / (1.0 + np.exp(np.clip(logits, None, 0))))


class Task(ABC):
    name: str = ""
    default_monitor: str = ""
    default_loss: str = ""
    confusion: bool = False  # confusion-matrix plots make sense
    roc: bool = False  # ROC curves make sense

    @abstractmethod
    def activate(self, logits: np.ndarray) -> np.ndarray:
        """Raw model outputs -> probabilities (or normalized coordinates)."""

    @abstractmethod
    def metrics(self, targets: np.ndarray, outputs: np.ndarray, threshold: np.ndarray | float = 0.5,
                sizes: np.ndarray | None = None) -> dict[str, float]:
        """Every metric of the task, computed with scikit-learn."""

    @abstractmethod
    def aggregate(self, stack: np.ndarray, mode: str, threshold: np.ndarray | float = 0.5) -> np.ndarray:
        """TTA: passes x samples x outputs -> samples x outputs."""

    @abstractmethod
    def header(self, labels: Labels, probs: bool = False) -> list[str]:
        """Submission columns after the image column."""

    @abstractmethod
    def rows(self, outputs: np.ndarray, labels: Labels, probs: bool = False,
             sizes: np.ndarray | None = None) -> list[list[Any]]:
        """Submission cells (without the image column) for each sample."""

    def predicted_labels(self, outputs: np.ndarray, class_names: list[str],
                         threshold: np.ndarray | float = 0.5) -> list[str] | None:
        """The predicted class name (space-separated tags for multi-label) per sample; None
        for tasks without labels (keypoints)."""
        return None

    def target_labels(self, targets: np.ndarray, class_names: list[str]) -> list[str] | None:
        """The true class name (or tags) per sample; None for tasks without labels."""
        return None

    def encode_targets(self, targets: np.ndarray, sizes: np.ndarray) -> np.ndarray:
        """Targets as the model learns them (identity except for keypoints)."""
        return targets

    @abstractmethod
    def build_loss(self, cfg: Any, class_weights: Any = None, pos_weight: float | None = None) -> Any:
        """The training criterion: loss(logits, targets) -> scalar tensor."""
