"""Optimizers as a data table, and the optimizer settings of each phase (schedules: schedule.py)."""

from __future__ import annotations

from collections.abc import Callable, Iterable
from dataclasses import dataclass
from typing import Any

import torch

from cvtool.recipe.schema import OptimConfig, Phase
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
