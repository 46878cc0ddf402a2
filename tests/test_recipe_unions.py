"""`optim`, `schedule` and `loss` have one class per `name`: a setting another name reads is refused
like a typo (one line, exit 2), defaults are not "set", phases / sweeps / searches are checked
point by point, and recipes that cvtool stored (every key, whatever the name) still load."""

from __future__ import annotations

import csv
import json
from pathlib import Path
from typing import Any

import pytest
import torch
import yaml
from conftest import one_line_error
from typer.testing import CliRunner

from cvtool.cli.main import app
from cvtool.engine.optim import optim_for_epoch
from cvtool.errors import CvtoolError
from cvtool.recipe.load import recipe_from_dict, recipe_to_yaml, validate
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


# ---- recipes cvtool stored: an older version wrote every key, whatever the name -------------------

OLD_KEYS = {  # the sections as cvtool wrote them before they had one class per name
    "optim": {"momentum": 0.9, "nesterov": False, "weight_decay": None, "betas": [0.9, 0.999], "amsgrad": False},
    "schedule": {"T_max": None, "eta_min": 0.0, "milestones": [], "step_size": 10, "gamma": 0.1, "factor": 0.1,
                 "patience": 10, "mode": None, "max_lr": None, "pct_start": 0.3, "warmup_epochs": 0},
    "loss": {"label_smoothing": 0.0, "class_weights": "none", "pos_weight": None, "alpha": 0.25, "gamma": 2.0,
             "beta": 1.0},
}


def old_format(recipe: dict[str, Any]) -> dict[str, Any]:
    recipe = json.loads(json.dumps(recipe))
    for section, keys in OLD_KEYS.items():
        recipe[section] = {**keys, **recipe[section]}
    for phase in recipe.get("phases", []):
        phase["optim"]["momentum"] = 0.3  # an older version let a phase to adamw carry it, unread
    return recipe


def test_an_old_sweep_over_names_loads_and_expands_as_it_ran(tmp_path: Path) -> None:
    stored = old_format({"name": "x", "data": {"root": "d"}, "optim": {"name": "sgd", "momentum": 0.5,
                         "betas": [0.8, 0.9]}, "schedule": {"name": "cosine"}, "loss": {"name": "auto"},
                         "sweep": {"optim.name": ["sgd", "adam"]}})
    path = tmp_path / "recipe.yaml"
    path.write_text(yaml.safe_dump(stored), encoding="utf-8")
    line = one_line_error(runner.invoke(app, ["recipe", "show", str(path)]))  # as user input: strict
    assert "recipe.yaml: optim.amsgrad: not a setting of optim.name sgd (it applies to: adam, adamw)" in line
    recipe = load_recipe(path, stored=True)
    points = dict(expand_sweep(recipe, str(path)))
    assert points["name=sgd"].optim.momentum == 0.5 and points["name=adam"].optim.betas == (0.8, 0.9)
    path.write_text(recipe_to_yaml(recipe), encoding="utf-8")  # a resumed sweep writes its recipe.yaml again
    again = dict(expand_sweep(load_recipe(path, stored=True), str(path)))
    assert again == points


def history(run: Path) -> list[dict[str, str]]:
    with (run / "metrics.csv").open() as handle:
        return [{k: v for k, v in row.items() if k != "seconds"} for row in csv.DictReader(handle)]


def test_a_run_stored_by_an_older_version_evaluates_and_resumes_exactly(synthetic, make_recipe, tmp_path: Path,
                                                                        monkeypatch: pytest.MonkeyPatch) -> None:
    from cvtool.cli.launch import run_recipe
    from cvtool.engine.checkpoint import load_checkpoint, save_checkpoint
    from cvtool.engine.loop import StopRequested

    monkeypatch.setattr("cvtool.runs.artifacts.write_plots", lambda *args, **kwargs: None)  # the same for any run
    data = synthetic("multiclass", n=80, size=16)
    recipe = load_recipe(make_recipe(tmp_path, data, train={"epochs": 2, "max_batches": 2, "loggers": ["csv"]},
                                     optim={"name": "adam", "lr": 0.01}, schedule={"name": "cosine"},
                                     phases=[{"epoch": 2, "optim": {"name": "adamw"}}]))
    run_recipe(recipe, tmp_path / "whole", quiet=True)
    calls = {"n": 0}

    def stop_in_epoch_2() -> bool:
        calls["n"] += 1
        return calls["n"] > 2 + 1  # 2 batches an epoch

    with pytest.raises(StopRequested):
        run_recipe(recipe, tmp_path / "cut", quiet=True, stop=stop_in_epoch_2)
    run = tmp_path / "cut"
    written = old_format(yaml.safe_load((run / "recipe.yaml").read_text(encoding="utf-8")))
    (run / "recipe.yaml").write_text(yaml.safe_dump(written), encoding="utf-8")
    for checkpoint in (run / "checkpoints").glob("*.pt"):
        payload = load_checkpoint(checkpoint)
        save_checkpoint(checkpoint, {**payload, "recipe": old_format(payload["recipe"])})
    assert recipe_from_dict(old_format(recipe.model_dump(mode="json"))) == recipe
    result = runner.invoke(app, ["evaluate", str(run), "--quiet"])
    assert result.exit_code == 0, result.output
    result = runner.invoke(app, ["train", "--resume", str(run), "--quiet"])
    assert result.exit_code == 0, result.output
    assert history(tmp_path / "whole") == history(run)
    final = torch.load(run / "checkpoints" / "last.pt", weights_only=True)["optimizer"]["param_groups"][0]
    assert final["weight_decay"] == 0.01  # adamw from epoch 2, with its own default
