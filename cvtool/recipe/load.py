"""YAML -> `base:` merge -> `--set` overrides -> one validated, frozen `Recipe`.

Every user mistake becomes one `CvtoolError` line naming the file (or `--set`) and the
dotted key, e.g. `recipes/x.yaml: optim.lrr: unknown key (did you mean optim.lr?)`.
"""

from __future__ import annotations

import copy
from collections.abc import Collection, Iterable
from pathlib import Path
from typing import Any

import yaml
from pydantic import ValidationError

from cvtool.errors import CvtoolError
from cvtool.recipe.messages import _kind, _one_line, _show, format_validation_error
from cvtool.recipe.schema import Recipe
from cvtool.recipe.stored import drop_unread


class _RecipeLoader(getattr(yaml, "CSafeLoader", yaml.SafeLoader)):  # libyaml when built
    """SafeLoader that refuses repeated keys (PyYAML keeps the last one silently)."""

    def construct_mapping(self, node: yaml.MappingNode, deep: bool = False) -> dict[Any, Any]:
        seen: dict[Any, int] = {}
        for key_node, _ in node.value:
            if key_node.tag == "tag:yaml.org,2002:merge" or not isinstance(key_node, yaml.ScalarNode):
                continue
            key = self.construct_object(key_node)
            if key in seen:
                raise yaml.constructor.ConstructorError(
                    None, None, f"duplicate key {key!r} (first at line {seen[key] + 1})", key_node.start_mark)
            seen[key] = key_node.start_mark.line
        return super().construct_mapping(node, deep)


def _parse_yaml(text: str) -> Any:
    return yaml.load(text, Loader=_RecipeLoader)  # a SafeLoader subclass: builds no Python objects


def read_yaml(path: Path) -> dict[str, Any]:
    """One YAML mapping from `path`, or a one-line error naming it."""
    if path.is_dir():
        raise CvtoolError(f"{path}: is a folder, not a recipe file")
    if not path.is_file():
        raise CvtoolError(f"{path}: recipe file not found")
    try:
        text = path.read_text(encoding="utf-8-sig")
        data = _parse_yaml(text)
    except UnicodeDecodeError as exc:
        raise CvtoolError(f"{path}: not a UTF-8 text file (byte {exc.start})") from None
    except OSError as exc:
        raise CvtoolError(f"{path}: cannot read: {exc.strerror or exc}") from None
    except yaml.YAMLError as exc:
        raise CvtoolError(_one_line(f"{path}: invalid YAML{_yaml_where(exc, text)}")) from None
    if data is None:
        data = {}
    if not isinstance(data, dict):
        raise CvtoolError(f"{path}: a recipe must be a YAML mapping of keys, got {_kind(data)}")
    return data


def _yaml_where(exc: yaml.YAMLError, text: str) -> str:
    """' at line 3, column 7: <problem>' from a PyYAML error."""
    if isinstance(exc, yaml.reader.ReaderError):
        line = text[: exc.position].count("\n") + 1
        return f" at line {line}: {exc.reason} (#x{exc.character:04x})"
    mark = getattr(exc, "problem_mark", None)
    where = f" at line {mark.line + 1}, column {mark.column + 1}" if mark is not None else ""
    message = f"{where}: {getattr(exc, 'problem', None) or 'cannot parse'}"
    context, start = getattr(exc, "context", None), getattr(exc, "context_mark", None)
    if context and start is not None and (mark is None or start.line != mark.line):
        message += f" ({context} at line {start.line + 1})"  # e.g. where an unclosed bracket opened
    return message


def deep_merge(base: dict[str, Any], over: dict[str, Any]) -> dict[str, Any]:
    """`over` on top of `base`; nested mappings merge, everything else replaces."""
    merged = copy.deepcopy(base)
    for key, value in over.items():
        if isinstance(value, dict) and isinstance(merged.get(key), dict):
            merged[key] = deep_merge(merged[key], value)
        else:
            merged[key] = copy.deepcopy(value)
    return merged


def resolve_bases(path: Path, chain: tuple[Path, ...] = (), top: Path | None = None) -> dict[str, Any]:
    """The raw mapping of `path` with its `base:` files merged underneath (relative to it)."""
    top = top or path
    real = path.resolve()
    if real in chain:
        cycle = " -> ".join(p.name for p in (*chain, real))
        raise CvtoolError(f"{top}: circular base: {cycle}")
    data = read_yaml(path)
    base_ref = data.pop("base", None)
    if base_ref is None:
        return data
    refs = base_ref if isinstance(base_ref, list) else [base_ref]
    merged: dict[str, Any] = {}
    for ref in refs:
        if not isinstance(ref, str) or not ref.strip():
            raise CvtoolError(f"{path}: base: expected a file path or a list of them, got {_show(ref)}")
        base_path = path.parent / ref
        if not base_path.is_file():
            raise CvtoolError(f"{path}: base: file not found: {ref}")
        merged = deep_merge(merged, resolve_bases(base_path, (*chain, real), top))
    return deep_merge(merged, data)


def parse_override(text: str) -> tuple[str, Any]:
    """'optim.lr=0.05' -> ('optim.lr', 0.05); the value is read as YAML."""
    key, sep, raw = text.partition("=")
    key = key.strip()
    if not sep or not key:
        raise CvtoolError(_one_line(f"--set {text}: expected key=value, e.g. --set optim.lr=0.05"))
    try:
        value = _parse_yaml(raw) if raw.strip() else ""
    except yaml.YAMLError:
        value = raw
    return key, value


def set_dotted(data: dict[str, Any], key: str, value: Any, source: str) -> None:
    """Set `a.b.c` in nested dicts, creating sections as needed."""
    parts = key.split(".")
    if not all(part.strip() for part in parts):
        raise CvtoolError(_one_line(f"{source}: {key}: expected a dotted key such as optim.lr"))
    node = data
    for depth, part in enumerate(parts[:-1]):
        child = node.get(part)
        if child is None:
            child = node[part] = {}
        if not isinstance(child, dict):
            where = ".".join(parts[: depth + 1])
            raise CvtoolError(_one_line(f"{source}: {key}: {where} is {_kind(child)}, not a section"))
        node = child
    node[parts[-1]] = value


def apply_overrides(data: dict[str, Any], overrides: Iterable[str]) -> tuple[dict[str, Any], set[str]]:
    """A copy of `data` with each 'key=value' set, and the keys that were set."""
    result = copy.deepcopy(data)
    keys: set[str] = set()
    for text in overrides:
        key, value = parse_override(text)
        if key.split(".")[0] == "base":
            raise CvtoolError(_one_line(f"--set {text}: bases are merged before --set; put base: in the recipe"))
        set_dotted(result, key, value, "--set")
        keys.add(key)
    return result, keys


def validate(data: dict[str, Any], source: str, set_keys: Collection[str] = frozenset(),
             stored: bool = False) -> Recipe:
    """The frozen `Recipe` for a raw mapping, or one error line naming source and key. `stored`:
    cvtool wrote the mapping (a run's recipe.yaml, a checkpoint): keys that earlier versions wrote
    for every optimizer / schedule / loss name are dropped where the name does not read them."""
    if not isinstance(data, dict):
        raise CvtoolError(f"{source}: a recipe must be a mapping of keys, got {_kind(data)}")
    if stored:
        data = drop_unread(data, keep=set_keys)
    try:
        recipe = Recipe.model_validate(data)
    except ValidationError as exc:
        raise CvtoolError(format_validation_error(exc, source, set_keys, data)) from None
    return recipe


def load_raw(path: str | Path, overrides: Iterable[str] = ()) -> tuple[dict[str, Any], set[str]]:
    """The merged mapping (bases, then overrides) and the keys that came from --set."""
    data = resolve_bases(Path(path))
    return apply_overrides(data, overrides)


def keep_written(recipe: Recipe, data: dict[str, Any]) -> Recipe:
    """`recipe` with the mapping cvtool stored for it, when it has a sweep or search. A point of an
    older version's sweep over optim.name needs keys the parent's name does not read (betas for
    the adam point of an sgd parent), and must drop those that only the parent's name reads."""
    if recipe.sweep or recipe.search:
        recipe._written = copy.deepcopy(data)
    return recipe


def expansion_base(recipe: Recipe, exclude: str, keys: Iterable[str], source: str) -> tuple[dict[str, Any], bool]:
    """The mapping a sweep point or search trial of `recipe` is built on, and whether it is read as
    a stored recipe: the mapping cvtool stored (`keep_written`), else the keys the recipe set (not
    every default: a point that switches optim.name must not meet a momentum nobody wrote)."""
    probe = recipe.model_dump(mode="json", exclude={exclude})
    for key in keys:  # refused against the whole recipe: seed.value where seed is a number
        set_dotted(probe, key, None, source)
    if recipe._written is not None:
        return {key: value for key, value in copy.deepcopy(recipe._written).items() if key != exclude}, True
    return recipe.model_dump(mode="json", exclude={exclude}, exclude_unset=True), False


def recipe_from_dict(data: dict[str, Any], source: str = "<recipe>") -> Recipe:
    """Validate the recipe stored in a checkpoint (written by any cvtool version)."""
    return validate(copy.deepcopy(data), source, stored=True)


class _RecipeDumper(yaml.SafeDumper):
    """Block-style sections (short lines, one key each); lists of plain values on one line."""


def _represent_list(dumper: yaml.SafeDumper, data: list[Any]) -> yaml.SequenceNode:
    flow = all(not isinstance(item, dict | list) for item in data)
    return dumper.represent_sequence("tag:yaml.org,2002:seq", data, flow_style=flow)


_RecipeDumper.add_representer(list, _represent_list)


def recipe_to_yaml(recipe: Recipe) -> str:
    """The resolved recipe as YAML; loading it again gives an equal recipe. A sweep or search read
    back from a run dir is written as it was stored (`keep_written`): its points need all of it."""
    data = recipe._written if recipe._written is not None else recipe.model_dump(mode="json")
    return yaml.dump(data, Dumper=_RecipeDumper, sort_keys=False,
                     default_flow_style=False)  # ASCII: any text file encoding can hold it
