"""Training-split metrics as running sums on the device: each batch adds its counts to a few
tensors that stay where the outputs are (no step waits, no output is kept), and the epoch's
metrics come from the sums at the end. They equal the task's scikit-learn metrics on the
epoch's concatenated outputs (tests/test_meters.py). A metric that needs every score (ROC AUC)
has no running form and is left to validation. torch is imported on first use only.

Keypoint errors need each image's frame to go back to pixels; their outputs are small, so
their meter copies them to host memory as they come (non-blocking) and scores them at the end.
"""

from __future__ import annotations

from typing import Any

import numpy as np


def _f1(tp: np.ndarray, fp: np.ndarray, fn: np.ndarray, beta: float = 1.0) -> np.ndarray:
    """F-beta per entry, 0 where it is undefined (scikit-learn's zero_division=0)."""
    b2 = beta * beta
    denominator = (1 + b2) * tp + b2 * fn + fp
    return np.divide((1 + b2) * tp, denominator, out=np.zeros(np.shape(tp), np.float64), where=denominator > 0)


class _Sums:
    """Named running sums on the outputs' device, read once at the end."""

    def __init__(self) -> None:
        self.sums: dict[str, Any] = {}

    def add_sum(self, name: str, value: Any) -> None:
        self.sums[name] = value if name not in self.sums else self.sums[name] + value

    def read(self) -> dict[str, np.ndarray]:
        values = {name: value.cpu().numpy().astype(np.float64) for name, value in self.sums.items()}
        self.sums = {}
        return values


class ConfusionMeter(_Sums):
    """Multiclass: the confusion matrix (accuracy, macro F1) and the top-5 hits."""

    def __init__(self, classes: int) -> None:
        super().__init__()
        self.classes = classes

    def add(self, logits: Any, targets: Any, indices: Any) -> None:
        import torch

        truth = targets.reshape(-1).long()
        pairs = truth * self.classes + logits.argmax(dim=1)
        # index_add_ into a fixed size: bincount on CUDA reads the largest index back to size its output
        counts = torch.zeros(self.classes * self.classes, dtype=torch.int64, device=logits.device)
        self.add_sum("confusion", counts.index_add_(0, pairs, torch.ones_like(pairs)))
        if self.classes > 5:
            self.add_sum("top5", (logits.topk(5, dim=1).indices == truth[:, None]).any(dim=1).sum())

    def result(self) -> dict[str, float]:
        if not self.sums:
            return {}
        sums = self.read()
        matrix = sums["confusion"].reshape(self.classes, self.classes)
        tp = np.diag(matrix)
        total = matrix.sum()
        result = {"accuracy": float(tp.sum() / total),
                  "f1_macro": float(_f1(tp, matrix.sum(axis=0) - tp, matrix.sum(axis=1) - tp).mean())}
        if "top5" in sums:
            result["top5_accuracy"] = float(sums["top5"] / total)
        return result


class LabelMeter(_Sums):
    """Binary and multi-label: per-output true/false positives and false negatives at the
    threshold, and (multi-label) each image's F2 summed."""

    def __init__(self, threshold: float, tags: bool) -> None:
        super().__init__()
        self.threshold, self.tags = threshold, tags

    def add(self, logits: Any, targets: Any, indices: Any) -> None:
        import torch

        truth = targets.reshape(logits.shape).float()
        predicted = (torch.sigmoid(logits.float()) > self.threshold).float()
        tp, fp, fn = predicted * truth, predicted * (1 - truth), (1 - predicted) * truth
        self.add_sum("tp", tp.sum(dim=0))
        self.add_sum("fp", fp.sum(dim=0))
        self.add_sum("fn", fn.sum(dim=0))
        self.add_sum("images", logits.new_full((), float(len(truth)), dtype=torch.float32))  # no host copy
        if self.tags:
            # counts are exact in float32; the ratio in float64 (MPS has none) matches scikit-learn's
            wide = torch.float32 if logits.device.type == "mps" else torch.float64
            tp_i, fp_i, fn_i = tp.sum(dim=1).to(wide), fp.sum(dim=1).to(wide), fn.sum(dim=1).to(wide)
            denominator = 5 * tp_i + 4 * fn_i + fp_i
            self.add_sum("f2", torch.where(denominator > 0, 5 * tp_i / denominator.clamp(min=1e-12), 0.0).sum())

    def result(self) -> dict[str, float]:
        if not self.sums:
            return {}
        sums = self.read()
        tp, fp, fn, images = sums["tp"], sums["fp"], sums["fn"], float(sums["images"])
        if not self.tags:  # binary: the positive class
            tn = images - tp[0] - fp[0] - fn[0]
            return {"accuracy": float((tp[0] + tn) / images), "f1": float(_f1(tp, fp, fn)[0])}
        per_class, support = _f1(tp, fp, fn), tp + fn
        return {"f1_macro": float(per_class.mean()),
                "f1_micro": float(_f1(tp.sum(), fp.sum(), fn.sum())),
                "f1_weighted": float((per_class * support).sum() / support.sum()) if support.sum() > 0 else 0.0,
                "f2": float(sums["f2"] / images)}


class OutputMeter:
    """Copies each batch's outputs to host memory as they come (on CUDA `non_blocking`, into
    pinned memory) and scores the epoch with the task's own metrics at the end."""

    def __init__(self, task: Any, threshold: float, frames: np.ndarray) -> None:
        self.task, self.threshold, self.frames = task, threshold, frames
        self.parts: list[tuple[Any, Any, Any]] = []

    def add(self, logits: Any, targets: Any, indices: Any) -> None:
        self.parts.append((logits.float().to("cpu", non_blocking=True), targets.to("cpu", non_blocking=True),
                           indices))

    def result(self) -> dict[str, float]:
        import torch

        if not self.parts:
            return {}
        if torch.cuda.is_available() and torch.cuda.is_initialized():  # GPU only: the copies above have landed
            torch.cuda.synchronize()
        logits, targets, indices = (torch.cat(column).numpy() for column in zip(*self.parts, strict=True))
        self.parts = []
        return self.task.metrics(self.task.metric_targets(targets), self.task.activate(logits), self.threshold,
                                 self.frames[np.asarray(indices)])
