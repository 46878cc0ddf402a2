"""Temperature scaling as a module: what `cvtool evaluate --calibrate` stores is applied by
wrapping the model, so evaluate, TTA, predict and the ONNX graph all give calibrated outputs."""

from __future__ import annotations

from collections.abc import Sequence

import torch
from torch import nn


class TemperatureScaled(nn.Module):
    """model(x) / temperature: one temperature for every output, or one per output."""

    def __init__(self, model: nn.Module, temperature: Sequence[float]) -> None:
        super().__init__()
        self.model = model
        self.register_buffer("temperature", torch.tensor([float(t) for t in temperature]).view(1, -1))

    def forward(self, images: torch.Tensor) -> torch.Tensor:
        return self.model(images) / self.temperature


def unwrap_temperature(model: nn.Module) -> nn.Module:
    """The network inside a TemperatureScaled wrapper (the model itself otherwise)."""
    return model.model if isinstance(model, TemperatureScaled) else model
