"""The training step can be read whole: `cvtool train` reaches `backward()` in a few cvtool frames
(the run, `runs/train.fit`, and the step, `engine/loop.train_one_epoch`), and the step object is
built by one function and never assigned to afterwards."""

from __future__ import annotations

import ast
import dataclasses
import sys
from pathlib import Path

import pytest
import torch
from typer.testing import CliRunner

from cvtool.cli.main import app
from cvtool.engine.loop import Step

PACKAGE = Path(__file__).resolve().parents[1] / "cvtool"
MAX_FRAMES = 5
runner = CliRunner()


def cvtool_frames() -> list[str]:
    """cvtool's frames on the stack, innermost first (module path : function)."""
    frames, frame = [], sys._getframe(1)
    while frame is not None:
        path = Path(frame.f_code.co_filename).resolve()
        if PACKAGE in path.parents:
            frames.append(f"{path.relative_to(PACKAGE)}:{frame.f_code.co_name}")
        frame = frame.f_back
    return frames


def test_cvtool_train_reaches_backward_in_at_most_five_frames(synthetic, make_recipe, tmp_path: Path,
                                                             monkeypatch: pytest.MonkeyPatch) -> None:
    seen: list[list[str]] = []
    original = torch.Tensor.backward

    def counting(self, *args, **kwargs):
        seen.append(cvtool_frames())
        return original(self, *args, **kwargs)

    monkeypatch.setattr(torch.Tensor, "backward", counting)
    recipe = make_recipe(tmp_path, synthetic("multiclass", n=40, size=16), train={"max_batches": 1})
    result = runner.invoke(app, ["train", str(recipe), "--out", str(tmp_path / "run"), "--quiet"])
    assert result.exit_code == 0, result.output
    assert len(seen) == 1  # one batch, one backward
    stack = seen[0]
    assert len(stack) <= MAX_FRAMES, stack
    assert stack[0] == "engine/loop.py:train_one_epoch" and stack[1] == "runs/train.py:fit", stack


def test_the_step_is_frozen() -> None:
    assert Step.__dataclass_params__.frozen
    step = Step(*([None] * 8))
    with pytest.raises(dataclasses.FrozenInstanceError):
        step.optimizer = None  # type: ignore[misc]


def test_no_code_assigns_to_a_step_field() -> None:
    """`x.<field> = ...` / `setattr(x, "<field>", ...)` for any Step field, anywhere in cvtool
    (object.__setattr__ included): a phase change builds a new step (runs/step.py)."""
    fields = {f.name for f in dataclasses.fields(Step)}
    offenders = []
    for path in PACKAGE.rglob("*.py"):
        for node in ast.walk(ast.parse(path.read_text(encoding="utf-8"))):
            targets = node.targets if isinstance(node, ast.Assign) else [node.target] \
                if isinstance(node, ast.AugAssign | ast.AnnAssign) else []
            for target in targets:
                if isinstance(target, ast.Attribute) and target.attr in fields and _names_a_step(target.value):
                    offenders.append(f"{path.relative_to(PACKAGE)}:{node.lineno}")
            if isinstance(node, ast.Call) and getattr(node.func, "id", getattr(node.func, "attr", "")) in (
                    "setattr", "__setattr__") and any(isinstance(a, ast.Constant) and a.value in fields
                                                       for a in node.args):
                offenders.append(f"{path.relative_to(PACKAGE)}:{node.lineno}")
    assert offenders == []


def _names_a_step(node: ast.expr) -> bool:
    """`step.x`, `self.step.x`, `session.step.x`: a name that holds a Step."""
    name = node.attr if isinstance(node, ast.Attribute) else getattr(node, "id", "")
    return "step" in name.lower() or "stepper" in name.lower()
