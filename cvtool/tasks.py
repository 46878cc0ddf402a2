"""One Task object per problem type: output size, loss, activation, metrics, decoding,
TTA aggregation and submission rows. Commands call these and never branch on the task.

Importing this module does not import torch (the ONNX predict path relies on that);
only `build_loss` does.
"""

from __future__ import annotations

from abc import ABC, abstractmethod
from collections.abc import Sequence
from dataclasses import dataclass
from typing import Any

import numpy as np

from cvtool.registry import Registry

TASKS: Registry[Task] = Registry("task")  # type: ignore[name-defined]

LOWER_IS_BETTER = {"loss", "mse", "rmse", "mae"}


def higher_is_better(metric: str) -> bool:
    """Direction of a metric name such as 'val/accuracy' or 'val/rmse'."""
    return metric.split("/")[-1] not in LOWER_IS_BETTER


@dataclass(frozen=True)
class Labels:
    """What decoding needs beyond the outputs."""

    class_names: Sequence[str] = ()
    target_names: Sequence[str] = ()
    thresholds: np.ndarray | float = 0.5  # multilabel / binary decision thresholds


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

    def encode_targets(self, targets: np.ndarray, sizes: np.ndarray) -> np.ndarray:
        """Targets as the model learns them (identity except for keypoints)."""
        return targets

    @abstractmethod
    def build_loss(self, cfg: Any, class_weights: Any = None, pos_weight: float | None = None) -> Any:
        """The training criterion: loss(logits, targets) -> scalar tensor."""


def _vote_classes(stack: np.ndarray) -> np.ndarray:
    """Majority class per sample; the output is the mean probability of the passes that
    voted for it, so its argmax is the voted class. Ties go to the higher mean probability."""
    passes, count, classes = stack.shape
    votes = np.zeros((count, classes))
    np.add.at(votes, (np.arange(count)[None, :].repeat(passes, 0), stack.argmax(axis=2)), 1)
    mean = stack.mean(axis=0)
    winner = (votes + 0.5 * mean).argmax(axis=1)
    agree = stack.argmax(axis=2) == winner[None, :]  # passes x samples
    weights = agree / np.maximum(agree.sum(axis=0, keepdims=True), 1)
    return np.einsum("ps,psc->sc", weights, stack)


def _vote_labels(stack: np.ndarray, threshold: np.ndarray | float) -> np.ndarray:
    """Per-label majority of the thresholded passes; the output is the mean probability of the
    agreeing passes, so comparing it with the threshold gives the vote. Ties use the mean."""
    above = stack > threshold
    positive = above.sum(axis=0)
    passes = stack.shape[0]
    decision_pos = positive * 2 > passes
    decision_neg = positive * 2 < passes
    mean = stack.mean(axis=0)
    agree_pos = np.where(above, stack, 0).sum(axis=0) / np.maximum(positive, 1)
    agree_neg = np.where(~above, stack, 0).sum(axis=0) / np.maximum(passes - positive, 1)
    return np.where(decision_pos, agree_pos, np.where(decision_neg, agree_neg, mean))


class Multiclass(Task):
    name = "multiclass"
    default_monitor = "val/accuracy"
    default_loss = "cross_entropy"
    confusion = True

    def activate(self, logits: np.ndarray) -> np.ndarray:
        return softmax(logits.astype(np.float64)).astype(np.float32)

    def metrics(self, targets, outputs, threshold=0.5, sizes=None):
        from sklearn.metrics import accuracy_score, f1_score, top_k_accuracy_score

        classes = outputs.shape[1]
        labels = np.arange(classes)
        predicted = outputs.argmax(axis=1)
        result = {
            "accuracy": float(accuracy_score(targets, predicted)),
            "f1_macro": float(f1_score(targets, predicted, labels=labels, average="macro", zero_division=0)),
        }
        if classes > 5:
            result["top5_accuracy"] = float(top_k_accuracy_score(targets, outputs, k=5, labels=labels))
        return result

    def aggregate(self, stack, mode, threshold=0.5):
        return _vote_classes(stack) if mode == "vote" else stack.mean(axis=0)

    def header(self, labels, probs=False):
        return ["label", *labels.class_names] if probs else ["label"]

    def rows(self, outputs, labels, probs=False, sizes=None):
        names = list(labels.class_names)
        return [[names[i], *(f"{p:.6f}" for p in row)] if probs else [names[i]]
                for i, row in zip(outputs.argmax(axis=1), outputs, strict=True)]

    def build_loss(self, cfg, class_weights=None, pos_weight=None):
        import torch

        weight = None if class_weights is None else torch.as_tensor(class_weights, dtype=torch.float32)
        return torch.nn.CrossEntropyLoss(weight=weight, label_smoothing=cfg.label_smoothing)


class Binary(Task):
    name = "binary"
    default_monitor = "val/auc"
    default_loss = "bce"
    confusion = True
    roc = True

    def activate(self, logits):
        return sigmoid(logits.astype(np.float64)).astype(np.float32)

    def metrics(self, targets, outputs, threshold=0.5, sizes=None):
        from sklearn.metrics import accuracy_score, f1_score, roc_auc_score

        score = outputs.reshape(-1)
        predicted = (score > float(np.asarray(threshold).reshape(-1)[0])).astype(np.int64)
        auc = float(roc_auc_score(targets, score)) if len(np.unique(targets)) == 2 else float("nan")
        return {
            "auc": auc,
            "accuracy": float(accuracy_score(targets, predicted)),
            "f1": float(f1_score(targets, predicted, zero_division=0)),
        }

    def aggregate(self, stack, mode, threshold=0.5):
        return _vote_labels(stack, threshold) if mode == "vote" else stack.mean(axis=0)

    def header(self, labels, probs=False):
        return ["score"]

    def rows(self, outputs, labels, probs=False, sizes=None):
        return [[f"{p:.6f}"] for p in outputs.reshape(-1)]

    def build_loss(self, cfg, class_weights=None, pos_weight=None):
        return _sigmoid_loss(cfg, class_weights, pos_weight)


class Multilabel(Task):
    name = "multilabel"
    default_monitor = "val/f1_macro"
    default_loss = "bce"
    roc = True

    def activate(self, logits):
        return sigmoid(logits.astype(np.float64)).astype(np.float32)

    def metrics(self, targets, outputs, threshold=0.5, sizes=None):
        from sklearn.metrics import f1_score, fbeta_score

        predicted = (outputs > np.asarray(threshold)).astype(np.int64)
        truth = targets.astype(np.int64)
        return {
            "f1_macro": float(f1_score(truth, predicted, average="macro", zero_division=0)),
            "f1_micro": float(f1_score(truth, predicted, average="micro", zero_division=0)),
            "f1_weighted": float(f1_score(truth, predicted, average="weighted", zero_division=0)),
            "f2": float(fbeta_score(truth, predicted, beta=2, average="samples", zero_division=0)),
        }

    def aggregate(self, stack, mode, threshold=0.5):
        return _vote_labels(stack, threshold) if mode == "vote" else stack.mean(axis=0)

    def header(self, labels, probs=False):
        return ["tags", *labels.class_names] if probs else ["tags"]

    def rows(self, outputs, labels, probs=False, sizes=None):
        names = np.asarray(list(labels.class_names))
        above = outputs > np.asarray(labels.thresholds)
        return [[" ".join(names[mask]), *(f"{p:.6f}" for p in row)] if probs else [" ".join(names[mask])]
                for mask, row in zip(above, outputs, strict=True)]

    def build_loss(self, cfg, class_weights=None, pos_weight=None):
        return _sigmoid_loss(cfg, class_weights, pos_weight)


class Keypoints(Task):
    """Targets are x/y pairs normalized to [-1, 1] of the image extent, so they do not
    change when the image is resized; metrics map them back to original pixels."""

    name = "keypoints"
    default_monitor = "val/rmse"
    default_loss = "mse"

    def activate(self, logits):
        return logits.astype(np.float32)

    def encode_targets(self, targets, sizes):
        scale = np.tile(np.asarray(sizes, np.float32), targets.shape[1] // 2)
        return (targets / scale * 2.0 - 1.0).astype(np.float32)

    @staticmethod
    def to_pixels(outputs: np.ndarray, sizes: np.ndarray) -> np.ndarray:
        scale = np.tile(np.asarray(sizes, np.float64), outputs.shape[1] // 2)
        return (outputs.astype(np.float64) + 1.0) / 2.0 * scale

    def metrics(self, targets, outputs, threshold=0.5, sizes=None):
        from sklearn.metrics import mean_absolute_error, mean_squared_error

        assert sizes is not None, "keypoint metrics need the original image sizes"
        truth, predicted = self.to_pixels(targets, sizes), self.to_pixels(outputs, sizes)
        mse = float(mean_squared_error(truth, predicted))
        return {"mse": mse, "rmse": float(np.sqrt(mse)), "mae": float(mean_absolute_error(truth, predicted))}

    def aggregate(self, stack, mode, threshold=0.5):
        return np.median(stack, axis=0) if mode == "vote" else stack.mean(axis=0)

    def header(self, labels, probs=False):
        return list(labels.target_names)

    def rows(self, outputs, labels, probs=False, sizes=None):
        assert sizes is not None, "keypoint rows need the original image sizes"
        return [[f"{v:.4f}" for v in row] for row in self.to_pixels(outputs, sizes)]

    def build_loss(self, cfg, class_weights=None, pos_weight=None):
        import torch

        name = cfg.name if cfg.name != "auto" else self.default_loss
        return torch.nn.SmoothL1Loss(beta=cfg.beta) if name == "smooth_l1" else torch.nn.MSELoss()


def _sigmoid_loss(cfg: Any, class_weights: Any, pos_weight: float | None) -> Any:
    """BCE with logits (per-class weights / pos_weight) or torchvision's sigmoid focal loss."""
    import torch
    from torchvision.ops import sigmoid_focal_loss

    weight = None if class_weights is None else torch.as_tensor(class_weights, dtype=torch.float32)
    if pos_weight is None and cfg.pos_weight not in (None, "auto"):
        pos_weight = float(cfg.pos_weight)
    pos_weight_t = None if pos_weight is None else torch.tensor([float(pos_weight)])

    class SigmoidLoss(torch.nn.Module):
        def __init__(self) -> None:
            super().__init__()
            self.register_buffer("weight", weight)
            self.register_buffer("pos_weight", pos_weight_t)

        def forward(self, logits: torch.Tensor, targets: torch.Tensor) -> torch.Tensor:
            targets = targets.reshape(logits.shape).to(logits.dtype)
            if cfg.name == "focal":
                loss = sigmoid_focal_loss(logits, targets, alpha=-1 if cfg.alpha is None else cfg.alpha,
                                          gamma=cfg.gamma, reduction="none")
            else:
                loss = torch.nn.functional.binary_cross_entropy_with_logits(
                    logits, targets, pos_weight=self.pos_weight, reduction="none")
            if self.weight is not None:
                loss = loss * self.weight
            return loss.mean()

    return SigmoidLoss()


for _task in (Multiclass(), Binary(), Multilabel(), Keypoints()):
    TASKS.add(_task.name, _task)


def get_task(name: str) -> Task:
    return TASKS.get(name)
