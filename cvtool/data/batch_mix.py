"""MixUp and CutMix on whole training batches (`augment_batch:`), through torchvision's own
`v2.MixUp` / `v2.CutMix`.

They run on the normalized batch on the training device: both mix images linearly (MixUp) or
paste a box of the rolled batch (CutMix), which commutes with the per-channel affine
normalization, so the result equals mixing the uint8 images first.

v2 mixes one-hot class labels. Asking it to mix the labels 0..N-1 of the batch itself with
`num_classes=N` returns the N x N mixing matrix (row i: lambda at i, 1 - lambda at the rolled
partner), which then mixes any dense targets: one-hot classes, a binary label, multi-hot tags.
Multilabel gets exactly torchvision's draws that way, with no copy of its code.

Each batch is seeded from (seed, epoch, batch, rank): a resumed run repeats an uninterrupted one,
and the global generator is left as it was.
"""

from __future__ import annotations

from collections.abc import Sequence
from typing import Any

import numpy as np
import torch


class BatchMixer:
    """Per batch: pick one of the configured mixers (each with its chance `p`) or none."""

    def __init__(self, specs: Sequence[dict[str, Any]], seed: int, dense_targets: Any, num_outputs: int,
                 rank: int = 0) -> None:
        from torchvision.transforms import v2

        entries = [(name, args) for spec in specs for name, args in spec.items()]
        given = sum(args.p for _, args in entries if args.p is not None)
        unset = [args for _, args in entries if args.p is None]
        share = (1.0 - given) / len(unset) if unset else 0.0
        self.names = [name for name, _ in entries]
        self.chances = np.asarray([args.p if args.p is not None else share for _, args in entries], np.float64)
        self.alphas = [float(args.alpha) for _, args in entries]
        self.classes = {"MixUp": v2.MixUp, "CutMix": v2.CutMix}
        self.seed, self.rank = seed, rank
        self.dense_targets, self.num_outputs = dense_targets, num_outputs
        self._built: dict[tuple[int, int], Any] = {}  # (mixer, batch size) -> v2 transform, built once

    def batch_seed(self, epoch: int, batch: int) -> int:
        return (self.seed * 1_000_003 + epoch * 10_007 + batch * 101 + self.rank) % (2**63)

    def choose(self, epoch: int, batch: int) -> int | None:
        """Index of the mixer this batch uses, or None (no mixing)."""
        u = np.random.default_rng(self.batch_seed(epoch, batch)).random()
        edges = np.cumsum(self.chances)
        picked = int(np.searchsorted(edges, u, side="right"))
        return picked if picked < len(self.names) else None

    def __call__(self, images: torch.Tensor, targets: torch.Tensor, epoch: int,
                 batch: int) -> tuple[torch.Tensor, torch.Tensor, str | None]:
        """(mixed images, mixed dense targets, mixer name or None) for one batch."""
        dense = self.dense_targets(targets, self.num_outputs).to(images.device)
        picked = self.choose(epoch, batch)
        count = images.shape[0]
        if picked is None or count < 2:
            return images, dense, None
        mixer = self._built.get((picked, count))
        if mixer is None:
            mixer = self._built[(picked, count)] = self.classes[self.names[picked]](
                alpha=self.alphas[picked], num_classes=count)
        # v2 draws lambda and the box from the global CPU generator: seed that one alone and restore it
        # after. torch.manual_seed would also reseed every CUDA generator (fork_rng(devices=[]) does not
        # restore those), changing dropout's draws on the device and queueing a seeding call per batch.
        with torch.random.fork_rng(devices=[]):
            torch.default_generator.manual_seed(self.batch_seed(epoch, batch))
            mixed, matrix = mixer(images, torch.arange(count, device=images.device))
        return mixed, matrix.to(dense.dtype) @ dense, self.names[picked]


def build_mixer(specs: Sequence[dict[str, Any]], seed: int, task: Any, num_outputs: int,
                rank: int = 0) -> BatchMixer | None:
    """The recipe's `augment_batch` for a task, or None when it is empty."""
    return BatchMixer(specs, seed, task.dense_targets, num_outputs, rank) if specs else None
