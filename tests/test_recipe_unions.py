"""`optim`, `schedule` and `loss` have one class per `name`: a setting another name reads is refused
like a typo (one line, exit 2), defaults are not "set", phases / sweeps / searches are checked
point by point."""

from __future__ import annotations

from pathlib import Path
from typing import Any

import pytest
import yaml
from conftest import one_line_error
from typer.testing import CliRunner

from cvtool.cli.main import app
from cvtool.engine.optim import optim_for_epoch
from cvtool.errors import CvtoolError
from cvtool.recipe.load import validate
from cvtool.recipe.training_config import LOSS_VARIANTS, OPTIM_VARIANTS, SCHEDULE_VARIANTS
from cvtool.runs.recipes import expand_sweep, load_recipe
from cvtool.tasks import TASKS, get_task

MIN = "name: x\ndata: {root: d}\n"
runner = CliRunner()


def show(tmp_path: Path, text: str, *sets: str) -> Any:
    path = tmp_path / "x.yaml"
    path.write_text(text, encoding="utf-8")
    return runner.invoke(app, ["recipe", "show", str(path), *(arg for value in sets for arg in ("--set", value))])


# ---- the one-line errors --------------------------------------------------------------------------

@pytest.mark.parametrize(("sets", "expected"), [
    (("optim.name=adam", "optim.momentum=0.5"),
     "--set: optim.momentum: not a setting of optim.name adam (it applies to: sgd)"),
    (("schedule.name=cosine", "schedule.step_size=3"),
     "--set: schedule.step_size: not a setting of schedule.name cosine (it applies to: step)"),
    (("loss.name=cross_entropy", "loss.gamma=2"),
     "--set: loss.gamma: not a setting of loss.name cross_entropy (it applies to: focal)"),
    (("loss.gamma=2",),
     "--set: loss.gamma: not a setting of loss.name auto, which is cross_entropy for task multiclass "
     "(it applies to: focal)"),
    (("task=keypoints", "loss.class_weights=inverse"),
     "--set: loss.class_weights: not a setting of loss.name auto, which is mse for task keypoints "
     "(it applies to: cross_entropy, bce, focal)"),
    (("schedule.name=onecycle", "schedule.warmup_epochs=2"),
     "--set: schedule.warmup_epochs: not a setting of schedule.name onecycle "
     "(onecycle warms up by itself through schedule.pct_start)"),
    (("optim.momentun=0.5",), "--set: optim.momentun: unknown key (did you mean optim.momentum?)"),
    (("optim.name=adam", "optim.momentun=0.5"),
     "--set: optim.momentun: unknown key (did you mean optim.momentum? it applies to: sgd)"),
    (("optim.name=adamm",), "--set: optim.name: expected 'sgd', 'adam' or 'adamw'; got 'adamm' (did you mean adam?)"),
])
def test_a_key_the_name_does_not_read_is_one_line_naming_it(tmp_path: Path, sets: tuple[str, ...],
                                                           expected: str) -> None:
    line = one_line_error(show(tmp_path, MIN, *sets))
    assert line == f"cvtool: {tmp_path / 'x.yaml'}: {expected}"


def test_defaults_are_not_set_but_a_written_key_is(tmp_path: Path) -> None:
    result = show(tmp_path, MIN, "optim.name=adam")  # momentum: 0.9 is sgd's default, nobody wrote it
    assert result.exit_code == 0, result.output
    written = yaml.safe_load(result.stdout.split("optimizer epoch")[0])
    assert written["optim"] == {"name": "adam", "lr": 0.01, "weight_decay": None, "betas": [0.9, 0.999],
                                "amsgrad": False}
    assert written["schedule"] == {"name": "none", "warmup_epochs": 0}
    assert written["loss"] == {"name": "auto", "label_smoothing": 0.0, "class_weights": "none"}  # cross_entropy's
    (tmp_path / "base.yaml").write_text(MIN + "optim: {momentum: 0.8}\n", encoding="utf-8")
    line = one_line_error(show(tmp_path, "base: base.yaml\noptim: {name: adam}\n"))
    assert line.endswith("x.yaml: optim.momentum: not a setting of optim.name adam (it applies to: sgd)")
    # null unsets a key a base wrote for another name
    assert show(tmp_path, "base: base.yaml\noptim: {name: adam, momentum: null}\n").exit_code == 0


def test_a_phase_key_must_apply_to_the_optimizer_after_the_phase(tmp_path: Path) -> None:
    text = MIN + "optim: {name: adam}\nphases: [{epoch: 2, optim: {lr: 0.1}}, {epoch: 4, optim: {momentum: 0.5}}]\n"
    assert one_line_error(show(tmp_path, text)).endswith(
        "x.yaml: phases[1].optim.momentum: not a setting of optim.name adam in force from epoch 4 (it applies to: sgd)")
    text = MIN + "optim: {name: adam}\nphases: [{epoch: 4, optim: {name: sgd, momentum: 0.5, nesterov: true}}]\n"
    assert show(tmp_path, text).exit_code == 0
    text = MIN + "phases: [{epoch: 4, optim: {momentum: 0, nesterov: true}}]\n"
    assert one_line_error(show(tmp_path, text)).endswith("x.yaml: phases[0].optim: nesterov needs momentum > 0")


def test_switching_name_in_a_phase_keeps_only_what_applies() -> None:
    recipe = validate({"name": "x", "data": {"root": "d"},
                       "optim": {"name": "sgd", "lr": 0.1, "momentum": 0.5, "nesterov": True, "weight_decay": 1e-4},
                       "phases": [{"epoch": 3, "optim": {"name": "adam", "betas": [0.8, 0.9]}},
                                  {"epoch": 5, "optim": {"name": "adamw", "lr": 0.01}},
                                  {"epoch": 7, "optim": {"name": "sgd"}}]}, "x")
    adam, adamw, sgd = (optim_for_epoch(recipe.optim, recipe.phases, epoch) for epoch in (3, 5, 7))
    assert adam.model_dump() == {"name": "adam", "lr": 0.1, "weight_decay": 1e-4, "betas": (0.8, 0.9),
                                 "amsgrad": False}
    assert (adamw.name, adamw.lr, adamw.weight_decay, adamw.betas) == ("adamw", 0.01, 1e-4, (0.8, 0.9))
    assert sgd.model_dump() == {"name": "sgd", "lr": 0.01, "weight_decay": 1e-4, "momentum": 0.9, "nesterov": False}


# ---- every name takes each of its own keys, and refuses the others' -----------------------------

SAMPLES: dict[str, Any] = {
    "lr": 0.05, "weight_decay": 1e-4, "momentum": 0.5, "nesterov": True, "betas": [0.8, 0.9], "amsgrad": True,
    "warmup_epochs": 2, "T_max": 5, "eta_min": 1e-5, "milestones": [2, 3], "gamma": 0.5, "step_size": 3,
    "factor": 0.5, "patience": 2, "mode": "min", "max_lr": 0.1, "pct_start": 0.2,
    "label_smoothing": 0.1, "class_weights": "inverse", "pos_weight": 2.0, "alpha": 0.5, "beta": 2.0,
}
UNIONS = {"optim": OPTIM_VARIANTS, "schedule": SCHEDULE_VARIANTS, "loss": LOSS_VARIANTS}


def task_for(section: str, name: str) -> list[str]:
    """The tasks to try `section.name` under: each that allows a loss (auto: every task); one for the rest."""
    if section != "loss":
        return ["multiclass"]
    return [task for task in TASKS if name == "auto" or name in get_task(task).losses]


def cases(own: bool) -> list[Any]:
    found = []
    for section, options in UNIONS.items():
        every = {key for cls in options.values() for key in cls.model_fields} - {"name"}
        for name, cls in options.items():
            for task in task_for(section, name):
                fields = set(cls.model_fields) - {"name"}
                if section == "loss" and name == "auto":
                    fields = set(LOSS_VARIANTS[get_task(task).default_loss].model_fields) - {"name"}
                for key in sorted(fields if own else every - fields):
                    found.append(pytest.param(section, name, task, key, id=f"{task}-{section}.{name}.{key}"))
    return found


@pytest.mark.parametrize(("section", "name", "task", "key"), cases(own=True))
def test_every_name_takes_its_own_keys(section: str, name: str, task: str, key: str) -> None:
    recipe = validate({"name": "x", "task": task, "data": {"root": "d"}, section: {"name": name, key: SAMPLES[key]}}, "x")
    value = getattr(getattr(recipe, section), key)
    assert value == (tuple(SAMPLES[key]) if key == "betas" else SAMPLES[key])


@pytest.mark.parametrize(("section", "name", "task", "key"), cases(own=False))
def test_every_name_refuses_the_other_names_keys(section: str, name: str, task: str, key: str) -> None:
    with pytest.raises(CvtoolError) as info:
        validate({"name": "x", "task": task, "data": {"root": "d"}, section: {"name": name, key: SAMPLES[key]}}, "x")
    assert str(info.value).startswith(f"x: {section}.{key}: not a setting of {section}.name {name}")


# ---- sweeps and searches: each point is a whole recipe --------------------------------------------

def test_a_sweep_point_that_cannot_read_a_key_is_named(tmp_path: Path) -> None:
    text = MIN + "optim: {momentum: 0.5}\nsweep: {optim.name: [sgd, adam]}\n"
    assert one_line_error(show(tmp_path, text)).endswith(
        "x.yaml: sweep point name=adam: optim.momentum: not a setting of optim.name adam (it applies to: sgd)")
    path = tmp_path / "ok.yaml"
    path.write_text(MIN + "optim: {lr: 0.05}\nsweep: {optim.name: [sgd, adam]}\n", encoding="utf-8")
    points = dict(expand_sweep(load_recipe(path), str(path)))
    assert (points["name=adam"].optim.lr, points["name=sgd"].optim.momentum) == (0.05, 0.9)


def test_a_sweep_over_whole_sections_is_named_by_their_names(tmp_path: Path) -> None:
    path = tmp_path / "grid.yaml"
    path.write_text(MIN + "schedule: {name: cosine, T_max: 3}\nsweep:\n  schedule:\n    - {name: cosine, T_max: 100}\n"
                    "    - {name: multistep, milestones: [50, 75]}\n", encoding="utf-8")
    points = dict(expand_sweep(load_recipe(path), str(path)))
    assert points["schedule=cosine"].schedule.T_max == 100
    assert points["schedule=multistep"].schedule.milestones == [50, 75]


def test_every_listed_search_value_is_checked_at_load(tmp_path: Path) -> None:
    path = tmp_path / "s.yaml"
    path.write_text(MIN + "optim: {momentum: 0.5}\nsearch: {space: {optim.name: [sgd, adam, sgd]}}\n", encoding="utf-8")
    with pytest.raises(CvtoolError, match=r"search.space point name=adam: optim.momentum: not a setting"):
        load_recipe(path)
