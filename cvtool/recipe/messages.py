"""Pydantic validation errors -> one readable line naming the file (or --set) and the key."""

from __future__ import annotations

import difflib
import re
import typing
from collections.abc import Collection, Sequence
from typing import Any

import yaml
from pydantic import BaseModel, ValidationError

from cvtool.recipe.schema import Recipe
from cvtool.recipe.training_config import not_a_setting, variants
from cvtool.registry import suggest

PathPart = tuple[Any, bool]  # (key or list index, is_index)

_EXPECTED = {  # pydantic type-mismatch errors -> what the key expects
    "bool_type": "true or false", "bool_parsing": "true or false",
    "int_type": "an integer", "int_parsing": "an integer", "int_from_float": "an integer",
    "float_type": "a number", "float_parsing": "a number", "finite_number": "a finite number",
    "string_type": "a string", "path_type": "a path", "none_required": "null",
    "list_type": "a list", "tuple_type": "a list", "set_type": "a list",
    "dict_type": "a mapping", "model_type": "a mapping", "model_attributes_type": "a mapping",
}
_PRIORITY = {"extra_forbidden": 3, "invalid_key": 3, "missing": 2}


def format_validation_error(exc: ValidationError, source: str, set_keys: Collection[str], data: Any) -> str:
    """One line for the most specific error: '<source>: <dotted.key>: <what is wrong>'.

    `data` is the mapping that was validated: it tells the user's keys from pydantic's union tags."""
    errors = [(_real_path(err["loc"], data, err["type"]), err) for err in exc.errors()]
    errors = [(path + [("name", False)] if err["type"] == "union_tag_invalid" else path, err) for path, err in errors]
    path, err = max(errors, key=lambda item: (len(item[0]), _priority(item[1])))
    dotted = _dotted(path)
    member = _union_member(err["loc"]) if err["type"] == "extra_forbidden" and path else None
    if member is not None:
        message = _not_in_member(path, *member)
    elif err["type"] == "union_tag_invalid":
        message = _bad_name(err)
    elif err["type"] in ("extra_forbidden", "invalid_key"):
        parent = _dotted(path[:-1])
        close = suggest(str(path[-1][0]), _fields_at(path)) if path else ""
        message = "unknown key" + (close.replace("mean ", f"mean {parent}.") if parent else close)
    elif err["type"] == "missing":
        message = "required value is missing" if path and path[-1][1] else "required key is missing"
    elif err["type"] in _EXPECTED or err["type"] == "literal_error":
        same = [e for p, e in errors if p == path and (e["type"] in _EXPECTED or e["type"] == "literal_error")]
        message = _mismatch(same, err.get("input"))
    else:
        message = _readable(err)
    origin = f"{source}: --set" if _from_set(dotted, message, set_keys) else source
    return _one_line(f"{origin}: {dotted}: {message}" if dotted else f"{origin}: {message}")


def _union_member(loc: Sequence[Any]) -> tuple[str, dict[str, type[BaseModel]]] | None:
    """(name, {name: class}) when the last part of `loc` is a key of one class of a section union
    tagged by `name`; pydantic puts the name in the location: ('optim', 'adam', 'momentum')."""
    annotation: Any = Recipe
    member = None
    for part in loc[:-1]:
        options = variants(annotation)
        if options and isinstance(part, str) and part in options:
            annotation, member = options[part], (part, options)
        elif isinstance(annotation, type) and issubclass(annotation, BaseModel) and part in annotation.model_fields:
            annotation, member = annotation.model_fields[part].annotation, None
        else:
            return None
    return member


def _not_in_member(path: Sequence[PathPart], name: str, options: dict[str, type[BaseModel]]) -> str:
    """Another name's setting ('not a setting of optim.name adam (it applies to: sgd)'), or a typo."""
    key, section = str(path[-1][0]), _dotted(path[:-1])
    if any(key in cls.model_fields for cls in options.values()):
        return not_a_setting(section, name, key, options)
    close = difflib.get_close_matches(key, list(options[name].model_fields), n=1, cutoff=0.6)
    if close:
        return f"unknown key (did you mean {section}.{close[0]}?)"
    others = sorted({field for cls in options.values() for field in cls.model_fields})
    close = difflib.get_close_matches(key, others, n=1, cutoff=0.6)
    if not close:
        return "unknown key"
    takers = [tag for tag, cls in options.items() if close[0] in cls.model_fields and not getattr(cls, "stand_in", False)]
    return f"unknown key (did you mean {section}.{close[0]}? it applies to: {', '.join(takers)})"


def _bad_name(err: Any) -> str:
    """A `name` that is none of the section's names: 'expected 'sgd', 'adam' or 'adamw'; got 'adamm''."""
    ctx = err.get("ctx") or {}
    names = re.findall(r"'([^']*)'", str(ctx.get("expected_tags", "")))
    value = err["input"].get("name") if isinstance(err.get("input"), dict) else ctx.get("tag")
    quoted = [f"'{name}'" for name in names] or ["a name"]
    expected = ", ".join(quoted[:-1]) + " or " + quoted[-1] if len(quoted) > 1 else quoted[0]
    hint = suggest(value, names) if isinstance(value, str) and names else ""
    return f"expected {expected}; got {_show(value)}{hint}"


def _priority(err: Any) -> int:
    if err["type"] in _PRIORITY:
        return _PRIORITY[err["type"]]
    return 0 if err["type"] in _EXPECTED or err["type"] == "literal_error" else 1


def _real_path(loc: Sequence[Any], data: Any, kind: str) -> list[PathPart]:
    """The user's keys in a pydantic location, without union tags such as "literal['auto']".

    A part is a key when the data has it at that point; anything else is a tag."""
    path: list[PathPart] = []
    node = data
    for position, part in enumerate(loc):
        if isinstance(node, dict) and (key := _find_key(node, part)) is not _ABSENT:
            path.append((key, False))
            node = node[key]
        elif isinstance(node, list | tuple) and type(part) is int and 0 <= part < len(node):
            path.append((part, True))
            node = node[part]
        elif kind == "missing" and position == len(loc) - 1:
            path.append((part, isinstance(node, list | tuple) and type(part) is int))
    return path


_ABSENT = object()


def _find_key(node: dict[Any, Any], part: Any) -> Any:
    if part in node:
        return part
    # pydantic reports non-string keys (null, 1.5) by their text
    return next((key for key in node if not isinstance(key, str) and str(key) == str(part)), _ABSENT)


def _dotted(path: Sequence[PathPart]) -> str:
    text = ""
    for part, is_index in path:
        key = part if isinstance(part, str) else _show(part)  # a YAML key such as null or 1
        text += f"[{part}]" if is_index else ("." if text else "") + key
    return text


def _fields_at(path: Sequence[PathPart]) -> list[str]:
    """Field names of the section that `path` points into (for 'did you mean')."""
    current: Any = Recipe
    for part, is_index in path[:-1]:
        if is_index:
            continue
        field = current.model_fields.get(part) if isinstance(part, str) else None
        current = _model_in(field.annotation) if field is not None else None
        if current is None:
            return []
    return list(current.model_fields)


def _model_in(annotation: Any) -> type[BaseModel] | None:
    """The section class inside `X | None`, `list[X]` and similar annotations."""
    if isinstance(annotation, type) and issubclass(annotation, BaseModel):
        return annotation
    for arg in typing.get_args(annotation):
        found = _model_in(arg)
        if found is not None:
            return found
    return None


def _mismatch(errors: Sequence[Any], value: Any) -> str:
    """'expected 'auto', 'imagenet' or 'none', or a mapping; got 'imagnet' (did you mean imagenet?)'."""
    wanted: list[str] = []
    choices: list[str] = []
    for err in errors:
        if err["type"] == "literal_error":
            expected = str(err.get("ctx", {}).get("expected", ""))
            choices += re.findall(r"'([^']*)'", expected) or expected.replace(" or ", ", ").split(", ")
            text = expected
        else:
            text = _EXPECTED[err["type"]]
        if text not in wanted:
            wanted.append(text)
    hint = suggest(value, choices) if isinstance(value, str) and choices else ""
    return f"expected {', or '.join(wanted)}; got {_show(value)}{hint}"


_BOUNDS = {"greater_than": ("gt", ">"), "greater_than_equal": ("ge", ">="),
           "less_than": ("lt", "<"), "less_than_equal": ("le", "<=")}


def _readable(err: Any) -> str:
    """pydantic's message in the 'expected ...; got ...' form where it has one, without internal wording."""
    ctx = err.get("ctx") or {}
    kind, value = err["type"], err.get("input")
    if kind in _BOUNDS:
        name, op = _BOUNDS[kind]
        bound = ctx.get(name)
        expected = f"a value {op} {int(bound) if isinstance(bound, float) and bound.is_integer() else bound}"
    elif kind in ("too_short", "too_long"):
        expected = f"at least {ctx.get('min_length')} items" if kind == "too_short" else \
            f"at most {ctx.get('max_length')} items"
    elif kind == "string_pattern_mismatch":
        expected = f"text matching {ctx.get('pattern')}"
    else:
        message = err["msg"].removeprefix("Value error, ").removeprefix("Assertion failed, ")
        if "<class" in message or "instance of" in message:
            message = "has the wrong type"
        if isinstance(value, dict) or kind == "recursion_loop":
            return message
        return f"{message} (got {_show(value)})"
    return f"expected {expected}; got {_show(value)}"


def _from_set(dotted: str, message: str, set_keys: Collection[str]) -> bool:
    """Whether the error is about a key that --set touched."""
    for key in set_keys:
        if dotted == key or dotted.startswith((key + ".", key + "[")):
            return True
        if dotted and key.startswith(dotted + "."):
            return True
        if not dotted and re.search(rf"(^|\W){re.escape(key)}(\W|$)", message):
            return True
    return False


def _show(value: Any, limit: int = 60) -> str:
    """A value as the user wrote it in YAML: 'abc', null, true, [1, 2]."""
    if isinstance(value, str):
        text = repr(value)
    elif value is None or isinstance(value, bool):
        text = {None: "null", True: "true", False: "false"}[value]
    elif isinstance(value, int | float):
        text = repr(value)
    else:
        try:
            text = yaml.safe_dump(value, default_flow_style=True, width=10**6).strip().removesuffix("...").strip()
        except Exception:  # only for display
            text = _kind(value)
    return text if len(text) <= limit else text[: limit - 3] + "..."


def _kind(value: Any) -> str:
    names = {dict: "a mapping", list: "a list", str: "a string", bool: "true/false", int: "a number",
             float: "a number", type(None): "null"}
    return names.get(type(value), f"a {type(value).__name__}")


def _one_line(text: str) -> str:
    """Escape line breaks and other control characters that would split the message."""
    return "".join(c if c.isprintable() else c.encode("unicode_escape").decode("ascii") for c in text)


# ---- validation ----------------------------------------------------------------------------
