"""A run's plots (loss, every metric, lr, the first and best epochs' confusion matrices and ROC
curves), drawn in a process of their own while the run evaluates its test split.

A separate process, not a thread: matplotlib holds the GIL for most of its work, and a thread
holding it stalls the test evaluation's thread at every operator it launches. The process
imports numpy and matplotlib only (this module is torch-free), reads the validation predictions
the run saved, and the run waits for it before it returns. `python -m cvtool.runs.plotting`
reads the path of its job (a JSON file) from stdin; an empty stdin ends it.
"""

from __future__ import annotations

import contextlib
import json
import os
import subprocess
import sys
import tempfile
from collections.abc import Callable, Iterator
from pathlib import Path
from typing import Any

import numpy as np

from cvtool import plots
from cvtool.runs.layout import RunDir

_SKIPPED = [False]  # `cvtool train --no-plots`


@contextlib.contextmanager
def skipped(skip: bool = True) -> Iterator[None]:
    """Runs inside draw no plots when `skip` (`cvtool train --no-plots`: sweeps, folds and searches too)."""
    before, _SKIPPED[0] = _SKIPPED[0], skip or _SKIPPED[0]
    try:
        yield
    finally:
        _SKIPPED[0] = before


def wanted() -> bool:
    """Whether a run draws its plots (not inside `skipped`)."""
    return not _SKIPPED[0]


def load_predictions(path: Path) -> dict[str, np.ndarray]:
    with np.load(path) as data:
        return {key: data[key] for key in data.files}


def draw(run_dir: Path, history: list[dict[str, float]], figures: list[str], class_names: list[str],
         smoothing: float, threshold: float) -> None:
    """Loss, every metric (raw and smoothed), lr, and the task's `figures` of the first and best
    epochs' validation predictions."""
    if not history:
        return
    run = RunDir(run_dir)
    folder = run.plots
    epochs = [r["epoch"] for r in history]
    series = lambda key: (epochs, [r.get(key, float("nan")) for r in history])  # noqa: E731
    plots.curves({"train": series("train/loss"), "val": series("val/loss")}, "loss", "loss", folder / "loss.png")
    for key in sorted(k for k in history[-1] if k.startswith("val/") and k != "val/loss"):
        name = key.removeprefix("val/")
        lines = {"val": series(key)}
        if f"train/{name}" in history[-1]:
            lines["train"] = series(f"train/{name}")
        plots.curves(lines, name, name, folder / f"{name}.png", smoothing=smoothing)
    plots.curves({"lr": series("lr")}, "learning rate", "lr", folder / "lr.png", logy=True)
    for label, name in (("first epoch", "val_epoch_001"), ("best epoch", "val_best")):
        if not run.prediction(name).is_file():
            continue
        data = load_predictions(run.prediction(name))
        for figure in figures:
            if figure in EPOCH_FIGURES:
                EPOCH_FIGURES[figure](data, class_names, threshold, label, name, folder)


def _epoch_confusion(data: Any, class_names: list[str], threshold: float, label: str, name: str,
                     folder: Path) -> None:
    matrix = plots.confusion_matrix(data["targets"], data["outputs"], len(class_names), threshold)
    plots.confusion(matrix, class_names, f"confusion matrix, {label}", folder / f"confusion_{name[4:]}.png")


def _epoch_roc(data: Any, class_names: list[str], threshold: float, label: str, name: str, folder: Path) -> None:
    if name != "val_best":
        return
    names = class_names if data["outputs"].shape[1] > 1 else [class_names[-1] if class_names else "positive"]
    curves = plots.roc_curves(data["targets"], data["outputs"], names)
    if curves:
        plots.roc(curves, "ROC, best epoch", folder / "roc_best.png")


# the task's figures (Task.figures) a run draws from its first and best epochs' val predictions
EPOCH_FIGURES: dict[str, Callable[[Any, list[str], float, str, str, Path], None]] = {
    "confusion": _epoch_confusion, "roc": _epoch_roc}


class Plotter:
    """A plotting process, started when the run starts at the lowest CPU priority: it imports
    matplotlib in time the training leaves idle, then waits for its one job (`draw`). The job's
    drawing, too, takes the CPU only as the test evaluation leaves it, which comes first."""

    def __init__(self) -> None:
        package_parent = str(Path(__file__).resolve().parents[2])  # the cvtool this process runs, found first
        paths = (package_parent, os.environ.get("PYTHONPATH"))
        env = {**os.environ, "PYTHONPATH": os.pathsep.join(p for p in paths if p)}
        self.errors = tempfile.TemporaryFile()
        self.job: Path | None = None
        self.process = subprocess.Popen([sys.executable, "-m", "cvtool.runs.plotting"], stdin=subprocess.PIPE,
                                        stdout=subprocess.DEVNULL, stderr=self.errors, env=env, text=True)

    def draw(self, run_dir: Path, history: list[dict[str, float]], figures: list[str], class_names: list[str],
             smoothing: float, threshold: float) -> None:
        """Hand the process its job (returns at once); `wait` for it."""
        job = {"run_dir": str(run_dir), "history": history, "figures": list(figures),
               "class_names": list(class_names), "smoothing": smoothing, "threshold": threshold}
        with tempfile.NamedTemporaryFile("w", suffix=".json", prefix="cvtool-plots-", delete=False) as handle:
            json.dump(job, handle)
        self.job = Path(handle.name)
        self._send(str(self.job))

    def wait(self) -> None:
        """Wait for the process (given no job, it ends at once); a failure is one line on stderr:
        the run's results stand without their plots."""
        if self.errors.closed:
            return
        self._send("")
        code = self.process.wait()
        self.errors.seek(0)
        lines = [line for line in self.errors.read().decode(errors="replace").splitlines() if line.strip()]
        self.errors.close()
        if self.job is not None:
            self.job.unlink(missing_ok=True)
            if code:
                print(f"cvtool: plots failed ({lines[-1] if lines else f'exit status {code}'})", file=sys.stderr)

    def _send(self, line: str) -> None:
        """One line, then stdin closed. Always a whole line, never just the end of the pipe: loader
        workers forked after this process started hold a copy of its write end."""
        stdin = self.process.stdin
        assert stdin is not None
        if stdin.closed:
            return
        with contextlib.suppress(OSError):  # the process died: `wait` says so
            stdin.write(line + "\n")
            stdin.flush()
        with contextlib.suppress(OSError):
            stdin.close()


def main() -> None:
    """The plotting process: lowest priority, matplotlib imported, then the job named on stdin."""
    with contextlib.suppress(OSError, AttributeError):
        os.nice(19)
    plots.warm_up()
    line = sys.stdin.readline().strip()
    if not line:
        return
    job = json.loads(Path(line).read_text(encoding="utf-8"))
    draw(Path(job["run_dir"]), job["history"], job["figures"], job["class_names"], job["smoothing"],
         job["threshold"])


if __name__ == "__main__":
    main()
