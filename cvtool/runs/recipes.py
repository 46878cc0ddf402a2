"""Loading a recipe as every command does: the recipe layer's parse, merge and schema
validation, then the names only the data and model packages can check (torchvision
transforms, built once; architectures), for the recipe and each point of its sweep."""

from __future__ import annotations

from collections.abc import Collection, Iterable
from pathlib import Path

from cvtool.data.transforms import build_transform, point_blind
from cvtool.errors import CvtoolError
from cvtool.models.registry import check_arch
from cvtool.recipe.load import keep_written, load_raw, validate
from cvtool.recipe.messages import _from_set, _one_line
from cvtool.recipe.schema import Recipe
from cvtool.recipe.sweep import expand_sweep as _expand_grid
from cvtool.tasks import get_task


def load_recipe(path: str | Path, overrides: Iterable[str] = (), stored: bool = False) -> Recipe:
    """Load, merge and validate one recipe (its sweep, if any, is validated point by point).
    `stored`: a recipe.yaml that cvtool wrote into a run dir, perhaps an earlier version (keys its
    optimizer / schedule / loss names do not read are dropped; --set values stay strict)."""
    data, set_keys = load_raw(path, overrides)
    recipe = validate(data, str(path), set_keys, stored=stored)
    if stored:
        recipe = keep_written(recipe, data)
    check_names(recipe, str(path), set_keys)
    if recipe.sweep:
        expand_sweep(recipe, str(path))
    if recipe.search:
        from cvtool.recipe.search_space import corner_points, trial_recipe

        for point in corner_points(recipe.search):
            check_names(trial_recipe(recipe, point, str(path)), f"{path}: search.space")
    return recipe


def expand_sweep(recipe: Recipe, source: str = "<recipe>") -> list[tuple[str, Recipe]]:
    """The sweep's points, each checked like a recipe of its own."""
    return _expand_grid(recipe, source, check_names)


def check_names(recipe: Recipe, source: str, set_keys: Collection[str] = ()) -> None:
    """Names that need torchvision to check: transforms (built once), architectures, weights names."""
    for key, specs in (("augment", recipe.augment), ("tta.transforms", recipe.tta.transforms or [])):
        origin = f"{source}: --set" if _from_set(key, "", set_keys) else source
        for index, spec in enumerate(specs):
            where = f"{key}[{index}]"
            try:
                build_transform(spec, where)
            except CvtoolError as exc:
                raise CvtoolError(_one_line(f"{origin}: {exc}")) from None
            except Exception as exc:  # torchvision refusing user-given arguments
                reason = (str(exc).strip().splitlines() or [type(exc).__name__])[0]
                raise CvtoolError(_one_line(f"{origin}: {where}: cannot build this transform: {reason}")) from None
    for key, specs in (("augment", recipe.augment), ("tta.transforms", recipe.tta.transforms or [])):
        if problem := get_task(recipe.task).check_point_blind(point_blind(specs)):
            origin = f"{source}: --set" if _from_set(key, "", set_keys) else source
            raise CvtoolError(f"{origin}: {key}: {problem}")
    try:
        check_arch(recipe.model.arch)
    except CvtoolError as exc:
        origin = f"{source}: --set" if _from_set("model.arch", "", set_keys) else source
        raise CvtoolError(_one_line(f"{origin}: model.arch: {exc}")) from None
    from cvtool.models.pretrained import resolve_weights

    try:  # weights names (no download): `pretrained: IMAGENET1K_V3` is refused before any data is read
        resolve_weights(recipe.model)
    except CvtoolError as exc:
        origin = f"{source}: --set" if _from_set("model.pretrained", "", set_keys) else source
        raise CvtoolError(_one_line(f"{origin}: {exc}")) from None
