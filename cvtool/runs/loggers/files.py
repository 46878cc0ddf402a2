"""The run directory's own records: metrics.csv and TensorBoard event files."""

from __future__ import annotations

from pathlib import Path
from typing import Any

from cvtool.fileio import write_csv
from cvtool.runs.layout import RunDir
from cvtool.runs.loggers.base import LOGGERS, LogContext, metric_values

FIXED_COLUMNS = ["epoch", "lr", "seconds", "train/loss", "val/loss"]


def columns(history: list[dict[str, float]]) -> list[str]:
    extra = sorted({k for row in history for k in row} - set(FIXED_COLUMNS),
                   key=lambda k: (not k.startswith("train/"), k))
    return FIXED_COLUMNS + extra


def _cell(value: Any) -> str:
    if value is None:
        return ""
    return repr(value) if isinstance(value, float) else str(value)


class CsvLogger:
    """metrics.csv, rewritten whole each epoch (columns may grow) and atomically."""

    def __init__(self, context: LogContext) -> None:
        self.path = RunDir(context.run_dir).metrics

    def log_epoch(self, row: dict[str, float], history: list[dict[str, float]]) -> None:
        names = columns(history)
        write_csv(self.path, names, [[_cell(r.get(c)) for c in names] for r in history])

    def log_summary(self, summary: dict[str, Any], artifacts: list[tuple[str, Path]]) -> None:
        """summary.json is already in the run dir."""

    def close(self, status: str) -> None:
        """Nothing held open."""


class TensorBoardLogger:
    """Event files in tensorboard/ when the `tensorboard` extra is installed (else nothing:
    it is on by default)."""

    def __init__(self, context: LogContext) -> None:
        try:
            from torch.utils.tensorboard import SummaryWriter
        except ImportError:
            self.writer = None
            return
        # a resumed run drops the events written after its last checkpoint
        purge = len(context.history) + 1 if context.resumed else None
        self.writer = SummaryWriter(log_dir=str(RunDir(context.run_dir).tensorboard), purge_step=purge)

    def log_epoch(self, row: dict[str, float], history: list[dict[str, float]]) -> None:
        if self.writer is None:
            return
        for key, value in metric_values(row).items():
            self.writer.add_scalar(key, value, int(row["epoch"]))
        self.writer.flush()

    def log_summary(self, summary: dict[str, Any], artifacts: list[tuple[str, Path]]) -> None:
        """TensorBoard keeps scalars only."""

    def close(self, status: str) -> None:
        if self.writer is not None:
            self.writer.close()


LOGGERS.add("csv", CsvLogger)
LOGGERS.add("tensorboard", TensorBoardLogger)
