"""simplenet: the seeds' own small conv nets, from `model.blocks`, `skip`, `batch_norm`, `activation`."""

from __future__ import annotations

import torch
from torch import nn

from cvtool.models.heads import make_activation
from cvtool.recipe.schema import ModelConfig


class ConvBlock(nn.Module):
    """conv3x3 → [BN] → act → conv3x3 → [BN] → act (+ shortcut) → maxpool 2 (skipped at 1 px)."""

    def __init__(
        self, in_channels: int, out_channels: int, *, batch_norm: bool, activation: str, skip: bool, pool: bool
    ) -> None:
        super().__init__()
        layers: list[nn.Module] = []
        for width_in in (in_channels, out_channels):
            layers.append(nn.Conv2d(width_in, out_channels, kernel_size=3, padding=1, bias=not batch_norm))
            if batch_norm:
                layers.append(nn.BatchNorm2d(out_channels))
            layers.append(make_activation(activation))
        self.branch = nn.Sequential(*layers)
        self.branch_end = nn.Identity()  # ShakeDrop is attached here
        self.shortcut: nn.Module | None = None
        if skip:
            same = in_channels == out_channels
            self.shortcut = nn.Identity() if same else nn.Conv2d(in_channels, out_channels, kernel_size=1)
        self.pool = nn.MaxPool2d(2) if pool else nn.Identity()

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        out = self.branch(x)
        if self.shortcut is not None:
            out = self.branch_end(out) + self.shortcut(x)
        return self.pool(out)


class SimpleNet(nn.Module):
    """Conv blocks → global average pool (or none: `pool: flatten` keeps the spatial layout,
    which keypoint regression needs) → flatten → Linear."""

    def __init__(
        self,
        channels: int,
        num_outputs: int,
        widths: list[int],
        *,
        image_size: int,
        batch_norm: bool = False,
        activation: str = "relu",
        skip: bool = False,
        pool: str = "avg",
    ) -> None:
        super().__init__()
        self.skip = skip
        blocks: list[nn.Module] = []
        size, width = image_size, channels
        for out_width in widths:
            halve = size > 1  # never pool a 1 px map away
            blocks.append(
                ConvBlock(width, out_width, batch_norm=batch_norm, activation=activation, skip=skip, pool=halve)
            )
            size, width = (size // 2 if halve else size), out_width
        self.blocks = nn.Sequential(*blocks)
        self.pool = nn.AdaptiveAvgPool2d(1) if pool == "avg" else nn.Identity()
        self.flatten = nn.Flatten()
        self.fc = nn.Linear(width if pool == "avg" else width * size * size, num_outputs)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.fc(self.flatten(self.pool(self.blocks(x))))


def build_simplenet(cfg: ModelConfig, num_outputs: int, channels: int, image_size: int) -> SimpleNet:
    """A SimpleNet from the simplenet keys of `model` (dropout and head are added by build_model)."""
    return SimpleNet(
        channels,
        num_outputs,
        list(cfg.blocks),
        image_size=image_size,
        batch_norm=cfg.batch_norm,
        activation=cfg.activation,
        skip=cfg.skip,
        pool=cfg.pool,
    )
