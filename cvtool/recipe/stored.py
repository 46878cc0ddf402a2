"""Recipes that cvtool wrote itself (a run's recipe.yaml, a checkpoint's recipe), read back.

Before `optim`, `schedule` and `loss` had one class per name, cvtool wrote every key of those
sections whatever the name (`momentum: 0.9` under adam, `step_size: 10` under cosine). Such a key
was never read when that run trained, so dropping it gives exactly the recipe that ran. What a
user writes (recipe files, --set) is not read this way: there such a key is an error.
"""

from __future__ import annotations

import copy
from collections.abc import Collection
from typing import Any

from cvtool.recipe.schema import Recipe
from cvtool.recipe.training_config import (
    LOSS_VARIANTS,
    OPTIM_VARIANTS,
    SCHEDULE_VARIANTS,
    OptimPatch,
    auto_loss_keys,
)
from cvtool.tasks import TASKS

_SECTIONS = {"optim": OPTIM_VARIANTS, "schedule": SCHEDULE_VARIANTS, "loss": LOSS_VARIANTS}


def drop_unread(data: dict[str, Any], keep: Collection[str] = ()) -> dict[str, Any]:
    """A copy of a stored recipe mapping without the optim / schedule / loss keys its names do not
    read (phases too); keys given with --set (`keep`, dotted) stay and are checked as usual."""
    data = copy.deepcopy(data)
    task = data.get("task", Recipe.model_fields["task"].default)
    for section, options in _SECTIONS.items():
        value = data.get(section)
        if not isinstance(value, dict) or section in keep:
            continue
        name = value.get("name", Recipe.model_fields[section].default.name)
        variant = options.get(name) if isinstance(name, str) else None
        if variant is None:
            continue  # validation names the error
        resolvable = getattr(variant, "stand_in", False) and isinstance(task, str) and task in TASKS
        reads = auto_loss_keys(task) if resolvable else variant.model_fields
        known = {key for cls in options.values() for key in cls.model_fields}
        for key in [key for key in value if key != "name" and f"{section}.{key}" not in keep]:
            if key in known and key not in reads:
                del value[key]
    if "phases" not in keep:
        _drop_unread_in_phases(data)
    return data


def _drop_unread_in_phases(data: dict[str, Any]) -> None:
    """Each phase's optimizer keys that the optimizer in force after it does not read."""
    phases, optim = data.get("phases"), data.get("optim")
    name = optim.get("name", "sgd") if isinstance(optim, dict) else "sgd"
    for phase in phases if isinstance(phases, list) else []:
        patch = phase.get("optim") if isinstance(phase, dict) else None
        if not isinstance(patch, dict):
            continue
        name = patch.get("name") or name
        variant = OPTIM_VARIANTS.get(name) if isinstance(name, str) else None
        if variant is None:
            return
        for key in [key for key in patch if key in OptimPatch.model_fields and key not in variant.model_fields]:
            del patch[key]
