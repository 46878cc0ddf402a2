"""The files a run hands its trackers when it ends: summary, plots and, with
`train.log_checkpoints: best`, the best checkpoint and its .onnx export."""

from __future__ import annotations

import subprocess
import sys
from collections.abc import Callable
from pathlib import Path

from cvtool.runs.layout import RunDir
from cvtool.runs.lock import for_child
from cvtool.runs.loggers.base import LogContext

EXPORT_TIMEOUT_S = 600


def run_artifacts(context: LogContext, warn: Callable[[str], None]) -> list[tuple[str, Path]]:
    """(artifact folder, file) pairs: '' for the summary, 'plots', 'checkpoints', 'model'."""
    run = RunDir(context.run_dir)
    files: list[tuple[str, Path]] = [("", run.summary)] if run.summary.is_file() else []
    files += [("plots", p) for p in sorted(run.plots.glob("*.png"))]
    if context.recipe.train.log_checkpoints == "best" and run.checkpoint("best").is_file():
        files.append(("checkpoints", run.checkpoint("best")))
        exported = export_best(run, warn)
        if exported is not None:
            files.append(("model", exported))
    return files


def export_best(run: RunDir, warn: Callable[[str], None]) -> Path | None:
    """`cvtool export RUN --onnx RUN/model.onnx` in a child process: exporting is the inference
    layer's job (which itself loads runs), and a failed export must not end the run."""
    command = [sys.executable, "-m", "cvtool", "export", str(run.path), "--onnx", str(run.exported)]
    try:
        done = subprocess.run(command, capture_output=True, text=True, timeout=EXPORT_TIMEOUT_S, check=False,
                              env=for_child(run.path))  # it writes into the run this process holds
    except (OSError, subprocess.TimeoutExpired) as exc:
        warn(f"log_checkpoints: export of {run.path} failed ({exc}); logging best.pt only")
        return None
    if done.returncode != 0 or not run.exported.is_file():
        last = (done.stderr.strip().splitlines() or ["no output"])[-1]
        warn(f"log_checkpoints: export of {run.path} failed ({last}); logging best.pt only")
        return None
    return run.exported
