"""An exponential moving average of the weights (`train.ema`), with torch's own
`AveragedModel` + `get_ema_multi_avg_fn`; `use_buffers=True` averages BatchNorm's running
statistics too, so the averaged model is evaluated as it is (no BatchNorm re-estimation).

Validation, the best checkpoint, test metrics and everything that loads a checkpoint use the
average; the raw weights stay in the checkpoint for resuming.
"""

from __future__ import annotations

from typing import Any

import torch

from cvtool.recipe.schema import EmaConfig


class WeightEMA:
    def __init__(self, model: torch.nn.Module, cfg: EmaConfig) -> None:
        from torch.optim.swa_utils import AveragedModel, get_ema_multi_avg_fn

        self.cfg = cfg
        self.averaged = AveragedModel(model, multi_avg_fn=get_ema_multi_avg_fn(cfg.decay), use_buffers=True)
        self.steps = 0  # optimizer steps seen

    @property
    def module(self) -> torch.nn.Module:
        return self.averaged.module

    @torch.no_grad()
    def update(self, model: torch.nn.Module, epoch: int) -> None:
        """After an optimizer step of `model` (the unwrapped module) in `epoch` (1-based)."""
        self.steps += 1
        if epoch <= self.cfg.warmup_epochs:
            self.averaged.n_averaged.zero_()  # follow the raw weights: the next update copies them
        elif self.steps % self.cfg.every:
            return
        self.averaged.update_parameters(model)

    def state_dict(self) -> dict[str, Any]:
        return {"steps": self.steps, "n_averaged": int(self.averaged.n_averaged)}

    def load(self, weights: dict[str, torch.Tensor], state: dict[str, Any]) -> None:
        self.module.load_state_dict(weights)
        self.steps = int(state["steps"])
        self.averaged.n_averaged.fill_(int(state["n_averaged"]))
