"""The Task abstraction: one object per problem type owns every rule that differs between
multiclass, binary, multilabel and keypoints (output size, label encoding, class counts,
losses, activation, metrics, decoding, TTA aggregation, submission rows, per-class reports).
Code outside `cvtool/tasks/` asks the task and never branches on its name, its class or its
flags (the bool class attributes below, which only the tasks read: tests/test_architecture.py).

Importing the tasks does not import torch (the ONNX predict path relies on that); only
building a loss does.
"""

from __future__ import annotations

from abc import ABC, abstractmethod
from typing import Any, TypeVar

import numpy as np

from cvtool.errors import CvtoolError
from cvtool.model_card import Labels, ModelMeta
from cvtool.tasks.label_stats import class_stats, class_weights, pos_weight
from cvtool.tasks.reports import ClassTable, label_predictions, output_names

Augment = TypeVar("Augment")

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
    has_classes: bool = False  # targets name classes (class-balanced sampling applies)
    mixable: bool = False  # MixUp/CutMix can mix the targets (a convex combination means something)
    losses: tuple[str, ...] = ()  # loss names a recipe may choose (recipe.schema asks)
    formats: tuple[str, ...] = ()  # layouts `cvtool data synthetic` writes; the first is the default
    # Targets are image coordinates: augmentation moves them with the pixels, CSV columns hold
    # them as numbers, there are no classes, and reports show original pixels.
    point_targets: bool = False
    one_label_per_image: bool = True  # the folder format (<class>/<image>) can hold the labels
    stratify: bool = False  # a seeded val split keeps the class proportions
    thresholds: bool = False  # outputs are probabilities compared with a tunable threshold
    count_of: str = "images"  # what a class count counts (stats)
    class_weighted: bool = False  # loss.class_weights inverse / sqrt_inverse apply
    positive_class: bool = False  # one output scores the positive class (stats report its pos_weight)
    # evaluation figures, in order (names in evaluation.reports.FIGURES: confusion matrices, ROC
    # curves, the worst keypoints); a run's plots draw those runs.plotting.EPOCH_FIGURES knows too
    figures: tuple[str, ...] = ()
    probabilities: bool = True  # outputs are class probabilities (`predict --probs` can write them)
    label_key: str = "label_column"  # the data.* setting naming the CSV column of the labels

    def num_outputs(self, class_names: list[str], target_names: list[str]) -> int:
        """Model outputs for a dataset with these classes / target columns."""
        return len(class_names)

    def label_column(self, label_column: str, tags_column: str) -> str:
        """The CSV column that holds an image's label(s)."""
        return label_column

    def classes_of(self, labels: list[str]) -> list[str]:
        """The class order of raw string labels: numeric names by value, others alphabetically."""
        unique = set(labels)
        try:
            return sorted(unique, key=lambda c: (float(c), c))
        except ValueError:
            return sorted(unique)

    def encode_labels(self, labels: list[str], class_names: list[str]) -> np.ndarray:
        """Raw string labels -> targets (int64 class index); KeyError names an unknown class."""
        index = {c: i for i, c in enumerate(class_names)}
        return np.asarray([index[label] for label in labels], np.int64)

    def check_classes(self, class_names: list[str]) -> str | None:
        """What is wrong with this class list for the task, or None."""
        return None

    def class_counts(self, targets: np.ndarray, num_classes: int) -> np.ndarray | None:
        """Images (or positives) per class; None where class weights do not apply."""
        return None

    def metric_targets(self, targets: np.ndarray) -> np.ndarray:
        """Targets as collected from batches -> the dtype `metrics` expects."""
        return targets

    @abstractmethod
    def class_table(self, result: Any, meta: ModelMeta) -> ClassTable:
        """The per-class (or per-point) table of an evaluation."""

    fold_stratify: str = "none"  # k-fold: "classes" (StratifiedKFold), "tags" (iterative) or "none" (KFold)
    activation: str = "identity"  # what `activate` applies: softmax, sigmoid or identity (ensembles invert it)

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

    def cut_off(self, encoded: np.ndarray) -> int:
        """How many encoded targets lie outside the model frame (keypoints a crop cuts off)."""
        return 0

    @abstractmethod
    def build_loss(self, cfg: Any, class_weights: Any = None, pos_weight: float | None = None,
                   image_size: int | None = None) -> Any:
        """The training criterion: loss(logits, targets) -> scalar tensor (`image_size`: the
        model's input side, which pixel-valued loss settings such as `loss.beta` need)."""

    def train_meter(self, num_outputs: int, threshold: float, frames: np.ndarray) -> Any:
        """What gathers the training split's metrics while an epoch runs (tasks.meters)."""
        from cvtool.tasks.meters import OutputMeter

        return OutputMeter(self, threshold, frames)

    def dense_targets(self, targets: Any, num_outputs: int) -> Any:
        """Targets as one float row per sample (what MixUp/CutMix mix): N x outputs tensor."""
        raise CvtoolError(f"task {self.name}: targets cannot be mixed (MixUp/CutMix)")

    def sampling_groups(self, targets: np.ndarray, num_outputs: int) -> np.ndarray:
        """The class each training sample counts for in class-balanced sampling (0..groups-1)."""
        raise CvtoolError(f"task {self.name}: targets have no classes to balance")

    # Trust: calibration (tasks/calibration.py), label errors (tasks/label_issues.py), Grad-CAM targets.
    calibrates: bool = False  # outputs are probabilities that temperature scaling can calibrate
    reliability_axes: tuple[str, str] = ("", "")  # what a reliability diagram bins, what it counts

    def check_explainable(self) -> str | None:
        """What stops Grad-CAM from explaining a class of this task's model, or None."""
        return None if self.has_classes else f"a {self.name} model has no class to explain"

    def check_calibration(self) -> str | None:
        """What stops temperature scaling of this task's outputs, or None."""
        return None if self.calibrates else f"task {self.name} has no class probabilities to calibrate"

    def fit_temperature(self, targets: np.ndarray, outputs: np.ndarray) -> np.ndarray:
        """The temperatures (one, or one per output) minimizing the NLL of `outputs`."""
        raise CvtoolError(f"task {self.name}: its outputs are not probabilities, there is nothing to calibrate")

    def calibrate(self, outputs: np.ndarray, temperature: np.ndarray) -> np.ndarray:
        """Activated outputs -> the activation of logits / temperature."""
        raise CvtoolError(f"task {self.name}: its outputs are not probabilities, there is nothing to calibrate")

    def calibration_scores(self, targets: np.ndarray, outputs: np.ndarray) -> dict[str, float]:
        """{"ece": expected calibration error, "nll": mean negative log-likelihood}."""
        raise CvtoolError(f"task {self.name}: its outputs are not probabilities, there is nothing to calibrate")

    def confidence(self, targets: np.ndarray, outputs: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
        """(confidence, correct) pairs a reliability diagram bins."""
        raise CvtoolError(f"task {self.name}: its outputs are not probabilities, there is nothing to calibrate")

    def confident_errors(self, targets: np.ndarray, outputs: np.ndarray, threshold: Any = 0.5) -> np.ndarray:
        """Indices of the wrong predictions, the most confident first."""
        raise CvtoolError(f"task {self.name}: its outputs are not class probabilities, no prediction is 'wrong'")

    def label_issues(self, targets: np.ndarray, outputs: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
        """(label-quality score, lower is worse; flagged by confident learning) per sample."""
        raise CvtoolError(f"task {self.name}: targets are not class labels, there are no label errors to rank")

    def explain_target(self, outputs: np.ndarray, class_index: int | None,
                       threshold: float = 0.5) -> tuple[int, float, int]:
        """Grad-CAM of one sample: (output column, sign, class explained); the top class when
        `class_index` is None. CAM follows sign x output[column]."""
        raise CvtoolError(f"task {self.name}: outputs are not class scores, there is no class to explain")

    # What other packages ask instead of reading the flags above. check_*: what stops a feature
    # for this task (one line, the caller prefixes its option), or None.

    def check_mixing(self) -> str | None:
        """What stops MixUp/CutMix (`augment_batch`) from mixing this task's targets, or None."""
        return None if self.mixable else f"MixUp/CutMix cannot mix {self.name} targets"

    def check_sampler(self, sampler: str) -> str | None:
        """What stops `data.sampler` from drawing this task's training images, or None."""
        if sampler == "uniform" or self.has_classes:
            return None
        return f"data.sampler {sampler} needs class labels (task {self.name} has none)"

    def check_thresholds(self) -> str | None:
        """What stops tuning decision thresholds for this task's outputs, or None."""
        return None if self.thresholds else f"task {self.name} has no decision thresholds"

    def check_probabilities(self) -> str | None:
        """What stops `predict --probs` from writing class probabilities, or None."""
        if self.probabilities:
            return None
        return f"a {self.name} model has no class probabilities (its columns are the outputs)"

    def check_folder_format(self) -> str | None:
        """What stops the folder format (<class>/<image>) from holding this task's labels, or None."""
        if self.one_label_per_image:
            return None
        return f"folder holds one label per image; task {self.name} needs format csv"

    def check_flip_pairs(self, pairs: list[tuple[int, int]], target_names: list[str]) -> str | None:
        """What is wrong with `data.flip_pairs` for the data's targets, or None."""
        if pairs and not self.point_targets:
            return f"task {self.name} has no points to swap"
        return None

    def check_point_blind(self, transforms: list[str]) -> str | None:
        """What is wrong with `transforms`, which move the pixels but not point targets, or None."""
        return None

    def augment_with(self, image_only: Augment, with_points: Augment) -> Augment:
        """Of the data layer's two ways to augment a sample, the one this task's targets need:
        `with_points` moves targets that are image coordinates with the pixels, `image_only`
        leaves the targets as they are."""
        return with_points if self.point_targets else image_only

    def stratify_labels(self, targets: np.ndarray | None) -> np.ndarray | None:
        """What a seeded train/val split keeps the proportions of (None: a plain random split)."""
        return targets if self.stratify else None

    def loss_class_weights(self, targets: np.ndarray, num_outputs: int, mode: str) -> np.ndarray | None:
        """loss.class_weights `mode` (inverse, sqrt_inverse) from the training targets; None where
        class weights do not apply (binary weighs its positives with loss.pos_weight instead)."""
        if not self.class_weighted:
            return None
        return class_weights(self.class_counts(targets, num_outputs), len(targets), mode)

    def label_stats(self, train: np.ndarray, splits: dict[str, np.ndarray], class_names: list[str],
                    target_names: list[str]) -> dict[str, Any]:
        """`cvtool stats`'s labels: images (or positives) per class in each of `splits`, the
        training split's imbalance and class weights (and pos_weight for one positive class)."""
        counts = {name: [int(v) for v in self.class_counts(targets, len(class_names))]
                  for name, targets in splits.items()}
        classes = class_stats(counts, class_names, self.count_of, len(train))
        if self.positive_class:
            classes["pos_weight"] = pos_weight(train) if min(counts["train"]) > 0 else None
        return {"classes": classes}

    def prediction_table(self, result: Any, meta: ModelMeta) -> tuple[list[str], list[list[Any]]]:
        """A predictions CSV (header, rows): image, target and predicted label (class name, or
        tags), then the probabilities."""
        classes = list(meta.class_names)
        truth = None if result.targets is None else self.target_labels(result.targets, classes)
        predicted = self.predicted_labels(result.outputs, classes, result.threshold)
        return label_predictions(result.paths, truth, predicted, result.outputs, output_names(meta))
