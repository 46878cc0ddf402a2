"""Keypoint regression: x/y per point, normalized to [-1, 1] of the image extent."""

from __future__ import annotations

import numpy as np

from cvtool.tasks.base import Task
from cvtool.tasks.losses import point_loss
from cvtool.tasks.reports import point_table, to_pixels


class Keypoints(Task):
    """Targets are x/y pairs normalized to [-1, 1] of the image extent, so they do not
    change when the image is resized; metrics map them back to original pixels."""

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

    def activate(self, logits):
        return logits.astype(np.float32)

    def encode_targets(self, targets, sizes):
        scale = np.tile(np.asarray(sizes, np.float32), targets.shape[1] // 2)
        return (targets / scale * 2.0 - 1.0).astype(np.float32)

    to_pixels = staticmethod(to_pixels)

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
        return point_loss(cfg, self.default_loss)
