"""What a run reports while it trains: each epoch's row to its loggers (metrics.csv,
TensorBoard, trackers: `cvtool/runs/loggers/`), a console row per epoch and a progress bar per
epoch (none with --quiet)."""

from __future__ import annotations

from typing import Any, Protocol

from rich.console import Console
from rich.progress import BarColumn, MofNCompleteColumn, Progress, TextColumn, TimeRemainingColumn


class EpochLoggers(Protocol):
    """What a run reports to (`cvtool.runs.loggers.Trackers`)."""

    def log_epoch(self, row: dict[str, float], history: list[dict[str, float]]) -> None: ...

    def close(self, error: BaseException | None = None) -> None: ...


class RunLog:
    def __init__(self, quiet: bool, console: Console | None = None, loggers: EpochLoggers | None = None) -> None:
        self.quiet = quiet
        self.console = console or Console(highlight=False)
        self.loggers = loggers

    def add(self, row: dict[str, float], monitor: str, is_best: bool, history: list[dict[str, float]],
            weights: str | None = None) -> None:
        """Report an epoch's row; `history` is the run's (TrainState's), this row included;
        `weights`: with EMA, which weights the epoch kept (its val/ metrics are theirs)."""
        if self.loggers is not None:
            self.loggers.log_epoch(row, history)
        self._print_row(row, monitor, is_best, weights)

    def _print_row(self, row: dict[str, float], monitor: str, is_best: bool, weights: str | None = None) -> None:
        shown = ["train/loss", "val/loss", monitor]
        cells = [f"epoch {int(row['epoch']):>3}", f"lr {row['lr']:.2e}", f"{row['seconds']:.1f}s"]
        cells += [f"{k} {row[k]:.4f}" for k in dict.fromkeys(shown) if k in row]
        if weights is not None:
            cells.append(f"({weights} weights)")
        text = "  ".join(cells) + ("  *best*" if is_best else "")
        if self.quiet:
            print(text, flush=True)
        else:
            self.console.print(text.replace("*best*", "[bold green]best[/]"), soft_wrap=True)

    def progress(self, epoch: int, epochs: int, batches: int) -> EpochProgress | None:
        # not a terminal: a transient bar can't be erased and would leave an empty line per epoch
        return None if self.quiet or not self.console.is_terminal else EpochProgress(self.console, epoch, epochs, batches)

    def close(self, error: BaseException | None = None) -> None:
        if self.loggers is not None:
            self.loggers.close(error)


class EpochProgress:
    """A rich bar: batches, running loss, images/s, ETA."""

    def __init__(self, console: Console, epoch: int, epochs: int, batches: int) -> None:
        self.bar = Progress(
            TextColumn(f"epoch {epoch}/{epochs}"), BarColumn(), MofNCompleteColumn(),
            TextColumn("loss {task.fields[loss]:.4f}"), TextColumn("{task.fields[ips]:.0f} img/s"),
            TimeRemainingColumn(), console=console, transient=True,
        )
        self.task = self.bar.add_task("train", total=batches, loss=float("nan"), ips=0.0)

    def track(self, loader: Any) -> Any:
        with self.bar:
            yield from loader

    def update(self, loss: float | None, images: int, seconds: float) -> None:
        """loss None: keep the last shown value (on CUDA the loss is read only every few steps)."""
        fields = {} if loss is None else {"loss": loss}
        self.bar.update(self.task, advance=1, ips=images / max(seconds, 1e-9), **fields)
