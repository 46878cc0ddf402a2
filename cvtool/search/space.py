"""A recipe's `search:` space as Optuna sees it: the optuna import, one suggestion per key, and
the grid of `sampler: grid` (the recipe of one trial's parameters: `recipe/search_space.py`)."""

from __future__ import annotations

from typing import Any

from cvtool.errors import CvtoolError
from cvtool.recipe.experiments import SearchConfig, SearchRange


def need_optuna() -> Any:
    try:
        import optuna
    except ImportError:
        raise CvtoolError("search: needs the 'optuna' extra (pip install 'cvtool[optuna]')") from None
    optuna.logging.set_verbosity(optuna.logging.WARNING)
    return optuna


def suggest(trial: Any, space: SearchConfig) -> dict[str, Any]:
    """One value per space key: ints stay ints, `log: true` samples log-uniformly."""
    params: dict[str, Any] = {}
    for key, spec in space.space.items():
        if isinstance(spec, SearchRange):
            if isinstance(spec.low, int) and isinstance(spec.high, int):
                params[key] = trial.suggest_int(key, spec.low, spec.high, log=spec.log)
            else:
                params[key] = trial.suggest_float(key, float(spec.low), float(spec.high), log=spec.log)
        else:
            params[key] = trial.suggest_categorical(key, spec)
    return params


def grid_space(space: SearchConfig) -> dict[str, list[Any]]:
    return {key: list(values) for key, values in space.space.items() if isinstance(values, list)}


def grid_sampler(space: SearchConfig, seed: int | None) -> Any:
    """Optuna's GridSampler without its study.stop() after the last point: that call raises outside
    `study.optimize`, and trials here are asked and told one by one; `target_trials` caps the
    search at the grid's size instead."""
    optuna = need_optuna()

    class AskTellGrid(optuna.samplers.GridSampler):
        def after_trial(self, study: Any, trial: Any, state: Any, values: Any) -> None:
            return None

    return AskTellGrid(grid_space(space), seed=seed)
