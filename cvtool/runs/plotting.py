"""A run's plots (loss, every metric, lr, the first and best epochs' confusion matrices and ROC
curves), drawn in a process of their own while the run evaluates its test split.

A separate process, not a thread: matplotlib holds the GIL for most of its work, and a thread
holding it stalls the test evaluation's thread at every operator it launches. The process
imports numpy and matplotlib only (this module is torch-free), reads the validation predictions
the run saved, and the run waits for it before it returns. `python -m cvtool.runs.plotting JOB`
reads its job from the JSON file JOB.
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
from typing import IO, Any

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


class PlotJob:
    """The plotting process of one run; `wait` reports a failure as one line on stderr (the run's
    results stand without their plots)."""

    def __init__(self, process: subprocess.Popen, job: Path, errors: IO[bytes]) -> None:
        self.process, self.job, self.errors = process, job, errors

    def wait(self) -> None:
        code = self.process.wait()
        self.errors.seek(0)
        lines = [line for line in self.errors.read().decode(errors="replace").splitlines() if line.strip()]
        self.errors.close()
        self.job.unlink(missing_ok=True)
        if code:
            print(f"cvtool: plots failed ({lines[-1] if lines else f'exit status {code}'})", file=sys.stderr)


def start(run_dir: Path, history: list[dict[str, float]], figures: list[str], class_names: list[str],
          smoothing: float, threshold: float) -> PlotJob:
    """`draw` in a new process (this interpreter, this cvtool); returns at once."""
    job = {"run_dir": str(run_dir), "history": history, "figures": list(figures), "class_names": list(class_names),
           "smoothing": smoothing, "threshold": threshold}
    with tempfile.NamedTemporaryFile("w", suffix=".json", prefix="cvtool-plots-", delete=False) as handle:
        json.dump(job, handle)
    package_parent = str(Path(__file__).resolve().parents[2])  # the cvtool this process runs, found first
    env = {**os.environ, "PYTHONPATH": os.pathsep.join(p for p in (package_parent, os.environ.get("PYTHONPATH")) if p)}
    errors = tempfile.TemporaryFile()
    process = subprocess.Popen([sys.executable, "-m", "cvtool.runs.plotting", handle.name],
                               stdin=subprocess.DEVNULL, stdout=subprocess.DEVNULL, stderr=errors, env=env)
    return PlotJob(process, Path(handle.name), errors)


def main() -> None:
    job = json.loads(Path(sys.argv[1]).read_text(encoding="utf-8"))
    draw(Path(job["run_dir"]), job["history"], job["figures"], job["class_names"], job["smoothing"],
         job["threshold"])


if __name__ == "__main__":
    main()
