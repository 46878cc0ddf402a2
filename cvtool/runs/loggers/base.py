"""What every tracker backend shares: the context it opens with, the protocol it follows, the
registry it is found in, and the flattening of recipes and summaries into params and metrics."""

from __future__ import annotations

import json
from collections.abc import Callable
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Protocol

from cvtool.errors import CvtoolError
from cvtool.recipe.schema import Recipe
from cvtool.registry import Registry


@dataclass(frozen=True)
class LogContext:
    """What a backend is opened with."""

    run_dir: Path
    recipe: Recipe
    resumed: bool
    history: list[dict[str, float]] = field(default_factory=list)

    @property
    def params(self) -> dict[str, Any]:
        return flat_params(self.recipe.model_dump(mode="json"))


class Logger(Protocol):
    def log_epoch(self, row: dict[str, float], history: list[dict[str, float]]) -> None: ...

    def log_summary(self, summary: dict[str, Any], artifacts: list[tuple[str, Path]]) -> None: ...

    def close(self, status: str) -> None: ...


LOGGERS: Registry[Callable[[LogContext], Logger]] = Registry("logger")


class MissingExtra(CvtoolError):
    pass


def need(module: str, logger: str, extra: str) -> Any:
    """Import an optional backend, or one line naming the extra that installs it."""
    import importlib

    try:
        return importlib.import_module(module)
    except ImportError:
        raise MissingExtra(f"train.loggers: {logger} needs the '{extra}' extra "
                           f"(pip install 'cvtool[{extra}]')") from None


def flat_params(data: Any, prefix: str = "") -> dict[str, Any]:
    """{'optim': {'lr': 0.1}} -> {'optim.lr': 0.1}; lists and null as JSON text."""
    if not isinstance(data, dict):
        if isinstance(data, (list, tuple)) or data is None:
            data = json.dumps(data, separators=(",", ":"))
        return {prefix: data}
    flat: dict[str, Any] = {}
    for key, value in data.items():
        flat.update(flat_params(value, f"{prefix}.{key}" if prefix else str(key)))
    return flat


def metric_values(row: dict[str, float]) -> dict[str, float]:
    """An epoch row as metrics: everything but the epoch itself (that is the step)."""
    return {key: float(value) for key, value in row.items() if key != "epoch"}


def summary_values(summary: dict[str, Any]) -> dict[str, float]:
    """The summary's numbers, flattened: best_value, val.accuracy, test.accuracy, ..."""
    flat = flat_params(summary)
    return {f"summary.{k}": float(v) for k, v in flat.items()
            if isinstance(v, (int, float)) and not isinstance(v, bool)}
