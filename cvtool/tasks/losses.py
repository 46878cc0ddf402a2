"""Loss construction for the tasks; torch is imported only here, on first use."""

from __future__ import annotations

from typing import Any


def cross_entropy(cfg: Any, class_weights: Any = None) -> Any:
    import torch

    weight = None if class_weights is None else torch.as_tensor(class_weights, dtype=torch.float32)
    return torch.nn.CrossEntropyLoss(weight=weight, label_smoothing=cfg.label_smoothing)


def point_loss(cfg: Any, default: str, image_size: int) -> Any:
    """MSE or SmoothL1 on normalized [-1, 1] coordinates.

    `loss.beta` is in pixels of the model's input image: the [-1, 1] range spans `image_size`
    pixels, so beta becomes 2 * beta / image_size. Used raw, beta 1 would sit at half the image
    and SmoothL1 would be 0.5 * MSE for every realistic error (the same Adam run as MSE)."""
    import torch

    name = cfg.name if cfg.name != "auto" else default
    if name != "smooth_l1":
        return torch.nn.MSELoss()
    return torch.nn.SmoothL1Loss(beta=2.0 * cfg.beta / image_size)


def sigmoid_loss(cfg: Any, class_weights: Any, pos_weight: float | None) -> Any:
    """BCE with logits (per-class weights / pos_weight) or torchvision's sigmoid focal loss."""
    import torch
    from torchvision.ops import sigmoid_focal_loss

    weight = None if class_weights is None else torch.as_tensor(class_weights, dtype=torch.float32)
    given = getattr(cfg, "pos_weight", None)  # bce (and auto) only: focal has no pos_weight
    if pos_weight is None and given not in (None, "auto"):
        pos_weight = float(given)
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
