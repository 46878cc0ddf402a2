"""The names a recipe may spell (schema Literals, the names of the optim / schedule / loss unions) are
exactly the keys of the registries they name."""

from __future__ import annotations

import typing

from cvtool.data.formats import READERS
from cvtool.engine.optim import OPTIMIZERS
from cvtool.engine.schedule import SCHEDULES
from cvtool.evaluation.thresholds import OBJECTIVES
from cvtool.models.registry import OWN_ARCHS
from cvtool.recipe import schema, training_config
from cvtool.recipe.training_config import variants
from cvtool.tasks import TASKS
from cvtool.tasks.label_stats import WEIGHT_MODES


def literal_names(model: type, field: str) -> set:
    """Every Literal value allowed by `model.field` (through unions such as `Literal[...] | None`)."""
    found: set = set()
    pending = [model.model_fields[field].annotation]
    while pending:
        annotation = pending.pop()
        if typing.get_origin(annotation) is typing.Literal:
            found.update(typing.get_args(annotation))
        else:
            pending.extend(typing.get_args(annotation))
    return found


def union_names(union: object) -> set:
    """The `name` of every class of a section union (each class's own Literal)."""
    classes = variants(union)
    assert classes and all(literal_names(cls, "name") == {name} for name, cls in classes.items())
    return set(classes)


def test_optimizer_names_are_the_optimizer_table() -> None:
    assert union_names(schema.OptimConfig) == set(OPTIMIZERS)
    assert literal_names(training_config.OptimPatch, "name") == set(OPTIMIZERS)
    assert schema.Recipe.model_fields["optim"].default.name == "sgd"


def test_schedule_names_are_the_schedule_table() -> None:
    assert union_names(schema.ScheduleConfig) == set(SCHEDULES)
    assert schema.Recipe.model_fields["schedule"].default.name == "none"


def test_format_names_are_the_readers() -> None:
    assert literal_names(schema.DataConfig, "format") == set(READERS)


def test_task_and_loss_names_are_what_the_tasks_allow() -> None:
    assert literal_names(schema.Recipe, "task") == set(TASKS)
    allowed = {loss for name in TASKS for loss in TASKS.get(name).losses}
    assert union_names(schema.LossConfig) == {"auto", *allowed}
    assert schema.Recipe.model_fields["loss"].default.name == "auto"
    assert all(TASKS.get(name).default_loss in TASKS.get(name).losses for name in TASKS)


def test_weight_modes_and_tuning_metrics_are_their_tables() -> None:
    weighted = [cls for cls in variants(schema.LossConfig).values() if "class_weights" in cls.model_fields]
    assert {cls.model_fields["name"].default for cls in weighted} == {"auto", "cross_entropy", "bce", "focal"}
    assert all(literal_names(cls, "class_weights") == set(WEIGHT_MODES) for cls in weighted)
    assert literal_names(schema.EvalConfig, "tune_metric") == set(OBJECTIVES)


def test_own_architectures_are_registered_builders() -> None:
    assert set(OWN_ARCHS) == {"simplenet"}
    assert all(callable(OWN_ARCHS.get(name)) for name in OWN_ARCHS)
