"""Keypoint regression: x/y per point, normalized to [-1, 1] of the image extent."""

from __future__ import annotations

import numpy as np

from cvtool.tasks.base import Task
from cvtool.tasks.frame import from_frame, outside_frame, to_frame
from cvtool.tasks.label_stats import target_ranges
from cvtool.tasks.losses import point_loss
from cvtool.tasks.reports import point_predictions, point_table


class Keypoints(Task):
    """Targets are x/y pairs normalized to [-1, 1] of the model frame (`tasks.frame`), so they
    do not change with image_size; metrics and rows map them back to original pixels.

    `sizes` arguments are N x 4 frames from `frame_boxes(sizes, data.resize)`, or N x 2 original
    (width, height) sizes, which mean `squash`."""

    name = "keypoints"
    default_monitor = "val/rmse"
    default_loss = "mse"
    losses = ("mse", "smooth_l1")
    formats = ("csv",)
    point_targets = True
    one_label_per_image = False
    figures = ("worst_keypoints",)

    def num_outputs(self, class_names, target_names):
        return len(target_names)

    def class_table(self, result, meta):
        return point_table(result, meta)
    probabilities = False  # coordinates, not scores

    def activate(self, logits):
        return logits.astype(np.float32)

    def encode_targets(self, targets, sizes):
        return to_frame(targets, sizes).astype(np.float32)

    @staticmethod
    def to_pixels(outputs: np.ndarray, sizes: np.ndarray) -> np.ndarray:
        return from_frame(outputs, sizes)

    def cut_off(self, encoded):
        return int(outside_frame(encoded).sum())

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

    def build_loss(self, cfg, class_weights=None, pos_weight=None, image_size=None):
        assert image_size is not None, "keypoint losses need the model's input size (loss.beta is in pixels)"
        return point_loss(cfg, self.default_loss, image_size)

    def check_flip_pairs(self, pairs, target_names):
        points = len(target_names) // 2  # x and y columns per point
        named = [index for pair in pairs for index in pair]
        if beyond := [index for index in named if index >= points]:
            return f"point {beyond[0]} does not exist: the data has {points} points (indices 0 to {points - 1})"
        if twice := sorted({index for index in named if named.count(index) > 1}):
            return f"point {twice[0]} is in more than one pair (a flip swaps each point with one other)"
        return None

    def check_point_blind(self, transforms):
        if not transforms:
            return None
        return (f"{', '.join(transforms)} would move the image but not the keypoints (task {self.name}); "
                "use RandomAffine / flips / colour transforms")

    def label_stats(self, train, splits, class_names, target_names):
        return {"targets": target_ranges(train, target_names)}

    def prediction_table(self, result, meta):
        return point_predictions(result, meta)
