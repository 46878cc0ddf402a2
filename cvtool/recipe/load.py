"""YAML -> `base:` merge -> `--set` overrides -> one validated, frozen `Recipe`.

Every user mistake becomes one `CvtoolError` line naming the file and the dotted key.
"""

from __future__ import annotations

import copy
import itertools
from collections.abc import Iterable, Sequence
from pathlib import Path
from typing import Any

import yaml
from pydantic import BaseModel, ValidationError

from cvtool.errors import CvtoolError
from cvtool.recipe.schema import Recipe
from cvtool.registry import suggest


def read_yaml(path: Path) -> dict[str, Any]:
    """One YAML mapping from `path`, or a one-line error naming it."""
    if not path.is_file():
        raise CvtoolError(f"{path}: recipe file not found")
    try:
        data = yaml.safe_load(path.read_text(encoding="utf-8"))
    except yaml.YAMLError as exc:
        mark = getattr(exc, "problem_mark", None)
        where = f" at line {mark.line + 1}" if mark is not None else ""
        problem = getattr(exc, "problem", None) or "invalid YAML"
        raise CvtoolError(f"{path}: invalid YAML{where}: {problem}") from None
    except UnicodeDecodeError:
        raise CvtoolError(f"{path}: not a UTF-8 text file") from None
    if data is None:
        data = {}
    if not isinstance(data, dict):
        raise CvtoolError(f"{path}: a recipe must be a YAML mapping, got {type(data).__name__}")
    return data


def deep_merge(base: dict[str, Any], over: dict[str, Any]) -> dict[str, Any]:
    """`over` on top of `base`; nested mappings merge, everything else replaces."""
    merged = copy.deepcopy(base)
    for key, value in over.items():
        if isinstance(value, dict) and isinstance(merged.get(key), dict):
            merged[key] = deep_merge(merged[key], value)
        else:
            merged[key] = copy.deepcopy(value)
    return merged


def resolve_bases(path: Path, chain: tuple[Path, ...] = ()) -> dict[str, Any]:
    """The raw mapping of `path` with its `base:` files merged underneath (relative to it)."""
    path = path.resolve()
    if path in chain:
        cycle = " -> ".join(p.name for p in (*chain, path))
        raise CvtoolError(f"{chain[0]}: circular base: {cycle}")
    data = read_yaml(path)
    base_ref = data.pop("base", None)
    if base_ref is None:
        return data
    refs = base_ref if isinstance(base_ref, list) else [base_ref]
    merged: dict[str, Any] = {}
    for ref in refs:
        if not isinstance(ref, str):
            raise CvtoolError(f"{path}: base: must be a file path or a list of them")
        base_path = (path.parent / ref)
        if not base_path.is_file():
            raise CvtoolError(f"{path}: base: file not found: {ref}")
        merged = deep_merge(merged, resolve_bases(base_path, (*chain, path)))
    return deep_merge(merged, data)


def parse_override(text: str) -> tuple[str, Any]:
    """'optim.lr=0.05' -> ('optim.lr', 0.05); the value is read as YAML."""
    key, sep, raw = text.partition("=")
    key = key.strip()
    if not sep or not key:
        raise CvtoolError(f"--set {text}: expected key=value, e.g. --set optim.lr=0.05")
    try:
        value = yaml.safe_load(raw) if raw.strip() else ""
    except yaml.YAMLError:
        value = raw
    return key, value


def set_dotted(data: dict[str, Any], key: str, value: Any, source: str) -> None:
    """Set `a.b.c` in nested dicts, creating sections as needed."""
    parts = key.split(".")
    node = data
    for depth, part in enumerate(parts[:-1]):
        child = node.get(part)
        if child is None:
            child = node[part] = {}
        if not isinstance(child, dict):
            where = ".".join(parts[: depth + 1])
            raise CvtoolError(f"{source}: {key}: {where} is not a section")
        node = child
    node[parts[-1]] = value


def apply_overrides(data: dict[str, Any], overrides: Iterable[str]) -> tuple[dict[str, Any], set[str]]:
    result = copy.deepcopy(data)
    keys: set[str] = set()
    for text in overrides:
        key, value = parse_override(text)
        set_dotted(result, key, value, "--set")
        keys.add(key)
    return result, keys


def _fields_at(model: type[BaseModel], loc: Sequence[Any]) -> list[str]:
    """Field names of the section that `loc` points into (for 'did you mean')."""
    current: Any = model
    for part in loc[:-1]:
        if isinstance(current, type) and issubclass(current, BaseModel) and part in current.model_fields:
            current = _section_type(current.model_fields[part].annotation)
        else:
            return []
    if isinstance(current, type) and issubclass(current, BaseModel):
        return list(current.model_fields)
    return []


def _section_type(annotation: Any) -> Any:
    """The BaseModel inside `X | None`-style annotations, or the annotation itself."""
    for arg in getattr(annotation, "__args__", ()) or ():
        if isinstance(arg, type) and issubclass(arg, BaseModel):
            return arg
    return annotation


def format_validation_error(exc: ValidationError, source: str, set_keys: set[str]) -> str:
    # In a union (normalize: auto | {mean, std}) the deepest error is the informative one.
    err = max(exc.errors(), key=lambda e: (len(e["loc"]), e["type"] == "extra_forbidden"))
    loc = [part for part in err["loc"] if not _is_union_tag(part)]
    dotted = _dotted(loc)
    from_set = any(_dotted_prefix(dotted, k) for k in set_keys)
    origin = f"{source}: --set" if from_set else source
    if err["type"] == "extra_forbidden":
        options = _fields_at(Recipe, loc)
        prefix = ".".join(str(p) for p in loc[:-1])
        hint = suggest(str(loc[-1]), options)
        if hint and prefix:
            hint = hint.replace("mean ", f"mean {prefix}.")
        return f"{origin}: {dotted}: unknown key{hint}"
    if err["type"] == "missing":
        what = "value" if isinstance(loc[-1], int) else "key"
        return f"{origin}: {dotted}: required {what} is missing"
    message = err["msg"].removeprefix("Value error, ")
    if "input" in err and err["type"] not in ("model_type", "dict_type") and not isinstance(err["input"], dict):
        message += f" (got {err['input']!r})"
    return f"{origin}: {dotted or '<recipe>'}: {message}"


def _is_union_tag(part: Any) -> bool:
    """pydantic names union branches in error locations ('NormStats', "literal['auto',...]")."""
    return isinstance(part, str) and (part[:1].isupper() or part.startswith(_TAG_PREFIXES))


_TAG_PREFIXES = ("literal[", "function-", "list[", "tuple[", "dict[", "float", "int", "str", "bool")


def _dotted_prefix(dotted: str, key: str) -> bool:
    return dotted == key or dotted.startswith((key + ".", key + "["))


def _dotted(loc: Sequence[Any]) -> str:
    text = ""
    for part in loc:
        text += f"[{part}]" if isinstance(part, int) else ("." if text else "") + str(part)
    return text


def validate(data: dict[str, Any], source: str, set_keys: set[str] = frozenset()) -> Recipe:
    """The frozen `Recipe` for a raw mapping, or one error line naming source and key."""
    try:
        recipe = Recipe.model_validate(data)
    except ValidationError as exc:
        raise CvtoolError(format_validation_error(exc, source, set(set_keys))) from None
    _check_names(recipe, source)
    return recipe


def _check_names(recipe: Recipe, source: str) -> None:
    """Names that need torchvision to check: transforms and model architectures."""
    from cvtool.data.transforms import check_transform_specs
    from cvtool.models.registry import check_arch

    for key, specs in (("augment", recipe.augment), ("tta.transforms", recipe.tta.transforms or [])):
        try:
            check_transform_specs(specs, key)
        except CvtoolError as exc:
            raise CvtoolError(f"{source}: {exc}") from None
    try:
        check_arch(recipe.model.arch)
    except CvtoolError as exc:
        raise CvtoolError(f"{source}: model.arch: {exc}") from None


def load_raw(path: str | Path, overrides: Iterable[str] = ()) -> tuple[dict[str, Any], set[str]]:
    """The merged mapping (bases, then overrides) and the keys that came from --set."""
    data = resolve_bases(Path(path))
    return apply_overrides(data, overrides)


def load_recipe(path: str | Path, overrides: Iterable[str] = ()) -> Recipe:
    """Load, merge and validate one recipe (its sweep, if any, is validated point by point)."""
    data, set_keys = load_raw(path, overrides)
    recipe = validate(data, str(path), set_keys)
    if recipe.sweep:
        expand_sweep(recipe, str(path))
    return recipe


def recipe_from_dict(data: dict[str, Any], source: str = "<recipe>") -> Recipe:
    return validate(copy.deepcopy(data), source)


def sweep_point_name(point: dict[str, Any]) -> str:
    """A folder name for one grid point: 'dropout=0.4_lr=0.01'."""
    parts = []
    for key, value in point.items():
        text = str(value).replace("/", "-").replace(" ", "")
        parts.append(f"{key.split('.')[-1]}={text}")
    return "_".join(parts) or "point"


def expand_sweep(recipe: Recipe, source: str = "<recipe>") -> list[tuple[str, Recipe]]:
    """One (name, recipe) per grid point; each point is validated as a whole recipe."""
    if not recipe.sweep:
        return [("", recipe)]
    base = recipe.model_dump(mode="json", exclude={"sweep"})
    keys = list(recipe.sweep)
    for key, values in recipe.sweep.items():
        if not values:
            raise CvtoolError(f"{source}: sweep.{key}: needs at least one value")
    points = []
    for combo in itertools.product(*(recipe.sweep[k] for k in keys)):
        point = dict(zip(keys, combo, strict=True))
        data = copy.deepcopy(base)
        for key, value in point.items():
            if key.split(".")[0] in ("sweep", "name"):
                raise CvtoolError(f"{source}: sweep.{key}: cannot sweep over {key.split('.')[0]}")
            set_dotted(data, key, value, f"{source}: sweep")
        try:
            point_recipe = Recipe.model_validate(data)
        except ValidationError as exc:
            line = format_validation_error(exc, source, set())
            raise CvtoolError(line.replace(f"{source}: ", f"{source}: sweep: ", 1)) from None
        points.append((sweep_point_name(point), point_recipe))
    return points


def recipe_to_yaml(recipe: Recipe) -> str:
    return yaml.safe_dump(recipe.model_dump(mode="json"), sort_keys=False, default_flow_style=None)
