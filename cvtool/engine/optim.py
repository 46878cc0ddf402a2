"""Optimizers and learning-rate schedules as data tables, plus warm-up and phases."""

from __future__ import annotations

from collections.abc import Callable, Iterable
from dataclasses import dataclass
from typing import Any

import torch

from cvtool.recipe.schema import OptimConfig, Phase, ScheduleConfig
from cvtool.recipe.training_config import patched


@dataclass(frozen=True)
class OptimInfo:
    name: str
    opt_class: type[torch.optim.Optimizer]
    kwargs: Callable[[OptimConfig], dict[str, Any]]


def _decay(cfg: OptimConfig) -> dict[str, Any]:
    """weight_decay only when the recipe sets it: unset keeps the optimizer's own default
    (torch: SGD 0, Adam 0, AdamW 0.01), so AdamW is not silently Adam."""
    return {} if cfg.weight_decay is None else {"weight_decay": cfg.weight_decay}


OPTIMIZERS: dict[str, OptimInfo] = {
    info.name: info
    for info in (
        OptimInfo("sgd", torch.optim.SGD, lambda c: {"lr": c.lr, "momentum": c.momentum, "nesterov": c.nesterov,
                                                     **_decay(c)}),
        OptimInfo("adam", torch.optim.Adam, lambda c: {"lr": c.lr, "betas": c.betas, "amsgrad": c.amsgrad,
                                                       **_decay(c)}),
        OptimInfo("adamw", torch.optim.AdamW, lambda c: {"lr": c.lr, "betas": c.betas, "amsgrad": c.amsgrad,
                                                         **_decay(c)}),
    )
}


def build_optimizer(params: Iterable[torch.nn.Parameter], cfg: OptimConfig) -> torch.optim.Optimizer:
    info = OPTIMIZERS[cfg.name]
    return info.opt_class(list(params), **info.kwargs(cfg))


def resolved_hyperparameters(cfg: OptimConfig) -> dict[str, Any]:
    """Every hyper-parameter the optimizer runs with, torch's defaults filled in (`recipe show`)."""
    import inspect

    info = OPTIMIZERS[cfg.name]
    defaults = {name: p.default for name, p in inspect.signature(info.opt_class).parameters.items()
                if p.default is not inspect.Parameter.empty}
    values = {**defaults, **info.kwargs(cfg)}
    keys = ["lr", "momentum", "nesterov", "betas", "amsgrad", "weight_decay"]
    return {key: values[key] for key in keys if key in values}


def optim_for_epoch(base: OptimConfig, phases: list[Phase], epoch: int) -> OptimConfig:
    """The optimizer settings in force at a 1-based epoch (phases applied in order)."""
    cfg = base
    for phase in phases:
        if phase.epoch <= epoch:
            cfg = patched(cfg, phase.optim)  # a switch of name drops what the new optimizer lacks
    return cfg


def phase_start(phases: list[Phase], epoch: int) -> int:
    """The 1-based epoch at which the phase in force at `epoch` began (1 without phases)."""
    return max([1, *(p.epoch for p in phases if p.epoch <= epoch)])


def retune(optimizer: torch.optim.Optimizer, cfg: OptimConfig) -> None:
    """Apply new hyper-parameters of the same optimizer in place (its state is kept)."""
    for group in optimizer.param_groups:
        group.update(OPTIMIZERS[cfg.name].kwargs(cfg))
        group["initial_lr"] = cfg.lr


@dataclass(frozen=True)
class ScheduleInfo:
    name: str
    per_step: bool  # stepped after every batch instead of every epoch
    build: Callable[[torch.optim.Optimizer, ScheduleConfig, int, int, float], Any]


def _one(_: int) -> float:
    return 1.0


SCHEDULES: dict[str, ScheduleInfo] = {
    info.name: info
    for info in (
        ScheduleInfo("none", False, lambda o, c, e, s, lr: torch.optim.lr_scheduler.LambdaLR(o, _one)),
        ScheduleInfo("cosine", False, lambda o, c, e, s, lr: torch.optim.lr_scheduler.CosineAnnealingLR(
            o, T_max=c.T_max or max(1, e), eta_min=c.eta_min)),
        ScheduleInfo("multistep", False, lambda o, c, e, s, lr: torch.optim.lr_scheduler.MultiStepLR(
            o, milestones=list(c.milestones), gamma=c.gamma)),
        ScheduleInfo("step", False, lambda o, c, e, s, lr: torch.optim.lr_scheduler.StepLR(
            o, step_size=c.step_size, gamma=c.gamma)),
        ScheduleInfo("exponential", False, lambda o, c, e, s, lr: torch.optim.lr_scheduler.ExponentialLR(o, gamma=c.gamma)),
        ScheduleInfo("plateau", False, lambda o, c, e, s, lr: torch.optim.lr_scheduler.ReduceLROnPlateau(
            o, mode=c.mode or "max", factor=c.factor, patience=c.patience)),
        ScheduleInfo("onecycle", True, lambda o, c, e, s, lr: torch.optim.lr_scheduler.OneCycleLR(
            o, max_lr=c.max_lr or lr, epochs=max(1, e), steps_per_epoch=max(1, s), pct_start=c.pct_start)),
    )
}


class Schedule:
    """A torch scheduler with an optional linear warm-up in front, stepped per epoch
    (or per batch for onecycle). Plateau steps on the monitored metric."""

    def __init__(self, optimizer: torch.optim.Optimizer, cfg: ScheduleConfig, epochs: int,
                 steps_per_epoch: int, monitor_mode: str) -> None:
        if cfg.name == "plateau" and cfg.mode is None:
            cfg = cfg.model_copy(update={"mode": monitor_mode})
        self.info = SCHEDULES[cfg.name]
        self.optimizer = optimizer
        self.warmup = cfg.warmup_epochs
        self.base_lrs = [g["lr"] for g in optimizer.param_groups]
        self.epoch = 0  # epochs stepped so far
        main_epochs = max(1, epochs - self.warmup)
        self.scheduler = self.info.build(optimizer, cfg, main_epochs, steps_per_epoch, self.base_lrs[0])
        self._apply_warmup()

    def _apply_warmup(self) -> None:
        if self.epoch < self.warmup:
            factor = (self.epoch + 1) / (self.warmup + 1)
            for group, base in zip(self.optimizer.param_groups, self.base_lrs, strict=True):
                group["lr"] = base * factor
        elif self.warmup and self.epoch == self.warmup:
            for group, base in zip(self.optimizer.param_groups, self.base_lrs, strict=True):
                group["lr"] = base

    def step_batch(self) -> None:
        if self.info.per_step and self.epoch >= self.warmup:
            self.scheduler.step()

    def step_epoch(self, metric: float | None) -> None:
        in_warmup = self.epoch < self.warmup
        self.epoch += 1
        if in_warmup:
            self._apply_warmup()
            return
        if self.info.per_step:
            return
        if self.info.name == "plateau":
            if metric is not None:
                self.scheduler.step(metric)
        else:
            self.scheduler.step()

    def state_dict(self) -> dict[str, Any]:
        return {"epoch": self.epoch, "base_lrs": self.base_lrs, "scheduler": self.scheduler.state_dict()}

    def load_state_dict(self, state: dict[str, Any]) -> None:
        self.epoch = int(state["epoch"])
        self.base_lrs = list(state["base_lrs"])
        self.scheduler.load_state_dict(state["scheduler"])


def current_lr(optimizer: torch.optim.Optimizer) -> float:
    return float(optimizer.param_groups[0]["lr"])
