"""Experiment trackers a run reports to (`train.loggers`): a registry of backends, each given
the flattened recipe, every epoch's metrics, the summary, the plots and (with
`train.log_checkpoints: best`) the best checkpoint and its .onnx export.

Only the lead process (rank 0) opens loggers. A backend that fails while training (a tracking
server going down) is reported once and dropped; training goes on.
"""

from __future__ import annotations

from collections.abc import Callable
from pathlib import Path
from typing import Any

from cvtool.recipe.schema import Recipe
from cvtool.runs.loggers.base import LOGGERS, LogContext, Logger, MissingExtra, flat_params

__all__ = ["LOGGERS", "LogContext", "Logger", "Trackers", "flat_params", "open_loggers"]


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
