"""Start a training run as the command line asks for it: DDP from the environment, stop on
SIGINT/SIGTERM (the run stays resumable), one rank's failure reported once."""

from __future__ import annotations

from pathlib import Path
from typing import Any

import torch

from cvtool.engine.distributed import failure_guard, from_environment
from cvtool.engine.loop import StopRequested
from cvtool.engine.signals import stop_on_signals
from cvtool.errors import CvtoolError
from cvtool.recipe.schema import Recipe
from cvtool.runs.sweep import run_recipe


class RunStopped(Exception):
    """A signal stopped the run after its last checkpoint; `cvtool train --resume` continues it."""

    def __init__(self, run_dir: Path, exit_code: int) -> None:
        super().__init__(f"stopped by signal: {run_dir}")
        self.run_dir, self.exit_code = run_dir, exit_code


def launch(recipe: Recipe, run_dir: Path, *, resume: bool, overwrite: bool, quiet: bool,
           detect_anomaly: bool = False, extend: bool = False, search_worker: bool = False,
           recipe_file: Path | None = None) -> dict[str, Any] | None:
    """Train `recipe` (or its sweep) into `run_dir`; the summary on the lead rank, None on the others."""
    dist = from_environment(recipe.train.device)
    with stop_on_signals() as stop, torch.autograd.set_detect_anomaly(detect_anomaly):
        try:
            with failure_guard(dist):  # one rank's failure is reported once; the others exit quietly
                summary = run_recipe(recipe, run_dir, resume=resume, overwrite=overwrite,
                                     quiet=quiet, stop=stop, dist=dist, extend=extend, search_worker=search_worker,
                                     recipe_file=recipe_file)
        except StopRequested:
            raise RunStopped(run_dir, stop.exit_code) from None
        finally:
            if dist is not None:
                dist.close()
    return summary if dist is None or dist.rank == 0 else None


def launch_folds(recipe: Recipe, run_dir: Path, fold: str, *, resume: bool, overwrite: bool, quiet: bool,
                 detect_anomaly: bool = False) -> dict[str, Any]:
    """`--fold all|N`: the folds one after another in this process (torchrun is refused)."""
    from cvtool.runs.folds import run_folds

    if from_environment(recipe.train.device) is not None:
        raise CvtoolError("--fold trains its folds one after the other in one process (no torchrun)")
    with stop_on_signals() as stop, torch.autograd.set_detect_anomaly(detect_anomaly):
        try:
            return run_folds(recipe, run_dir, fold, resume=resume, overwrite=overwrite, quiet=quiet, stop=stop)
        except StopRequested:
            raise RunStopped(run_dir, stop.exit_code) from None
