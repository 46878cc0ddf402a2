"""What a set trained as jobs is made of, one class per kind: a fold set's folds, a sweep's points,
a search's workers. Each kind names its members, prepares the set's folder as the sequential path
does (`start`), trains one member in a job (`train`: the sequential path's own function, so a
member continues from its last.pt) and writes the set's tables once every member has ended
(`collect`: the sequential path's own function, so the files are the same)."""

from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path
from typing import Any, ClassVar

from cvtool.errors import CvtoolError, NonFiniteError
from cvtool.fileio import write_text
from cvtool.recipe.load import recipe_to_yaml
from cvtool.recipe.schema import Recipe
from cvtool.runs.layout import FOLD_PREFIX, RunDir


@dataclass(frozen=True)
class Member:
    """One job's work: `name` is its folder in the set (fold_2, lr=0.01) or a search worker's name."""

    name: str
    recipe: Recipe  # what the job trains: the fold's or the point's recipe, or the whole search


@dataclass(frozen=True)
class Start:
    """How the driver prepares a set: `resume` continues the set in its folder; `idle`: no job of
    it runs any more (a search's trials left running are then requeued)."""

    fold: str | None
    resume: bool
    overwrite: bool
    recipe_file: Path | None
    workers: int
    idle: bool = True


class FoldMembers:
    kind: ClassVar[str] = "folds"

    @staticmethod
    def names(recipe: Recipe, fold: str | None, workers: int) -> list[str]:
        from cvtool.folds.run import parse_fold

        if recipe.data.folds is None:
            raise CvtoolError("--fold: the recipe has no data.folds (e.g. data: {folds: {k: 5}})")
        return [f"{FOLD_PREFIX}{index}" for index in parse_fold(fold or "all", recipe.data.folds.k)]

    @staticmethod
    def start(recipe: Recipe, set_dir: Path, how: Start) -> list[Member]:
        from cvtool.folds.run import fold_recipe, start_fold_set

        folds = start_fold_set(recipe, set_dir, how.fold or "all", resume=how.resume, overwrite=how.overwrite)
        return [Member(f"{FOLD_PREFIX}{index}", fold_recipe(folds.recipe, index)) for index in folds.wanted]

    @staticmethod
    def train(member: Member, set_dir: Path, quiet: bool) -> dict[str, Any]:
        from cvtool.folds.run import train_fold

        train_fold(member.recipe, set_dir / member.name, quiet=quiet)
        return RunDir(set_dir / member.name).read_summary()

    @staticmethod
    def done(set_dir: Path, name: str) -> bool:
        return RunDir(set_dir / name).summary.is_file()

    @staticmethod
    def collect(set_dir: Path, recipe: Recipe) -> dict[str, Any]:
        from cvtool.data.formats import read_dataset
        from cvtool.folds.run import collect_folds, fixed_assignment

        info = read_dataset(recipe.data, recipe.task, recipe.seed)
        fold_of = fixed_assignment(recipe, info, RunDir(set_dir), resume=True)
        return collect_folds(recipe, info, fold_of, RunDir(set_dir))


class SweepMembers:
    kind: ClassVar[str] = "sweep"

    @staticmethod
    def names(recipe: Recipe, fold: str | None, workers: int) -> list[str]:
        from cvtool.recipe.sweep import expand_sweep

        return [name for name, _ in expand_sweep(recipe)]

    @staticmethod
    def start(recipe: Recipe, set_dir: Path, how: Start) -> list[Member]:
        from cvtool.runs.recipes import expand_sweep
        from cvtool.runs.sweep import prepare_now

        points = expand_sweep(recipe, str(how.recipe_file or "<recipe>"))
        prepare_now(set_dir, how.resume, how.overwrite, recipe, how.recipe_file)
        write_text(RunDir(set_dir).recipe, recipe_to_yaml(recipe))
        return [Member(name, point) for name, point in points]

    @staticmethod
    def train(member: Member, set_dir: Path, quiet: bool) -> dict[str, Any]:
        from cvtool.runs.sweep import train_point

        try:
            return train_point(member.recipe, member.name, lambda: set_dir, None, resume=True, quiet=quiet,
                               stop=None, dist=None, extend=False)
        except NonFiniteError as exc:  # failed.json is written: the point ranks as failed, the sweep goes on
            return {"failed": str(exc)}

    @staticmethod
    def done(set_dir: Path, name: str) -> bool:
        return RunDir(set_dir / name).summary.is_file() or RunDir(set_dir / name).failed.is_file()

    @staticmethod
    def collect(set_dir: Path, recipe: Recipe) -> dict[str, Any]:
        from cvtool.recipe.sweep import expand_sweep
        from cvtool.runs.sweep import finished_point, rank_sweep

        results = [(name, finished_point(RunDir(set_dir / name))) for name, _ in expand_sweep(recipe)]
        if any(result is None for _, result in results):
            done = sum(result is not None for _, result in results)
            return {"sweep": True, "complete": False, "name": recipe.name, "done": done, "points": len(results)}
        return {**rank_sweep(recipe, set_dir, results), "complete": True}  # type: ignore[arg-type]


class SearchMembers:
    kind: ClassVar[str] = "search"

    @staticmethod
    def names(recipe: Recipe, fold: str | None, workers: int) -> list[str]:
        from cvtool.search.run import target_trials

        return [f"worker_{index}" for index in range(min(workers, target_trials(recipe)))]

    @staticmethod
    def start(recipe: Recipe, set_dir: Path, how: Start) -> list[Member]:
        from cvtool.runs.sweep import prepare_now
        from cvtool.search.run import open_study, requeue_stale
        from cvtool.search.table import storage_of

        if recipe.search.storage:  # a database out of reach is refused before the folder is made
            storage_of(recipe, set_dir)
        prepare_now(set_dir, how.resume, how.overwrite, recipe, how.recipe_file)
        write_text(RunDir(set_dir).recipe, recipe_to_yaml(recipe))
        study = open_study(recipe, set_dir, None)  # created once here, before the workers race to
        if how.resume and how.idle:
            requeue_stale(study)  # trials of killed workers: their parameters queued again
        if search_complete(recipe, study):
            return []
        return [Member(name, recipe) for name in SearchMembers.names(recipe, how.fold, how.workers)]

    @staticmethod
    def train(member: Member, set_dir: Path, quiet: bool) -> dict[str, Any]:
        from cvtool.search.run import run_trials

        study = run_trials(member.recipe, set_dir, worker=True, quiet=quiet)
        return {"trials": len(study.get_trials(deepcopy=False))}

    @staticmethod
    def done(set_dir: Path, name: str) -> bool:
        return False  # a worker claims trials until the search has them all: `start` returns none then

    @staticmethod
    def collect(set_dir: Path, recipe: Recipe) -> dict[str, Any]:
        from cvtool.search.run import open_study
        from cvtool.search.table import rank_search

        study = open_study(recipe, set_dir, None)
        return {**rank_search(recipe, set_dir, study), "complete": search_complete(recipe, study)}


def search_complete(recipe: Recipe, study: Any) -> bool:
    """Every trial the search asks for is claimed and none is still running."""
    from optuna.trial import TrialState

    from cvtool.search.run import counted, target_trials

    trials = counted(study)
    return len(trials) >= target_trials(recipe) and not any(t.state == TrialState.RUNNING for t in trials)


KINDS: dict[str, type[FoldMembers] | type[SweepMembers] | type[SearchMembers]] = {
    kind.kind: kind for kind in (FoldMembers, SweepMembers, SearchMembers)}


def kind_of(recipe: Recipe, fold: str | None, set_dir: Path, resume: bool) -> str:
    """Which set `cvtool train` asks for, as `cli/launch.run_recipe` decides it."""
    if recipe.search:
        return "search"
    if fold is not None or (resume and RunDir(set_dir).is_fold_set()):
        return "folds"
    if recipe.sweep:
        return "sweep"
    raise CvtoolError("--executor / --jobs: train a fold set (--fold all), a sweep or a search as jobs; "
                      "one run trains here (several GPUs: under torchrun)")


def stored_kind(set_dir: Path, recipe: Recipe) -> str:
    """The kind of the set already in `set_dir` (for `cvtool status` and `cvtool collect`)."""
    if RunDir(set_dir).is_fold_set():
        return "folds"
    if recipe.search:
        return "search"
    if recipe.sweep:
        return "sweep"
    raise CvtoolError(f"{set_dir}: not a fold set, a sweep or a search (no folds.csv, sweep: or search:)")


def collect_set(set_dir: Path) -> dict[str, Any]:
    """The set's tables (oof.csv and folds.json, sweep.json / .csv, search.json / .csv) from the
    members' run folders, written as the sequential path writes them once every member ended."""
    from cvtool.cluster.ledger import Ledger
    from cvtool.runs.recipes import load_recipe

    run = RunDir(set_dir)
    if not run.recipe.is_file():
        raise CvtoolError(f"{set_dir}: no {run.recipe.name} (not a fold set, sweep or search folder)")
    recipe = load_recipe(run.recipe, stored=True)
    kind = stored_kind(set_dir, recipe)
    with Ledger(set_dir).locked():
        return KINDS[kind].collect(set_dir, recipe)
