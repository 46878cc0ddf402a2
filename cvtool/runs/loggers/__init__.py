"""Experiment trackers a run reports to (`train.loggers`): a registry of backends, each given
the flattened recipe, every epoch's metrics, the summary, the plots and (with
`train.log_checkpoints: best`) the best checkpoint and its .onnx export.

Only the lead process (rank 0) opens loggers. A backend that fails while training (a tracking
server going down) is reported once and dropped; training goes on.
"""

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


class Trackers:
    """Every logger of a run; a failing one warns once and is dropped."""

    def __init__(self, loggers: list[tuple[str, Logger]], context: LogContext,
                 warn: Callable[[str], None] | None = None) -> None:
        self.loggers = loggers
        self.context = context
        self.warn = warn or _warn

    def _each(self, method: str, *args: Any) -> None:
        for name, logger in list(self.loggers):
            try:
                getattr(logger, method)(*args)
            except Exception as exc:  # a tracker's failure never stops training
                self.loggers.remove((name, logger))
                self.warn(f"logger {name} failed ({_reason(exc)}); training goes on without it")

    def log_epoch(self, row: dict[str, float], history: list[dict[str, float]]) -> None:
        self._each("log_epoch", row, history)

    def finish(self, summary: dict[str, Any]) -> None:
        from cvtool.runs.loggers.artifacts import run_artifacts

        if self.loggers and summary:
            self._each("log_summary", summary, run_artifacts(self.context, self.warn))

    def close(self, error: BaseException | None = None) -> None:
        self._each("close", _status(error))


def open_loggers(recipe: Recipe, run_dir: Path, resumed: bool = False,
                 history: list[dict[str, float]] | None = None) -> Trackers:
    """The recipe's loggers for `run_dir`; a missing extra is a one-line error, a backend that
    cannot be reached is a warning (the run goes on without it)."""
    from cvtool.runs.loggers import files, hosted, mlflow_backend  # noqa: F401  (they register)

    context = LogContext(Path(run_dir), recipe, resumed, list(history or []))
    trackers = Trackers([], context)
    for name in dict.fromkeys(recipe.train.loggers):
        factory = LOGGERS.get(name)
        try:
            trackers.loggers.append((name, factory(context)))
        except MissingExtra:
            trackers.close(RuntimeError("missing extra"))
            raise
        except Exception as exc:
            trackers.warn(f"logger {name} could not start ({_reason(exc)}); training goes on without it")
    return trackers


def _status(error: BaseException | None) -> str:
    if error is None:
        return "FINISHED"
    stopped = type(error).__name__ in ("StopRequested", "KeyboardInterrupt", "TrialPruned")
    return "KILLED" if stopped else "FAILED"


def _reason(exc: BaseException) -> str:
    text = (str(exc).strip().splitlines() or [""])[0][:200]
    return f"{type(exc).__name__}: {text}" if text else type(exc).__name__


def _warn(message: str) -> None:
    from rich.console import Console

    Console(stderr=True, highlight=False).print(f"[yellow]cvtool: warning: {message}[/]", soft_wrap=True)
