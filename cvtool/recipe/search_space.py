"""A recipe's `search:` space as recipes: the recipe of one trial's parameters, and the space's
two corners (load time checks both are valid recipes). Optuna's side of the search, and the
trials themselves, live in `cvtool/search/`; this is the recipe rule, as `recipe/sweep.py` is
for a sweep's grid."""

from __future__ import annotations

from typing import Any

from cvtool.errors import CvtoolError
from cvtool.recipe.experiments import SearchConfig, SearchRange
from cvtool.recipe.load import expansion_base, set_dotted, validate
from cvtool.recipe.messages import _one_line
from cvtool.recipe.schema import Recipe
from cvtool.recipe.sweep import sweep_point_name


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
