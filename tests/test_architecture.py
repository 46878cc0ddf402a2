"""The shape of the package, kept from decaying: imports run one way with no cycles, modules stay
small, and only cvtool/tasks/ knows the task names, classes and flags (README, "Architecture")."""

from __future__ import annotations

import ast
import re
from collections import defaultdict
from pathlib import Path

import pytest

from cvtool.tasks import base as task_base

ROOT = Path(__file__).resolve().parents[1] / "cvtool"

# A package may import from packages of a lower layer, and from others of its own layer as long as
# no two packages import each other. Leaves are cvtool's top-level modules.
LAYERS = {
    "__main__": 6,
    "cli": 5,
    "runs": 4, "evaluation": 4, "inference": 4, "reporting": 4, "bench": 4, "search": 4, "folds": 4, "ensembles": 4,
    "doctor": 4, "cluster": 4,
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


# A Task's bool class attributes (point_targets, thresholds, ...) describe it to cvtool/tasks/ only;
# other packages call the Task's methods (augment_with, check_thresholds, loss_class_weights, ...).
TASK_FLAGS = frozenset(name for name, value in vars(task_base.Task).items() if isinstance(value, bool))
# (module, expression) branches another branch is replacing: each entry must still occur here
PENDING: set[tuple[str, str]] = set()  # (module, branch) waiting for a Task method


def task_classes() -> frozenset[str]:
    found, todo = set(), [task_base.Task]
    while todo:
        cls = todo.pop()
        found.add(cls.__name__)
        todo += cls.__subclasses__()
    return frozenset(found)


def names_a_task(node: ast.expr) -> bool:
    """`task`, `self.task`, `loaded.task`, `get_task(...)`, `TASKS.get(...)`: named like a Task."""
    if isinstance(node, ast.Name):
        return "task" in node.id.lower()
    if isinstance(node, ast.Attribute):
        return "task" in node.attr.lower()
    if isinstance(node, ast.Call):
        func = node.func
        return names_a_task(func) if isinstance(func, ast.Name) else (
            isinstance(func, ast.Attribute) and names_a_task(func.value))
    return False


def task_branches(source: str, flags: frozenset[str], classes: frozenset[str]) -> list[tuple[int, str]]:
    """(line, expression) of every branch on a Task: a test (if / elif / while / ternary /
    comprehension `if` / and / or) that reads a flag of something named like a task, and every
    `isinstance(x, <a Task class>)`."""
    found = set()
    for node in ast.walk(ast.parse(source)):
        tests: list[ast.expr] = []
        if isinstance(node, ast.If | ast.IfExp | ast.While):
            tests.append(node.test)
        elif isinstance(node, ast.BoolOp):
            tests.append(node)
        elif isinstance(node, ast.comprehension):
            tests += node.ifs
        for test in tests:
            for sub in ast.walk(test):
                if isinstance(sub, ast.Attribute) and sub.attr in flags and names_a_task(sub.value):
                    found.add((sub.lineno, ast.unparse(sub)))
        if isinstance(node, ast.Call) and getattr(node.func, "id", "") == "isinstance" and len(node.args) == 2:
            for sub in ast.walk(node.args[1]):
                if getattr(sub, "id", getattr(sub, "attr", None)) in classes:
                    found.add((node.lineno, ast.unparse(node)))
    return sorted(found)


def test_only_the_tasks_branch_on_a_task() -> None:
    seen = {(str(p.relative_to(ROOT)), line, text) for p in ROOT.rglob("*.py") if "tasks" not in p.relative_to(ROOT).parts
            for line, text in task_branches(p.read_text(encoding="utf-8"), TASK_FLAGS, task_classes())}
    assert sorted(hit for hit in seen if (hit[0], hit[2]) not in PENDING) == []
    assert {(path, text) for path, _, text in seen} >= PENDING, "a pending branch is gone: drop it from PENDING"


def test_the_task_branch_checker_sees_flags_and_task_classes() -> None:
    source = ("def f(task, loaded, name, x):\n"
              "    if task.point_targets:\n"
              "        pass\n"
              "    elif loaded.task.thresholds and x:\n"
              "        pass\n"
              "    y = 1 if get_task(name).stratify else 0\n"
              "    z = [n for n in TASKS.names() if TASKS.get(n).mixable]\n"
              "    w = x or isinstance(task, Keypoints)\n"
              "    ok = task.check_thresholds() is None and task.figures and x.point_targets\n"
              "    keep = task.point_targets\n")
    assert task_branches(source, frozenset({"point_targets", "thresholds", "stratify", "mixable"}),
                         frozenset({"Keypoints"})) == [
        (2, "task.point_targets"), (4, "loaded.task.thresholds"), (6, "get_task(name).stratify"),
        (7, "TASKS.get(n).mixable"), (8, "isinstance(task, Keypoints)")]
    assert {"point_targets", "thresholds", "mixable"} <= TASK_FLAGS and "name" not in TASK_FLAGS
    assert {"Task", "Keypoints", "Multiclass", "Binary", "Multilabel"} <= task_classes()
