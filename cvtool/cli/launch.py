"""Start training as the command line asks for it: `launched` sets up DDP from the environment,
stops on SIGINT/SIGTERM (the run stays resumable) and reports one rank's failure once;
`run_recipe` trains what the recipe holds (a search's trials, k folds, a sweep's points or one
run), each run through `runs.train.fit`."""

from __future__ import annotations

import contextlib
from collections.abc import Callable, Iterator
from pathlib import Path
from typing import TYPE_CHECKING, Any

import torch

from cvtool.engine.distributed import failure_guard, from_environment
from cvtool.engine.loop import StopRequested
from cvtool.engine.signals import stop_on_signals
from cvtool.errors import CvtoolError
from cvtool.recipe.schema import Recipe
from cvtool.runs.layout import RunDir
from cvtool.runs.lock import scope
from cvtool.runs.sweep import new_run, run_sweep
from cvtool.runs.train import fit

if TYPE_CHECKING:
    from cvtool.engine.distributed import Dist


class RunStopped(Exception):
    """A signal stopped the run after its last checkpoint; `cvtool train --resume` continues it."""

    def __init__(self, run_dir: Path, exit_code: int) -> None:
        super().__init__(f"stopped by signal: {run_dir}")
        self.run_dir, self.exit_code = run_dir, exit_code


@contextlib.contextmanager
def launched(device: str, run_dir: Path, detect_anomaly: bool = False) -> Iterator[tuple[Dist | None, Any]]:
    """(this process's Dist under torchrun or None, the stop flag SIGINT/SIGTERM raise); a stop
    leaves as RunStopped, one rank's failure is reported once and the others exit quietly."""
    dist = from_environment(device)
    with stop_on_signals() as stop, torch.autograd.set_detect_anomaly(detect_anomaly):
        try:
            with failure_guard(dist):
                yield dist, stop
        except StopRequested:
            raise RunStopped(run_dir, stop.exit_code) from None
        finally:
            if dist is not None:
                dist.close()


def run_recipe(recipe: Recipe, run_dir: Path, *, fold: str | None = None, resume: bool = False,
               overwrite: bool = False, quiet: bool = False, stop: Callable[[], bool] | None = None,
               dist: Dist | None = None, extend: bool = False, search_worker: bool = False,
               recipe_file: Path | None = None) -> dict[str, Any]:
    """Train `recipe` into `run_dir`: its search's trials, the folds asked for (`fold`: all or N;
    a resumed fold set too), every point of its sweep, or one run. Returns the summary (a fold
    set's, sweep's or search's table for those; empty on ranks other than 0). The run folder
    stays locked until it returns."""
    with scope():
        if recipe.search or search_worker:
            from cvtool.search.run import start_search

            return start_search(recipe, run_dir, resume=resume, worker=search_worker, overwrite=overwrite, quiet=quiet,
                                stop=stop, dist=dist, recipe_file=recipe_file)
        if fold is not None or (resume and RunDir(run_dir).is_fold_set()):
            from cvtool.folds.run import run_folds

            if dist is not None:
                raise CvtoolError("--fold trains its folds one after the other in one process (no torchrun)")
            return run_folds(recipe, run_dir, fold or "all", resume=resume, overwrite=overwrite, quiet=quiet, stop=stop,
                             extend=extend)
        if recipe.sweep:
            return run_sweep(recipe, run_dir, resume=resume, overwrite=overwrite, quiet=quiet, stop=stop, dist=dist,
                             extend=extend, recipe_file=recipe_file)
        with new_run(recipe, run_dir, resume=resume, overwrite=overwrite, dist=dist, extend=extend,
                     recipe_file=recipe_file) as (work, started):
            return fit(recipe, work, resume=resume, extend=extend, quiet=quiet, stop=stop, dist=dist, started=started)
