"""`search:` with Optuna: each trial a normal run dir (DIR/trial_NNN), pruned per epoch on the
monitored metric, its study in a storage that several workers share.

A trial counts toward `search.trials` once it is claimed, unless it was voided: failed without
an "error" of its own (a claim that lost a race with another worker, or one left running by an
interrupted process, whose parameters are queued again). Workers stop at exactly
`search.trials` counted trials; Optuna's storage numbers them without duplicates.
"""

from __future__ import annotations

import shutil
import socket
from pathlib import Path
from typing import Any

from cvtool.errors import CvtoolError
from cvtool.fileio import write_text
from cvtool.recipe.load import recipe_to_yaml
from cvtool.recipe.schema import Recipe
from cvtool.recipe.search_space import trial_recipe
from cvtool.runs.layout import RunDir
from cvtool.search.space import grid_sampler, grid_space, need_optuna, suggest
from cvtool.search.table import rank_search, storage_of
from cvtool.tasks import get_task, higher_is_better


def monitor_of(recipe: Recipe) -> str:
    return recipe.train.monitor or get_task(recipe.task).default_monitor


def open_study(recipe: Recipe, search_dir: Path, seed: int | None) -> Any:
    optuna = need_optuna()
    cfg = recipe.search
    direction = "maximize" if higher_is_better(monitor_of(recipe)) else "minimize"
    samplers = {
        "tpe": lambda: optuna.samplers.TPESampler(seed=seed, n_startup_trials=max(cfg.startup_trials, 1)),
        "random": lambda: optuna.samplers.RandomSampler(seed=seed),
        "grid": lambda: grid_sampler(cfg, seed),
    }
    # steps are 1-based epochs: n_warmup_steps = W + 1 keeps the first W epochs unpruned
    pruners = {
        "median": lambda: optuna.pruners.MedianPruner(n_startup_trials=cfg.startup_trials,
                                                      n_warmup_steps=cfg.warmup_epochs + 1),
        "hyperband": lambda: optuna.pruners.HyperbandPruner(min_resource=max(cfg.warmup_epochs, 1),
                                                            max_resource=recipe.train.epochs),
        "none": lambda: optuna.pruners.NopPruner(),
    }
    kwargs = {"study_name": cfg.study or recipe.name, "storage": storage_of(recipe, search_dir),
              "sampler": samplers[cfg.sampler](), "pruner": pruners[cfg.pruner](), "direction": direction}
    try:
        return optuna.create_study(load_if_exists=True, **kwargs)
    except optuna.exceptions.DuplicatedStudyError:  # another worker created it a moment ago
        return optuna.load_study(**{k: v for k, v in kwargs.items() if k != "direction"})
    except ValueError as exc:  # a study of that name with the other direction
        raise CvtoolError(f"search: {exc}") from None


def counted(study: Any) -> list[Any]:
    from optuna.trial import TrialState

    return [t for t in study.get_trials(deepcopy=False)
            if t.state != TrialState.FAIL or "error" in t.user_attrs]


def target_trials(recipe: Recipe) -> int:
    if recipe.search.sampler == "grid":
        import math

        return min(recipe.search.trials, math.prod(len(v) for v in grid_space(recipe.search).values()))
    return recipe.search.trials


def claim_trial(study: Any, limit: int) -> Any | None:
    """The next trial, or None when `limit` trials are claimed (a claim that lost a race with
    another worker is voided)."""
    optuna = need_optuna()
    if len(counted(study)) >= limit:
        return None
    trial = study.ask()
    ahead = [t for t in counted(study) if t.number <= trial.number]
    if len(ahead) > limit:
        study.tell(trial, state=optuna.trial.TrialState.FAIL)
        return None
    return trial


def requeue_stale(study: Any) -> int:
    """Trials left running by an interrupted search: voided, their parameters queued again."""
    optuna = need_optuna()
    stale = study.get_trials(deepcopy=False, states=(optuna.trial.TrialState.RUNNING,))
    for frozen in stale:
        study.tell(frozen.number, state=optuna.trial.TrialState.FAIL)
        folder = Path(frozen.user_attrs.get("run_dir", ""))
        if frozen.user_attrs.get("host") == socket.gethostname() and RunDir(folder).recipe.is_file():
            shutil.rmtree(folder)  # its parameters run again under a new trial number
        study.enqueue_trial(frozen.params, user_attrs={"requeued_from": frozen.number})
    return len(stale)


def run_trial(recipe: Recipe, search_dir: Path, study: Any, trial: Any, quiet: bool, stop: Any) -> str:
    """Train one trial into DIR/trial_NNN; tells the study how it ended."""
    from cvtool.runs.train import fit

    optuna = need_optuna()
    states = optuna.trial.TrialState
    monitor = monitor_of(recipe)
    params = suggest(trial, recipe.search)
    point = trial_recipe(recipe, params, str(RunDir(search_dir).recipe))
    run_dir = RunDir(search_dir).trial(trial.number)
    trial.set_user_attr("run_dir", str(run_dir.resolve()))
    trial.set_user_attr("host", socket.gethostname())
    if run_dir.exists():  # left by a try that was voided
        shutil.rmtree(run_dir)
    run_dir.mkdir(parents=True)
    write_text(RunDir(run_dir).recipe, recipe_to_yaml(point))

    def report(row: dict[str, float]) -> None:
        trial.report(row[monitor], int(row["epoch"]))
        if trial.should_prune():
            raise optuna.TrialPruned()

    shown = ", ".join(f"{k}={v:.4g}" if isinstance(v, float) else f"{k}={v}" for k, v in params.items())
    print(f"trial {trial.number}: {shown} -> {run_dir}", flush=True)
    try:
        summary = fit(point, run_dir, quiet=quiet, stop=stop, on_epoch=report)
    except optuna.TrialPruned:
        study.tell(trial, state=states.PRUNED)
        return "pruned"
    except CvtoolError as exc:  # a diverging trial (non-finite loss) fails alone; the search goes on
        trial.set_user_attr("error", str(exc))
        study.tell(trial, state=states.FAIL)
        print(f"trial {trial.number} failed: {exc}", flush=True)
        return "failed"
    value = summary.get("best_value")
    if value is None or value != value:
        trial.set_user_attr("error", f"no finite {monitor}")
        study.tell(trial, state=states.FAIL)
        return "failed"
    study.tell(trial, float(value))
    return "complete"


def run_search(recipe: Recipe, search_dir: Path, *, resume: bool = False, worker: bool = False,
               quiet: bool = False, stop: Any = None, requeue: bool | None = None) -> dict[str, Any]:
    """Run trials until `search.trials` are claimed (by this process and any other worker);
    returns the ranked table (also in search.json / search.csv and plots/). `requeue` (default:
    a resumed first process) voids the trials an interrupted process left running."""
    study = run_trials(recipe, search_dir, resume=resume, worker=worker, quiet=quiet, stop=stop, requeue=requeue)
    return rank_search(recipe, search_dir, study)


def run_trials(recipe: Recipe, search_dir: Path, *, resume: bool = False, worker: bool = False,
               quiet: bool = False, stop: Any = None, requeue: bool | None = None) -> Any:
    """Claim and train trials until `search.trials` are claimed; returns the study."""
    run = RunDir(search_dir)
    if not worker or not run.recipe.is_file():
        write_text(run.recipe, recipe_to_yaml(recipe))
    probe = open_study(recipe, search_dir, None)
    # a resumed or extra worker must not replay the first process's random draws
    seed = None if worker else recipe.seed + len(probe.get_trials(deepcopy=False))
    study = open_study(recipe, search_dir, seed)
    if (resume and not worker) if requeue is None else requeue:
        requeue_stale(study)
    limit = target_trials(recipe)
    while (trial := claim_trial(study, limit)) is not None:
        run_trial(recipe, search_dir, study, trial, quiet, stop)
    return study


def start_search(recipe: Recipe, search_dir: Path, *, resume: bool, worker: bool, overwrite: bool = False,
                 quiet: bool, stop: Any, dist: Any, recipe_file: Path | None = None) -> dict[str, Any]:
    """`cvtool train` of a recipe with `search:`: the first process, a resumed one or a worker.
    The processes of one search share its folder's lock; whichever comes first creates and marks
    the folder while the others wait, so processes started together work in any order."""
    from cvtool.runs.lock import join, owner_of

    if recipe.search is None:
        raise CvtoolError("--search-worker: the recipe has no search: section")
    if dist is not None:
        raise CvtoolError("search: trials run one process each (start more --search-worker processes "
                          "instead of torchrun)")
    alone: list[bool] = []

    def setup(first: bool) -> None:
        alone.append(first)
        if first:
            _set_up(recipe, search_dir, resume, worker, overwrite, recipe_file)
        elif overwrite:
            raise CvtoolError(f"{search_dir}: --overwrite refused: other processes of this search are running in it")

    join(owner_of(search_dir) or search_dir, setup)
    return run_search(recipe, search_dir, resume=resume, worker=worker, quiet=quiet, stop=stop,
                      requeue=resume and not worker and alone[0])


def _set_up(recipe: Recipe, search_dir: Path, resume: bool, worker: bool, overwrite: bool,
            recipe_file: Path | None) -> None:
    """The first process of a search (others wait): the folder prepared like a run's (a worker
    only creates and marks it, and joins a search folder that is there)."""
    from cvtool.runs.placement import clean_stale, mark
    from cvtool.runs.sweep import check_run_paths, prepare_now

    if not worker:
        return prepare_now(search_dir, resume, overwrite, recipe, recipe_file)
    check_run_paths(search_dir, False, recipe, recipe_file)
    clean_stale(search_dir)
    folder = RunDir(search_dir)
    if not search_dir.is_dir() or not any(search_dir.iterdir()):
        mark(search_dir, "search")
    elif not folder.is_marked():
        raise CvtoolError(f"{search_dir}: holds files that are not a cvtool run; choose a new or empty --out")
    elif folder.is_run():
        raise CvtoolError(f"{search_dir}: holds a cvtool run, not a search; choose another --out")
