"""A recipe's `search:` space: Optuna suggestions per key, and the recipe of one trial."""

from __future__ import annotations

from typing import Any

from cvtool.errors import CvtoolError
from cvtool.recipe.experiments import SearchConfig, SearchRange
from cvtool.recipe.load import expansion_base, set_dotted, validate
from cvtool.recipe.messages import _one_line
from cvtool.recipe.schema import Recipe
from cvtool.recipe.sweep import sweep_point_name


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


def trial_recipe(recipe: Recipe, params: dict[str, Any], source: str = "<recipe>") -> Recipe:
    """The recipe with `params` set (dotted keys), validated as a whole; no `search:` left."""
    for key in params:
        head = key.split(".")[0]
        if head in ("search", "sweep", "name", "base"):
            raise CvtoolError(_one_line(f"{source}: search.space.{key}: cannot search over {head}"))
    data, stored = expansion_base(recipe, "search", params, f"{source}: search.space")
    for key, value in params.items():
        set_dotted(data, key, value, f"{source}: search.space")
    return validate(data, f"{source}: search.space point {sweep_point_name(params)}", stored=stored)


def corner_points(space: SearchConfig) -> list[dict[str, Any]]:
    """The lowest and the highest point of the space, and every other listed value (the rest at
    their lowest): load time checks each is a valid recipe (`optim.name: [sgd, adam, adamw]`
    with momentum set fails at adam, not in the middle of the search)."""
    ends = []
    for pick in (0, -1):
        ends.append({key: ((spec.low, spec.high)[pick] if isinstance(spec, SearchRange) else spec[pick])
                     for key, spec in space.space.items()})
    for key, spec in space.space.items():
        if isinstance(spec, list):
            ends += [{**ends[0], key: value} for value in spec[1:-1]]
    return ends
