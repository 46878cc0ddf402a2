"""Classification tasks: multiclass (softmax), binary (one sigmoid) and multilabel (a sigmoid per tag)."""

from __future__ import annotations

import numpy as np

from cvtool.tasks.base import Task, sigmoid, softmax
from cvtool.tasks.calibration import SigmoidCalibration, SoftmaxCalibration
from cvtool.tasks.label_issues import multi_label_issues, single_label_issues
from cvtool.tasks.losses import cross_entropy, sigmoid_loss
from cvtool.tasks.meters import ConfusionMeter, LabelMeter
from cvtool.tasks.reports import label_table, multiclass_table, positive_table


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


class _Classes(Task):
    """Targets name classes: they can be balanced by class and mixed by MixUp/CutMix."""

    has_classes = True
    mixable = True

    def explain_target(self, outputs, class_index, threshold=0.5):
        chosen = int(np.argmax(outputs)) if class_index is None else class_index
        return chosen, 1.0, chosen


class _Sigmoid(SigmoidCalibration):
    """One independent probability per output (binary, multi-label), a temperature for each."""

    activation = "sigmoid"
    one_label_per_image: bool

    def train_meter(self, num_outputs, threshold, frames):
        return LabelMeter(threshold, tags=not self.one_label_per_image)

    def activate(self, logits):
        return sigmoid(logits.astype(np.float64)).astype(np.float32)


class _OneClassPerImage(_Classes):
    """Targets are int64 class indices, so a val split can keep the class proportions."""

    stratify = True
    fold_stratify = "classes"

    def class_counts(self, targets, num_classes):
        return np.bincount(targets, minlength=num_classes)

    def metric_targets(self, targets):
        return targets.astype(np.int64)

    def target_labels(self, targets, class_names):
        return [class_names[int(t)] for t in targets.reshape(-1)]

    def sampling_groups(self, targets, num_outputs):
        return np.asarray(targets, np.int64)

    def class_probabilities(self, outputs: np.ndarray) -> np.ndarray:
        """N x classes probabilities (binary: its one output is the positive class)."""
        return outputs

    def label_issues(self, targets, outputs):
        return single_label_issues(targets, self.class_probabilities(outputs))


class Multiclass(SoftmaxCalibration, _OneClassPerImage):
    name = "multiclass"
    activation = "softmax"
    default_monitor = "val/accuracy"
    default_loss = "cross_entropy"
    figures = ("confusion",)
    losses = ("cross_entropy",)
    formats = ("folder", "csv", "tinyimagenet")
    class_weighted = True

    def class_table(self, result, meta):
        return multiclass_table(result, meta)

    def train_meter(self, num_outputs, threshold, frames):
        return ConfusionMeter(num_outputs)

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

    def dense_targets(self, targets, num_outputs):
        import torch

        return torch.nn.functional.one_hot(targets.long(), num_outputs).float()

    def build_loss(self, cfg, class_weights=None, pos_weight=None, image_size=None):
        return cross_entropy(cfg, class_weights)

    def predicted_labels(self, outputs, class_names, threshold=0.5):
        return [class_names[i] for i in outputs.argmax(axis=1)]


class Binary(_Sigmoid, _OneClassPerImage):
    name = "binary"
    default_monitor = "val/auc"
    default_loss = "bce"
    figures = ("confusion", "roc")
    losses = ("bce", "focal")
    formats = ("folder",)
    thresholds = True
    positive_class = True

    def num_outputs(self, class_names, target_names):
        return 1

    def check_classes(self, class_names):
        if len(class_names) != 2:
            return f"task binary needs exactly 2 classes, found {len(class_names)}: {class_names[:5]}"
        return None

    def class_table(self, result, meta):
        return positive_table(result, meta)

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

    def dense_targets(self, targets, num_outputs):
        return targets.float().reshape(-1, 1)

    def build_loss(self, cfg, class_weights=None, pos_weight=None, image_size=None):
        return sigmoid_loss(cfg, class_weights, pos_weight)

    def predicted_labels(self, outputs, class_names, threshold=0.5):
        cut = float(np.asarray(threshold, np.float64).reshape(-1)[0])
        return [class_names[int(p > cut)] for p in outputs.reshape(-1)]

    def class_probabilities(self, outputs):
        positive = np.asarray(outputs, np.float64).reshape(-1, 1)
        return np.hstack([1.0 - positive, positive])

    def explain_target(self, outputs, class_index, threshold=0.5):
        """One logit: the positive class follows it, the negative class its negation."""
        chosen = int(float(np.reshape(outputs, -1)[0]) > threshold) if class_index is None else class_index
        return 0, 1.0 if chosen == 1 else -1.0, chosen


class Multilabel(_Sigmoid, _Classes):
    name = "multilabel"
    fold_stratify = "tags"
    default_monitor = "val/f1_macro"
    default_loss = "bce"
    figures = ("roc",)
    losses = ("bce", "focal")
    formats = ("csv",)
    one_label_per_image = False
    thresholds = True
    count_of = "positives"
    class_weighted = True

    label_key = "tags_column"

    def label_column(self, label_column, tags_column):
        return tags_column

    def classes_of(self, labels):
        return sorted({tag for tags in labels for tag in tags.split()})

    def encode_labels(self, labels, class_names):
        index = {c: i for i, c in enumerate(class_names)}
        targets = np.zeros((len(labels), len(class_names)), np.float32)
        for row, tags in enumerate(labels):
            for tag in tags.split():
                targets[row, index[tag]] = 1.0
        return targets

    def class_counts(self, targets, num_classes):
        return np.asarray(targets).sum(axis=0)

    def class_table(self, result, meta):
        return label_table(result, meta)

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

    def dense_targets(self, targets, num_outputs):
        return targets.float()

    def sampling_groups(self, targets, num_outputs):
        """An image counts for its rarest positive tag; images with no tag form one more group."""
        positives = np.asarray(targets) > 0.5
        counts = positives.sum(axis=0)
        rarity = np.where(positives, counts[None, :], np.iinfo(np.int64).max)
        return np.where(positives.any(axis=1), rarity.argmin(axis=1), num_outputs).astype(np.int64)

    def build_loss(self, cfg, class_weights=None, pos_weight=None, image_size=None):
        return sigmoid_loss(cfg, class_weights, pos_weight)

    def predicted_labels(self, outputs, class_names, threshold=0.5):
        return _tags(outputs > np.asarray(threshold), class_names)

    def target_labels(self, targets, class_names):
        return _tags(targets > 0.5, class_names)

    def label_issues(self, targets, outputs):
        return multi_label_issues(targets, outputs)


def _tags(flags: np.ndarray, class_names: list[str]) -> list[str]:
    names = np.asarray(list(class_names))
    return [" ".join(names[row]) for row in flags]
