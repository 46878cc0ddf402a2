"""What changes per epoch of a training run (TrainState)."""

from __future__ import annotations

import math
from dataclasses import dataclass, field
from typing import Any


@dataclass
class TrainState:
    """The run's progress: the one epoch history (metrics.csv's rows), the best epoch so far and
    early stopping's count."""

    epoch: int = 0  # last completed epoch
    best_value: float | None = None
    best_epoch: int = 0
    bad_epochs: int = 0
    history: list[dict[str, float]] = field(default_factory=list)
    # with train.ema: the weights the last epoch kept ("ema" or "raw", the better on validation), and the best's
    weights: str | None = None
    best_weights: str | None = None

    def improved(self, value: float, higher: bool, min_delta: float = 0.0,
                 tiebreak: tuple[str, float, bool] | None = None,
                 fallback: tuple[str, float, bool] | None = None) -> bool:
        """Is `value` a new best? A tie with the best goes to `tiebreak` (key, value, higher is
        better), e.g. val/loss: with val AUC at 1.0 from epoch 1 the first epoch is not best forever.
        An undefined value (NaN: AUC on a val split of one class) never beats a defined one; between
        two undefined ones `tiebreak`, else `fallback`, decides."""
        if self.best_value is None:
            return True  # the first epoch is the best so far, even with an undefined metric
        if not (math.isfinite(value) and math.isfinite(self.best_value)):
            if math.isfinite(value) != math.isfinite(self.best_value):
                return math.isfinite(value)
            return self._beats_best(tiebreak or fallback)
        if value == self.best_value and tiebreak is not None:
            return self._beats_best(tiebreak)
        return value > self.best_value + min_delta if higher else value < self.best_value - min_delta

    def _beats_best(self, other: tuple[str, float, bool] | None) -> bool:
        """Whether `other` (key, value, higher is better) beats the best epoch's value of that key."""
        if other is None:
            return False
        key, current, higher = other
        if not math.isfinite(current):
            return False
        best = next((r.get(key) for r in self.history if r.get("epoch") == self.best_epoch), None)
        return best is None or not math.isfinite(best) or (current > best if higher else current < best)

    def to_dict(self) -> dict[str, Any]:
        return {"best_value": self.best_value, "best_epoch": self.best_epoch, "bad_epochs": self.bad_epochs,
                "history": self.history, "weights": self.weights, "best_weights": self.best_weights}

    @classmethod
    def from_checkpoint(cls, payload: dict[str, Any] | None) -> TrainState:
        if payload is None:
            return cls()
        saved = payload["train_state"]
        return cls(int(payload["epoch"]), saved["best_value"], int(saved["best_epoch"]), int(saved["bad_epochs"]),
                   list(saved["history"]), saved.get("weights", payload.get("weights")), saved.get("best_weights"))
