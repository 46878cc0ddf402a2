"""Learning-rate schedules, stepped once per optimizer update (as timm, torchvision's references
and Ultralytics do): a 1-epoch warm-up over 50 updates is a ramp of 50 values, not one jump.

Every schedule but plateau and onecycle is a pure function of the update count (`lr_at`), so a
resumed run continues the curve exactly from the saved count. Plateau decides once per epoch
on the monitored metric (torch's `ReduceLROnPlateau` rule, re-stated here so that it composes
with the warm-up); onecycle is torch's `OneCycleLR`, which also cycles the momentum.
"""

from __future__ import annotations

import bisect
import math
from dataclasses import dataclass
from typing import Any

import torch

from cvtool.errors import CvtoolError

# every schedule.name, and how its lr moves (tests/test_registries.py keeps it equal to the schema's names)
SCHEDULES = {
    "none": "constant",
    "cosine": "cosine from optim.lr down to eta_min at the last update (T_max epochs)",
    "step": "times gamma every step_size epochs",
    "multistep": "times gamma at each of the milestones (epochs)",
    "exponential": "times gamma every epoch",
    "plateau": "times factor once the monitor has not improved for more than patience epochs",
    "onecycle": "torch's OneCycleLR: up to max_lr over pct_start of the run, then down (momentum cycled)",
}

# torch.optim.lr_scheduler.ReduceLROnPlateau's defaults, which cvtool has always used
PLATEAU_THRESHOLD = 1e-4  # relative improvement that counts as better
PLATEAU_EPS = 1e-8  # a reduction smaller than this is skipped


@dataclass(frozen=True)
class Span:
    """Where a schedule runs: `epochs` epochs of `steps` optimizer updates, the first
    `warmup_epochs` of them a linear ramp up to the optimizer's lr."""

    epochs: int
    steps: int
    warmup_epochs: int = 0

    @property
    def warmup(self) -> int:
        return self.warmup_epochs * self.steps

    @property
    def total(self) -> int:
        return self.epochs * self.steps


def warmup_factor(update: int, warmup: int) -> float:
    """Update u of W warm-up updates runs at (u + 1) / (W + 1) of the lr: rising, never 0, and the
    first update after the warm-up is the first at the full lr."""
    return (update + 1) / (warmup + 1)


def main_lr(cfg: Any, base: float, update: int, span: Span) -> float:
    """The lr of update `update` (0-based, counted from the end of the warm-up) of a schedule
    with starting lr `base`. Epoch-wise schedules (step, multistep, exponential) change at
    epoch boundaries, counted from the end of the warm-up, like torch's schedulers stepped per
    epoch after it."""
    name = cfg.name
    epoch = update // span.steps
    if name == "cosine":
        # the closed form of torch's CosineAnnealingLR over updates; T_max in epochs
        length = (cfg.T_max * span.steps if cfg.T_max else span.total - span.warmup) - 1
        return cfg.eta_min + (base - cfg.eta_min) * (1 + math.cos(math.pi * update / max(length, 1))) / 2
    if name == "step":
        return base * cfg.gamma ** (epoch // cfg.step_size)
    if name == "multistep":
        return base * cfg.gamma ** bisect.bisect_right(sorted(cfg.milestones), epoch)
    if name == "exponential":
        return base * cfg.gamma**epoch
    return base  # none, plateau (its reductions are applied on top)


class LrSchedule:
    """Sets the optimizer's lr before every update: `step()` after each optimizer update,
    `step_epoch(metric)` after each epoch (only plateau listens)."""

    def __init__(self, optimizer: torch.optim.Optimizer, cfg: Any, span: Span, monitor_mode: str) -> None:
        self.optimizer, self.cfg, self.span = optimizer, cfg, span
        self.base_lrs = [float(group["lr"]) for group in optimizer.param_groups]
        self.update = 0  # optimizer updates done
        self.mode = getattr(cfg, "mode", None) or monitor_mode
        self.reduction = 1.0  # plateau: the product of its reductions so far
        self.best: float | None = None
        self.bad_epochs = 0
        self.cycle = None
        if cfg.name == "onecycle":
            self.cycle = torch.optim.lr_scheduler.OneCycleLR(
                optimizer, max_lr=cfg.max_lr or self.base_lrs[0], total_steps=max(1, span.total),
                pct_start=cfg.pct_start)
        self._apply()

    def lr_at(self, update: int, base: float) -> float:
        """The lr of update `update` (0-based) of this schedule, for a group starting at `base`."""
        if update < self.span.warmup:
            return base * warmup_factor(update, self.span.warmup)
        return main_lr(self.cfg, base, update - self.span.warmup, self.span) * self.reduction

    def _apply(self) -> None:
        if self.cycle is not None:
            return  # OneCycleLR sets lr (and momentum) itself
        for group, base in zip(self.optimizer.param_groups, self.base_lrs, strict=True):
            group["lr"] = self.lr_at(self.update, base)

    def step(self) -> None:
        """After an optimizer update: the lr of the next one."""
        self.update += 1
        if self.cycle is not None:
            if self.update < self.span.total:  # OneCycleLR refuses a step past its total
                self.cycle.step()
            return
        self._apply()

    def step_epoch(self, metric: float | None) -> None:
        """plateau, after the warm-up: reduce the lr by `factor` once the metric has not improved
        for more than `patience` epochs."""
        if self.cfg.name != "plateau" or metric is None or self.update <= self.span.warmup:
            return
        if self.best is None or self._better(metric, self.best):
            self.best, self.bad_epochs = metric, 0
        else:
            self.bad_epochs += 1
        if self.bad_epochs > self.cfg.patience:
            lowered = self.reduction * self.cfg.factor
            if all(base * (self.reduction - lowered) > PLATEAU_EPS for base in self.base_lrs):
                self.reduction = lowered
            self.bad_epochs = 0
            self._apply()

    def _better(self, value: float, best: float) -> bool:
        """torch's rule (threshold_mode rel): NaN is never better."""
        if self.mode == "min":
            return value < best * (1 - PLATEAU_THRESHOLD)
        return value > best * (1 + PLATEAU_THRESHOLD)

    def state_dict(self) -> dict[str, Any]:
        return {"update": self.update, "span": [self.span.epochs, self.span.steps, self.span.warmup_epochs],
                "base_lrs": self.base_lrs, "reduction": self.reduction, "best": self.best,
                "bad_epochs": self.bad_epochs, "cycle": self.cycle.state_dict() if self.cycle is not None else None}

    def load_state_dict(self, state: dict[str, Any]) -> None:
        if "update" not in state:
            raise CvtoolError("the checkpoint's schedule state is from an older cvtool (per-epoch schedules); "
                              "start the run again")
        # the span the curve was planned over (an --extend restarts it over the added epochs)
        self.span = Span(*(int(v) for v in state["span"]))
        self.update, self.base_lrs = int(state["update"]), [float(b) for b in state["base_lrs"]]
        self.reduction, self.best, self.bad_epochs = float(state["reduction"]), state["best"], int(state["bad_epochs"])
        if self.cycle is not None:
            self.cycle.load_state_dict(state["cycle"])
            return
        self._apply()


def current_lr(optimizer: torch.optim.Optimizer) -> float:
    return float(optimizer.param_groups[0]["lr"])
