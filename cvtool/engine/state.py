"""The live state of a training run: what is built once (Session) and what changes per epoch (TrainState)."""

from __future__ import annotations

import dataclasses
import math
from dataclasses import dataclass, field
from typing import Any

import torch

from cvtool.data.pipeline import DataBundle
from cvtool.engine.loop import Stepper
from cvtool.model_card import ModelMeta
from cvtool.recipe.schema import Recipe
from cvtool.tasks import Task


@dataclass
class TrainState:
    epoch: int = 0  # last completed epoch
    best_value: float | None = None
    best_epoch: int = 0
    bad_epochs: int = 0
    history: list[dict[str, float]] = field(default_factory=list)

    def improved(self, value: float, higher: bool, min_delta: float = 0.0,
                 tiebreak: tuple[str, float, bool] | None = None) -> bool:
        """Is `value` a new best? A tie with the best goes to `tiebreak` (key, value, higher is
        better), e.g. val/loss: with val AUC at 1.0 from epoch 1 the first epoch is not best forever."""
        if self.best_value is None or not math.isfinite(self.best_value):
            return True  # the first epoch is the best so far, even with an undefined metric
        if not math.isfinite(value):
            return False
        if value == self.best_value and tiebreak is not None:
            key, current, tie_higher = tiebreak
            best = next((r.get(key) for r in self.history if r.get("epoch") == self.best_epoch), None)
            if not math.isfinite(current):
                return False
            return best is None or not math.isfinite(best) or (current > best if tie_higher else current < best)
        return value > self.best_value + min_delta if higher else value < self.best_value - min_delta


@dataclass
class Session:
    """The live objects of one run (model, data, optimisation), built once."""

    recipe: Recipe
    task: Task
    bundle: DataBundle
    meta: ModelMeta
    device: torch.device
    step: Stepper
    monitor: str
    dist: Any = None  # cvtool.engine.distributed.Dist when launched with torchrun
    ema: Any = None  # cvtool.engine.ema.WeightEMA with train.ema

    def evaluated(self) -> Session:
        """The session whose model validation and checkpoints use: the EMA weights when on."""
        if self.ema is None:
            return self
        return dataclasses.replace(self, step=dataclasses.replace(self.step, model=self.ema.module))


def unwrap(model: torch.nn.Module) -> torch.nn.Module:
    """The plain module under torch.compile and DDP wrappers (what checkpoints hold)."""
    model = getattr(model, "_orig_mod", model)
    return getattr(model, "module", model)
