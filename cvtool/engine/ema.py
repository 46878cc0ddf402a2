"""An exponential moving average of the weights (`train.ema`), BatchNorm's running statistics
included, so the averaged model is evaluated as it is (no BatchNorm re-estimation).

One `torch._foreach_lerp_` per update over every floating-point tensor, as timm's `ModelEmaV3`
and torch's `get_ema_multi_avg_fn` do; the decay is a Python number, so an update never waits
for the device (torch's `AveragedModel` reads its `n_averaged` tensor on every update).

The decay ramps up (`ramp`, timm's `ModelEmaV3` warm-up with power 2/3; Ultralytics ramps with
`decay * (1 - exp(-n / 2000))`): the n-th averaged update uses min(decay, 1 - (1 + n)^(-2/3)),
0.37 at the first, 0.80 at the 10th, 0.95 at the 100th, 0.99 at the 1000th. Without it a decay of
0.9998 still gives the copied starting weights 82 % of the average after 1000 updates.
Each epoch validates both the average and the raw weights and keeps the better (runs/train.py).
"""

from __future__ import annotations

import copy
from typing import Any

import torch

from cvtool.recipe.schema import EmaConfig


class WeightEMA:
    def __init__(self, model: torch.nn.Module, cfg: EmaConfig) -> None:
        self.cfg = cfg
        self.module = copy.deepcopy(model).eval().requires_grad_(False)
        self.steps = 0  # optimizer updates seen
        self.averaged = 0  # updates averaged in (0: the next update copies the weights)

    def _tensors(self, model: torch.nn.Module) -> list[torch.Tensor]:
        return [t.detach() for t in (*model.parameters(), *model.buffers())]

    @torch.no_grad()
    def update(self, model: torch.nn.Module, epoch: int) -> None:
        """After an optimizer update of `model` (the unwrapped module) in `epoch` (1-based)."""
        self.steps += 1
        if epoch <= self.cfg.warmup_epochs:
            self.averaged = 0  # follow the raw weights: the next update copies them
        elif self.steps % self.cfg.every:
            return
        weight = 1.0 - self.decay()
        averaged, current = self._tensors(self.module), self._tensors(model)
        floats = [i for i, t in enumerate(averaged) if t.is_floating_point()]
        torch._foreach_lerp_([averaged[i] for i in floats], [current[i] for i in floats], weight)
        for i in set(range(len(averaged))) - set(floats):  # e.g. num_batches_tracked
            averaged[i].copy_(current[i])
        self.averaged += 1

    def decay(self) -> float:
        """The decay of the next averaged update (0 for the first: it copies the weights)."""
        if self.averaged == 0:
            return 0.0
        if not self.cfg.ramp:
            return self.cfg.decay
        return min(self.cfg.decay, 1.0 - (1.0 + self.averaged) ** (-2.0 / 3.0))

    def state_dict(self) -> dict[str, Any]:
        return {"steps": self.steps, "n_averaged": self.averaged}

    def load(self, weights: dict[str, torch.Tensor], state: dict[str, Any]) -> None:
        self.module.load_state_dict(weights)
        self.steps = int(state["steps"])
        self.averaged = int(state["n_averaged"])
