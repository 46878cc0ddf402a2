"""The shape of the package, kept from decaying: imports run one way with no cycles, modules stay
small, and only cvtool/tasks/ knows the task names (README, "Architecture")."""

from __future__ import annotations

import ast
import re
from collections import defaultdict
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parents[1] / "cvtool"

# A package may import from packages of a lower layer, and from others of its own layer as long as
# no two packages import each other. Leaves are cvtool's top-level modules.
LAYERS = {
    "__main__": 6,
    "cli": 5,
    "runs": 4, "evaluation": 4, "inference": 4, "reporting": 4, "bench": 4, "search": 4, "folds": 4, "ensembles": 4,
    "engine": 3, "data": 3, "models": 3,
    "recipe": 2, "tasks": 2,
    "errors": 1, "registry": 1, "fileio": 1, "plots": 1, "model_card": 1, "": 0,
}
MAX_LINES = 300
MAX_TOP_LEVEL_MODULES = 6  # besides the packages and the package's own __init__


def module_name(path: Path) -> str:
    parts = path.relative_to(ROOT.parent).with_suffix("").parts
    return ".".join(parts[:-1] if parts[-1] == "__init__" else parts)


def modules() -> dict[str, Path]:
    return {module_name(p): p for p in sorted(ROOT.rglob("*.py"))}


def imports_of(path: Path, known: set[str]) -> set[str]:
    """Every cvtool module `path` imports, at any depth (functions and TYPE_CHECKING blocks too)."""
    found: set[str] = set()
    for node in ast.walk(ast.parse(path.read_text(encoding="utf-8"))):
        if isinstance(node, ast.Import):
            names = [alias.name for alias in node.names]
        elif isinstance(node, ast.ImportFrom) and node.module and node.level == 0:
            names = [f"{node.module}.{alias.name}" for alias in node.names] + [node.module]
        else:
            continue
        for name in names:
            if name.split(".")[0] != "cvtool":
                continue
            while name not in known and "." in name:  # `from cvtool.x import y` names a symbol of cvtool.x
                name = name.rsplit(".", 1)[0]
            if name in known:
                found.add(name)
                break
    return found


def graph() -> dict[str, set[str]]:
    mods = modules()
    known = set(mods)
    return {name: imports_of(path, known) - {name} for name, path in mods.items()}


def package_of(module: str) -> str:
    parts = module.split(".")
    return parts[1] if len(parts) > 1 else ""


def find_cycle(edges: dict[str, set[str]]) -> list[str] | None:
    state: dict[str, int] = {}
    stack: list[str] = []

    def visit(node: str) -> list[str] | None:
        state[node] = 1
        stack.append(node)
        for target in sorted(edges.get(node, ())):
            if state.get(target) == 1:
                return stack[stack.index(target):] + [target]
            if target not in state and (cycle := visit(target)):
                return cycle
        stack.pop()
        state[node] = 2
        return None

    for node in sorted(edges):
        if node not in state and (cycle := visit(node)):
            return cycle
    return None


def test_every_package_has_a_layer() -> None:
    assert {package_of(m) for m in modules()} <= set(LAYERS)


def test_no_import_cycle_between_modules() -> None:
    assert find_cycle(graph()) is None


def test_no_import_cycle_between_packages() -> None:
    edges: dict[str, set[str]] = defaultdict(set)
    for source, targets in graph().items():
        for target in targets:
            if package_of(source) != package_of(target) and package_of(target):
                edges[package_of(source)].add(package_of(target))
    assert find_cycle(edges) is None


def test_imports_run_down_the_layers() -> None:
    wrong = [f"{source} -> {target}" for source, targets in graph().items() for target in targets
             if package_of(source) != package_of(target)
             and LAYERS[package_of(target)] > LAYERS[package_of(source)]]
    assert wrong == []


def test_the_checker_sees_function_level_and_type_checking_imports(tmp_path: Path) -> None:
    source = tmp_path / "m.py"
    source.write_text("from typing import TYPE_CHECKING\nif TYPE_CHECKING:\n    from cvtool.tasks import Task\n"
                      "def f():\n    from cvtool.runs.layout import RunDir\n    import cvtool.errors\n")
    assert imports_of(source, {"cvtool.tasks", "cvtool.runs.layout", "cvtool.errors", "cvtool"}) == {
        "cvtool.tasks", "cvtool.runs.layout", "cvtool.errors"}
    assert find_cycle({"a": {"b"}, "b": {"c"}, "c": {"a"}}) == ["a", "b", "c", "a"]


def test_few_top_level_modules() -> None:
    top = [p.name for p in ROOT.glob("*.py") if p.name != "__init__.py"]
    assert len(top) <= MAX_TOP_LEVEL_MODULES, top


@pytest.mark.parametrize("path", sorted(ROOT.rglob("*.py")), ids=lambda p: str(p.relative_to(ROOT)))
def test_modules_stay_small(path: Path) -> None:
    assert len(path.read_text(encoding="utf-8").splitlines()) <= MAX_LINES


def test_only_the_tasks_know_task_names() -> None:
    pattern = re.compile(r"task(_name)?(\.name)? *(==|!=|in) *[(\[{]?\"(multiclass|binary|multilabel|keypoints)\"|"
                         r"task\.name *(==|!=|in)|\"(multiclass|binary|multilabel|keypoints)\" *(==|!=) *\w*task")
    offenders = [f"{p.relative_to(ROOT)}:{i}" for p in ROOT.rglob("*.py") if "tasks" not in p.relative_to(ROOT).parts
                 for i, line in enumerate(p.read_text(encoding="utf-8").splitlines(), 1) if pattern.search(line)]
    assert offenders == []
