"""What a run reports while it trains: metrics.csv, TensorBoard events, a console row per
epoch and a progress bar per epoch (none with --quiet)."""

from __future__ import annotations

from pathlib import Path
from typing import Any

from rich.console import Console
from rich.progress import BarColumn, MofNCompleteColumn, Progress, TextColumn, TimeRemainingColumn

from cvtool.fileio import write_csv

FIXED_COLUMNS = ["epoch", "lr", "seconds", "train/loss", "val/loss"]


class RunLog:
    """`metrics_csv` and `tensorboard` come from the run's layout (None: write no files)."""

    def __init__(self, metrics_csv: Path | None, quiet: bool, console: Console | None = None,
                 history: list[dict[str, float]] | None = None, *, tensorboard: Path | None = None) -> None:
        self.metrics_csv = metrics_csv
        self.quiet = quiet
        self.console = console or Console(highlight=False)
        self.history: list[dict[str, float]] = list(history or [])
        self.writer = _tensorboard(tensorboard) if tensorboard is not None else None

    def columns(self) -> list[str]:
        extra = sorted({k for row in self.history for k in row} - set(FIXED_COLUMNS),
                       key=lambda k: (not k.startswith("train/"), k))
        return FIXED_COLUMNS + extra

    def add(self, row: dict[str, float], monitor: str, is_best: bool) -> None:
        self.history.append(row)
        if self.metrics_csv is not None:
            columns = self.columns()
            write_csv(self.metrics_csv, columns,
                      [[_cell(r.get(c)) for c in columns] for r in self.history])
        if self.writer is not None:
            for key, value in row.items():
                if key != "epoch":
                    self.writer.add_scalar(key, value, int(row["epoch"]))
            self.writer.flush()
        self._print_row(row, monitor, is_best)

    def _print_row(self, row: dict[str, float], monitor: str, is_best: bool) -> None:
        shown = ["train/loss", "val/loss", monitor]
        cells = [f"epoch {int(row['epoch']):>3}", f"lr {row['lr']:.2e}", f"{row['seconds']:.1f}s"]
        cells += [f"{k} {row[k]:.4f}" for k in dict.fromkeys(shown) if k in row]
        text = "  ".join(cells) + ("  *best*" if is_best else "")
        if self.quiet:
            print(text, flush=True)
        else:
            self.console.print(text.replace("*best*", "[bold green]best[/]"), soft_wrap=True)

    def progress(self, epoch: int, epochs: int, batches: int) -> EpochProgress | None:
        # not a terminal: a transient bar can't be erased and would leave an empty line per epoch
        return None if self.quiet or not self.console.is_terminal else EpochProgress(self.console, epoch, epochs, batches)

    def close(self) -> None:
        if self.writer is not None:
            self.writer.close()


def _cell(value: Any) -> str:
    if value is None:
        return ""
    return repr(value) if isinstance(value, float) else str(value)


def _tensorboard(folder: Path) -> Any:
    """A SummaryWriter when the optional `tensorboard` extra is installed, else None."""
    try:
        from torch.utils.tensorboard import SummaryWriter
    except ImportError:
        return None
    return SummaryWriter(log_dir=str(folder))


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

    def update(self, loss: float, images: int, seconds: float) -> None:
        self.bar.update(self.task, advance=1, loss=loss, ips=images / max(seconds, 1e-9))
