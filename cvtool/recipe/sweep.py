"""A recipe's `sweep:` grid: one validated recipe per point, each with a folder name."""

from __future__ import annotations

import copy
import itertools
import math
import re
from collections.abc import Callable
from typing import Any

from cvtool.errors import CvtoolError
from cvtool.recipe.load import expansion_base, set_dotted, validate
from cvtool.recipe.messages import _one_line
from cvtool.recipe.schema import Recipe

MAX_SWEEP_POINTS = 1000  # a bigger grid is a typo, not a plan: each point is a training run


def sweep_point_name(point: dict[str, Any]) -> str:
    """A folder name for one grid point: 'dropout=0.4_lr=0.01'; a whole section with a name
    (`schedule: [{name: cosine, T_max: 100}, ...]`) is named by it: 'schedule=cosine'."""
    parts = []
    for key, value in point.items():
        if isinstance(value, dict) and isinstance(value.get("name"), str):
            value = value["name"]
        text = str(value).replace("/", "-").replace("\\", "-")
        text = re.sub(r"[\s:*?\"'<>|]+", "", text)
        parts.append(f"{key.split('.')[-1]}={text}")
    return "_".join(parts) or "point"


def expand_sweep(recipe: Recipe, source: str = "<recipe>",
                 check: Callable[[Recipe, str], None] | None = None) -> list[tuple[str, Recipe]]:
    """One (name, recipe) per grid point; each point is validated as a whole recipe (and by
    `check`, which names the source of an error)."""
    if not recipe.sweep:
        return [("", recipe)]
    for key, values in recipe.sweep.items():
        head = key.split(".")[0]
        if head in ("sweep", "name", "base"):
            raise CvtoolError(_one_line(f"{source}: sweep.{key}: cannot sweep over {head}"))
        if not values:
            raise CvtoolError(_one_line(f"{source}: sweep.{key}: needs at least one value"))
    count = math.prod(len(values) for values in recipe.sweep.values())
    if count > MAX_SWEEP_POINTS:
        raise CvtoolError(f"{source}: sweep: {count} grid points (more than {MAX_SWEEP_POINTS} runs)")
    base, stored = expansion_base(recipe, "sweep", recipe.sweep, f"{source}: sweep")
    keys = list(recipe.sweep)
    points: list[tuple[str, Recipe]] = []
    seen: set[str] = set()
    for combo in itertools.product(*(recipe.sweep[k] for k in keys)):
        point = dict(zip(keys, combo, strict=True))
        data = copy.deepcopy(base)
        for key, value in point.items():
            set_dotted(data, key, value, f"{source}: sweep")
        name = sweep_point_name(point)
        if name in seen:
            raise CvtoolError(_one_line(f"{source}: sweep: two grid points are both named {name}"
                                        " (a value is repeated)"))
        seen.add(name)
        point_recipe = validate(data, f"{source}: sweep point {name}", stored=stored)
        if check is not None:
            check(point_recipe, f"{source}: sweep point {name}")
        points.append((name, point_recipe))
    return points
