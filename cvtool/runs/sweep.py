"""Run directories and sweeps: one run per grid point, then a ranked table."""

from __future__ import annotations

import shutil
import time
from pathlib import Path
from typing import Any

from cvtool.errors import CvtoolError
from cvtool.fileio import write_csv, write_json, write_text
from cvtool.recipe.load import recipe_to_yaml
from cvtool.recipe.schema import Recipe
from cvtool.runs.layout import RunDir
from cvtool.runs.recipes import expand_sweep
from cvtool.runs.train import fit
from cvtool.tasks import get_task, higher_is_better


def default_run_dir(recipe: Recipe) -> Path:
    return Path("runs") / recipe.name / time.strftime("%Y%m%d-%H%M%S")


def prepare_run_dir(run_dir: Path, resume: bool, overwrite: bool) -> None:
    """A run never silently replaces another: an existing run needs --overwrite or --resume."""
    if resume:
        if not run_dir.is_dir():
            raise CvtoolError(f"--resume {run_dir}: no such run directory")
        return
    if run_dir.exists() and any(run_dir.iterdir()):
        if not overwrite:
            raise CvtoolError(f"{run_dir}: already holds a run; pass --overwrite to replace it or --resume to continue it")
        shutil.rmtree(run_dir)
    run_dir.mkdir(parents=True, exist_ok=True)


def run_recipe(recipe: Recipe, run_dir: Path, *, resume: bool = False, overwrite: bool = False,
               quiet: bool = False, stop: Any = None, dist: Any = None, extend: bool = False) -> dict[str, Any]:
    """Train a recipe (every grid point of its sweep) into run_dir; returns the summary."""
    lead = dist is None or dist.rank == 0
    if lead:
        prepare_run_dir(run_dir, resume, overwrite)
    if dist is not None:
        dist.barrier()
    if recipe.sweep:
        return run_sweep(recipe, run_dir, resume=resume, quiet=quiet, stop=stop, dist=dist, extend=extend)
    return _run_one(recipe, run_dir, resume, quiet, stop, dist, extend)


def _run_one(recipe: Recipe, run_dir: Path, resume: bool, quiet: bool, stop: Any, dist: Any,
             extend: bool = False) -> dict[str, Any]:
    if dist is None or dist.rank == 0:
        last = RunDir(run_dir).checkpoint("last")
        if resume and not last.is_file():
            raise CvtoolError(f"--resume {run_dir}: no checkpoints/last.pt to continue from")
        if resume:  # refused before recipe.yaml is replaced
            from cvtool.engine.checkpoint import load_checkpoint
            from cvtool.runs.resume import check_resume

            check_resume(recipe, load_checkpoint(last), extend, run_dir)
        write_text(RunDir(run_dir).recipe, recipe_to_yaml(recipe))
    return fit(recipe, run_dir, resume=resume, quiet=quiet, stop=stop, dist=dist, extend=extend)


def run_sweep(recipe: Recipe, sweep_dir: Path, *, resume: bool, quiet: bool, stop: Any, dist: Any,
              extend: bool = False) -> dict[str, Any]:
    lead = dist is None or dist.rank == 0
    if lead:
        write_text(RunDir(sweep_dir).recipe, recipe_to_yaml(recipe))
    results = []
    for name, point in expand_sweep(recipe):
        point_dir = sweep_dir / name
        done = RunDir(point_dir).summary.is_file()
        if resume and done:
            results.append((name, RunDir(point_dir).read_summary()))
            continue
        if lead:
            point_dir.mkdir(parents=True, exist_ok=True)
        if dist is not None:
            dist.barrier()
        started = RunDir(point_dir).checkpoint("last").is_file()
        results.append((name, _run_one(point, point_dir, resume and started, quiet, stop, dist, extend)))
    if not lead:
        return {}
    return rank_sweep(recipe, sweep_dir, results)


def rank_sweep(recipe: Recipe, sweep_dir: Path, results: list[tuple[str, dict[str, Any]]]) -> dict[str, Any]:
    """Sort the points by their best monitored value; write sweep.json and sweep.csv."""
    monitor = recipe.train.monitor or get_task(recipe.task).default_monitor
    higher = higher_is_better(monitor)
    ranked = sorted(results, key=lambda item: _sort_key(item[1].get("best_value"), higher))
    rows = [{"run": name, "best_epoch": s.get("best_epoch"), "best_value": s.get("best_value"),
             "smoothed_best_value": s.get("smoothed_best_value"),
             "test": (s.get("test") or {}).get(monitor.split("/")[-1])} for name, s in ranked]
    summary = {"sweep": True, "name": recipe.name, "monitor": monitor, "runs": rows}
    write_json(RunDir(sweep_dir).sweep, summary)
    write_csv(RunDir(sweep_dir).sweep_table, list(rows[0]) if rows else ["run"], [list(r.values()) for r in rows])
    return summary


def _sort_key(value: float | None, higher: bool) -> float:
    if value is None or value != value:
        return float("inf")
    return -value if higher else value
