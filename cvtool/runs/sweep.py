"""Run directories and sweeps: one run per grid point, then a ranked table."""

from __future__ import annotations

import contextlib
import json
import time
from collections.abc import Callable, Iterator
from pathlib import Path
from typing import TYPE_CHECKING, Any

from cvtool.errors import CvtoolError, NonFiniteError
from cvtool.fileio import refuse_input, refuse_inside, write_csv, write_json, write_text
from cvtool.recipe.load import recipe_to_yaml
from cvtool.recipe.schema import Recipe
from cvtool.runs.layout import RunDir
from cvtool.runs.lock import hold, owner_of
from cvtool.runs.placement import Placement, clean_stale, mark, place_run
from cvtool.runs.recipes import expand_sweep
from cvtool.runs.train import fit
from cvtool.tasks import get_task, higher_is_better

if TYPE_CHECKING:
    from cvtool.engine.distributed import Dist


def default_run_dir(recipe: Recipe) -> Path:
    return Path("runs") / recipe.name / time.strftime("%Y%m%d-%H%M%S")


def prepare_run_dir(run_dir: Path, resume: bool, overwrite: bool, recipe: Recipe | None = None,
                    recipe_file: Path | None = None) -> Placement | None:
    """A run never silently replaces another: an existing run needs --overwrite or --resume,
    --overwrite replaces only what cvtool wrote (see placement.py), and a run folder has one
    writer at a time (lock.py)."""
    check_run_paths(run_dir, resume, recipe, recipe_file)
    hold(owner_of(run_dir) or run_dir, "train")
    if resume:
        clean_stale(run_dir)
        if not run_dir.is_dir():
            raise CvtoolError(f"--resume {run_dir}: no such run directory")
        return None
    protected = [p for p in (recipe_file, recipe.data.root if recipe else None) if p is not None]
    return place_run(run_dir, run_kind(recipe), overwrite=overwrite, protected=protected)


def run_kind(recipe: Recipe | None) -> str:
    """What the marker of a new run folder says: search, sweep or run."""
    return "search" if recipe is not None and recipe.search else "sweep" if recipe is not None and recipe.sweep else "run"


def check_run_paths(run_dir: Path, resume: bool, recipe: Recipe | None, recipe_file: Path | None) -> None:
    """A run folder is not the recipe, does not lie inside the data root nor hold it (its plots
    would be read as images), and the data root does not lie inside another cvtool run."""
    option = "--resume" if resume else "--out"
    refuse_input(option, run_dir, {"the recipe": recipe_file})
    if recipe is None:
        return
    refuse_inside(option, run_dir, {"the data root (data.root)": recipe.data.root})
    holder = owner_of(recipe.data.root)
    if holder is not None:
        raise CvtoolError(f"data.root {recipe.data.root}: lies inside the cvtool run {holder}, which --overwrite "
                          "would replace; keep data outside run folders")


def prepare_now(run_dir: Path, resume: bool, overwrite: bool, recipe: Recipe | None = None,
                recipe_file: Path | None = None) -> None:
    """`prepare_run_dir` for runs that write their folder as they go (fold sets, searches): the
    same refusals, and an old run it may replace is replaced at once."""
    placement = prepare_run_dir(run_dir, resume, overwrite, recipe, recipe_file)
    if placement is not None:
        placement.start()


@contextlib.contextmanager
def new_run(recipe: Recipe, run_dir: Path, *, resume: bool, overwrite: bool, dist: Dist | None = None,
            extend: bool = False, recipe_file: Path | None = None) -> Iterator[tuple[Path, Callable[[], Path] | None]]:
    """Where `fit` writes one run: (the folder to write into now, the `started` callback that
    moves it into place), with its recipe.yaml written; a run that fails before it started
    leaves nothing that blocks a rerun."""
    lead = dist is None or dist.rank == 0
    placement = prepare_run_dir(run_dir, resume, overwrite, recipe, recipe_file) if lead else None
    if dist is not None:
        dist.barrier()
    try:
        work = placement.work if placement is not None else run_dir
        if lead:
            write_run_recipe(recipe, work, resume, extend)
        yield work, placement.start if placement is not None else None
    except BaseException:
        if placement is not None:
            placement.abandon()
        raise


def write_run_recipe(recipe: Recipe, run_dir: Path, resume: bool, extend: bool) -> None:
    """recipe.yaml of a run; a resume is checked against its last.pt before the file is replaced."""
    last = RunDir(run_dir).checkpoint("last")
    if resume and not last.is_file():
        raise CvtoolError(f"--resume {run_dir}: no checkpoints/last.pt to continue from")
    if resume:
        from cvtool.engine.checkpoint import load_checkpoint
        from cvtool.runs.resume import check_resume

        check_resume(recipe, load_checkpoint(last), extend, run_dir)
    write_text(RunDir(run_dir).recipe, recipe_to_yaml(recipe))


def changed_epochs(run: RunDir, recipe: Recipe) -> bool:
    """Whether a finished run was planned for another train.epochs than `recipe` asks for."""
    from cvtool.engine.checkpoint import load_checkpoint
    from cvtool.runs.resume import planned_epochs

    last = run.checkpoint("last")
    return last.is_file() and planned_epochs(load_checkpoint(last)) != recipe.train.epochs


def check_epochs(recipe: Recipe, run: RunDir, extend: bool) -> None:
    """CvtoolError when a run of a resumed sweep or fold set was planned for another train.epochs
    and --extend is not given (or adds no epoch)."""
    if changed_epochs(run, recipe):
        from cvtool.engine.checkpoint import load_checkpoint
        from cvtool.runs.resume import check_resume

        check_resume(recipe, load_checkpoint(run.checkpoint("last")), extend, run.path)


def run_sweep(recipe: Recipe, sweep_dir: Path, *, resume: bool, overwrite: bool, quiet: bool,
              stop: Callable[[], bool] | None, dist: Dist | None, extend: bool = False,
              recipe_file: Path | None = None) -> dict[str, Any]:
    """Every grid point into sweep_dir/<point>/ (a resume skips finished ones), then a ranked table."""
    lead = dist is None or dist.rank == 0
    placement = prepare_run_dir(sweep_dir, resume, overwrite, recipe, recipe_file) if lead else None
    if dist is not None:
        dist.barrier()
    base = lambda: placement.path if placement is not None else sweep_dir  # noqa: E731 (moves once started)
    try:
        if lead and resume:
            for name, point in expand_sweep(recipe):
                check_epochs(point, RunDir(base() / name), extend)
        if lead:
            write_text(RunDir(base()).recipe, recipe_to_yaml(recipe))
        results = [(name, train_point(point, name, base, placement, resume, quiet, stop, dist, extend))
                   for name, point in expand_sweep(recipe)]
    except BaseException:
        if placement is not None:
            placement.abandon()  # failed before the first point started: nothing left that blocks a rerun
        raise
    return rank_sweep(recipe, base(), results) if lead else {}


def train_point(point: Recipe, name: str, base: Callable[[], Path], placement: Placement | None, resume: bool,
                quiet: bool, stop: Callable[[], bool] | None, dist: Dist | None, extend: bool) -> dict[str, Any]:
    """One grid point into base()/name (the sweep folder moves into place when its first point starts)."""
    lead = dist is None or dist.rank == 0
    run = RunDir(base() / name)
    if resume and run.failed.is_file():
        return _failed(run)
    if resume and run.summary.is_file() and not changed_epochs(run, point):
        return run.read_summary()  # finished, unless train.epochs changed: --extend trains on (else refused)
    if lead:
        mark(run.path, "run")
    if dist is not None:
        dist.barrier()
    started = resume and run.checkpoint("last").is_file()
    moved = (lambda: placement.start() / name) if placement is not None else None
    try:
        if lead:
            write_run_recipe(point, run.path, started, extend)
        return fit(point, run.path, resume=started, extend=extend, quiet=quiet, stop=stop, dist=dist, started=moved)
    except NonFiniteError as exc:
        if lead:  # a resume moves on to the next point and ranks this one as failed
            write_json(RunDir(base() / name).failed, {"error": str(exc)})
        raise


def finished_point(run: RunDir) -> dict[str, Any] | None:
    """A grid point's summary, {"failed": error} for a point stopped by a non-finite loss, else None."""
    if run.summary.is_file():
        return run.read_summary()
    return _failed(run) if run.failed.is_file() else None


def _failed(run: RunDir) -> dict[str, Any]:
    try:
        error = json.loads(run.failed.read_text(encoding="utf-8")).get("error", "failed")
    except (OSError, ValueError, AttributeError):
        error = "failed"
    return {"failed": str(error)}


def rank_sweep(recipe: Recipe, sweep_dir: Path, results: list[tuple[str, dict[str, Any]]]) -> dict[str, Any]:
    """Sort the points by their best monitored value; write sweep.json and sweep.csv."""
    monitor = recipe.train.monitor or get_task(recipe.task).default_monitor
    higher = higher_is_better(monitor)
    ranked = sorted(results, key=lambda item: _sort_key(item[1].get("best_value"), higher))
    rows = [{"run": name, "best_epoch": s.get("best_epoch"), "best_value": s.get("best_value"),
             "smoothed_best_value": s.get("smoothed_best_value"),
             "test": (s.get("test") or {}).get(monitor.split("/")[-1]), "failed": s.get("failed")}
            for name, s in ranked]
    summary = {"sweep": True, "name": recipe.name, "monitor": monitor, "runs": rows}
    write_json(RunDir(sweep_dir).sweep, summary)
    write_csv(RunDir(sweep_dir).sweep_table, list(rows[0]) if rows else ["run"], [list(r.values()) for r in rows])
    return summary


def _sort_key(value: float | None, higher: bool) -> float:
    if value is None or value != value:
        return float("inf")
    return -value if higher else value
