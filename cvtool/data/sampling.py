"""Class-balanced sampling (`data.sampler: balanced | sqrt_balanced`).

Each epoch draws as many samples as the training split holds, with replacement, each sample
weighted by 1 / n (balanced: every class equally often) or 1 / sqrt(n) (sqrt_balanced: the
milder correction of Mahajan et al., 2018) of its class n. The draw is seeded by (seed, epoch)
and sharded over ranks like `EpochSampler`, so a resumed or distributed run draws the same.
"""

from __future__ import annotations

from typing import Any

import numpy as np
import torch

from cvtool.data.loaders import EpochSampler

POWERS = {"balanced": 1.0, "sqrt_balanced": 0.5}


def sample_weights(groups: np.ndarray, mode: str) -> np.ndarray:
    """Per-sample weights: 1 / count(group) ** power."""
    counts = np.bincount(groups)
    return 1.0 / counts[groups].astype(np.float64) ** POWERS[mode]


class BalancedSampler(EpochSampler):
    """(epoch, index) pairs drawn with replacement by class weight, then sharded."""

    def __init__(self, groups: np.ndarray, mode: str, seed: int, rank: int = 0, world_size: int = 1) -> None:
        super().__init__(len(groups), seed, True, rank, world_size)
        self.groups = np.asarray(groups, np.int64)
        self.weights = torch.from_numpy(sample_weights(self.groups, mode))

    def drawn(self) -> list[int]:
        """The whole epoch's draw, before sharding (identical on every rank)."""
        gen = torch.Generator().manual_seed(self.seed * 100_003 + self.epoch)
        return torch.multinomial(self.weights, self.size, replacement=True, generator=gen).tolist()

    def indices(self) -> list[int]:
        order = self.drawn()
        if self.world_size > 1:
            total = -(-self.size // self.world_size) * self.world_size
            order += order[: total - len(order)]
        return order[self.rank :: self.world_size]

    def group_counts(self, groups: int) -> list[int]:
        """How many drawn samples of each group this epoch holds (all ranks together)."""
        return np.bincount(self.groups[self.drawn()], minlength=groups).tolist()


def train_sampler(mode: str, task: Any, size: int, targets: np.ndarray | None, num_outputs: int, seed: int,
                  rank: int = 0, world_size: int = 1) -> EpochSampler:
    """The training order `data.sampler` asks for: a permutation per epoch, or balanced draws."""
    if mode == "uniform" or targets is None:
        return EpochSampler(size, seed, True, rank, world_size)
    return BalancedSampler(task.sampling_groups(targets, num_outputs), mode, seed, rank, world_size)
