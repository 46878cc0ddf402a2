"""A search's results: trials ranked (search.json, search.csv) and Optuna's optimisation-history
and parameter-importance plots."""

from __future__ import annotations

import math
import warnings
from pathlib import Path
from typing import Any

from cvtool.errors import CvtoolError
from cvtool.fileio import write_csv, write_json
from cvtool.recipe.schema import Recipe
from cvtool.runs.layout import RunDir
from cvtool.tasks import get_task

SEARCH_PLOTS = ("optimization_history.png", "param_importances.png")
STATE_ORDER = {"complete": 0, "pruned": 1, "fail": 2, "running": 3, "waiting": 4}


def storage_of(recipe: Recipe, search_dir: Path) -> Any:
    """The search's Optuna storage: `search.storage` (a database URL: workers on many machines),
    else a journal file in the search dir (file-locked, so processes on one machine can share it)."""
    if recipe.search.storage:
        return database(recipe.search.storage)
    from optuna.storages import JournalStorage
    from optuna.storages.journal import JournalFileBackend

    return JournalStorage(JournalFileBackend(str(RunDir(search_dir).search_journal)))


def database(url: str) -> Any:
    """Optuna's RDBStorage for a SQLAlchemy URL (postgresql://, mysql+pymysql://, sqlite:///)."""
    from optuna.storages import RDBStorage

    # SQLite locks the whole file per write; its default 5 s wait fails a busy worker's tell
    engine = {"connect_args": {"timeout": 60}} if url.startswith("sqlite") else {}
    try:
        return RDBStorage(url, engine_kwargs=engine)
    except Exception as exc:  # noqa: BLE001 (SQLAlchemy's and the drivers' errors: a bad URL, no driver, no server)
        reason = str(exc).strip().splitlines()[0] if str(exc).strip() else type(exc).__name__
        raise CvtoolError(f"search.storage {_shown(url)}: {reason}") from None


def _shown(url: str) -> str:
    """The URL without its password (error lines end up in job logs)."""
    try:
        from sqlalchemy.engine import make_url

        return make_url(url).render_as_string(hide_password=True)
    except Exception:  # noqa: BLE001 (not even a URL: nothing to hide)
        return url


def trial_rows(study: Any, keys: list[str], higher: bool) -> list[dict[str, Any]]:
    """One row per counted trial, ranked: completed by value, then pruned by their last
    reported value, then failed and unfinished ones."""
    from optuna.trial import TrialState

    rows = []
    for trial in study.get_trials(deepcopy=False):
        if trial.state == TrialState.FAIL and "error" not in trial.user_attrs:
            continue  # voided: a surplus claim or an interrupted try (requeued)
        steps = sorted(trial.intermediate_values)
        value = trial.value if trial.state == TrialState.COMPLETE else (
            trial.intermediate_values[steps[-1]] if steps else None)
        run = trial.user_attrs.get("run_dir")
        rows.append({"trial": trial.number, "state": trial.state.name.lower(), "value": value,
                     "epochs": len(steps), **{key: trial.params.get(key) for key in keys},
                     "run": Path(run).name if run else None})

    def order(row: dict[str, Any]) -> tuple[int, float, int]:
        value = row["value"]
        score = math.inf if value is None or not math.isfinite(value) else (-value if higher else value)
        return STATE_ORDER.get(row["state"], 5), score, row["trial"]

    ranked = sorted(rows, key=order)
    return [{"rank": index, **row} for index, row in enumerate(ranked, start=1)]


def rank_search(recipe: Recipe, search_dir: Path, study: Any) -> dict[str, Any]:
    """Write search.json, search.csv and plots/; returns the summary `cvtool train` prints."""
    from cvtool.tasks import higher_is_better

    monitor = recipe.train.monitor or get_task(recipe.task).default_monitor
    keys = list(recipe.search.space)
    rows = trial_rows(study, keys, higher_is_better(monitor))
    counts = {state: sum(r["state"] == state for r in rows) for state in STATE_ORDER}
    run = RunDir(search_dir)
    plots = search_plots(study, run.plots)
    summary = {"search": True, "name": recipe.name, "monitor": monitor, "study": study.study_name,
               "direction": study.direction.name.lower(), "sampler": recipe.search.sampler,
               "pruner": recipe.search.pruner, "counts": counts, "trials": rows,
               "plots": [p.name for p in plots]}
    write_json(run.search, summary)
    columns = ["rank", "trial", "state", "value", "epochs", *keys, "run"]
    write_csv(run.search_table, columns, [[_cell(r.get(c)) for c in columns] for r in rows])
    return summary


def search_plots(study: Any, folder: Path) -> list[Path]:
    """Optuna's matplotlib plots of the study (importance needs two completed trials)."""
    from optuna.visualization import matplotlib as optuna_plots

    from cvtool.plots import save

    written = []
    draw = {SEARCH_PLOTS[0]: optuna_plots.plot_optimization_history,
            SEARCH_PLOTS[1]: optuna_plots.plot_param_importances}
    for name, plot in draw.items():
        with warnings.catch_warnings():
            warnings.simplefilter("ignore")  # optuna marks its matplotlib backend experimental
            try:
                axes = plot(study)
            except (ValueError, RuntimeError, ZeroDivisionError):
                continue  # too few completed trials to draw it
        figure = getattr(axes, "figure", None) or axes.flat[0].figure
        written.append(save(figure, folder / name))
    return written


def load_search(search_dir: Path) -> tuple[Recipe, Any]:
    """The recipe and Optuna study of a search directory (for `cvtool report`)."""
    from cvtool.runs.recipes import load_recipe
    from cvtool.search.space import need_optuna

    recipe = load_recipe(RunDir(search_dir).recipe, stored=True)
    optuna = need_optuna()
    study = optuna.load_study(study_name=recipe.search.study or recipe.name,
                              storage=storage_of(recipe, search_dir))
    return recipe, study


def _cell(value: Any) -> str:
    if value is None:
        return ""
    return repr(value) if isinstance(value, float) else str(value)
