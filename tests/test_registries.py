"""The names a recipe may spell (schema Literals) are exactly the keys of the registries they name."""

from __future__ import annotations

import typing

from cvtool.data.formats import READERS
from cvtool.engine.optim import OPTIMIZERS
from cvtool.engine.schedule import SCHEDULES
from cvtool.evaluation.thresholds import OBJECTIVES
from cvtool.models.registry import OWN_ARCHS
from cvtool.recipe import schema
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


def test_optimizer_names_are_the_optimizer_table() -> None:
    assert literal_names(schema.OptimConfig, "name") == set(OPTIMIZERS)
    assert literal_names(schema.OptimPatch, "name") == set(OPTIMIZERS)


def test_schedule_names_are_the_schedule_table() -> None:
    assert literal_names(schema.ScheduleConfig, "name") == set(SCHEDULES)


def test_format_names_are_the_readers() -> None:
    assert literal_names(schema.DataConfig, "format") == set(READERS)


def test_task_and_loss_names_are_what_the_tasks_allow() -> None:
    assert literal_names(schema.Recipe, "task") == set(TASKS)
    allowed = {loss for name in TASKS for loss in TASKS.get(name).losses}
    assert literal_names(schema.LossConfig, "name") == {"auto", *allowed}
    assert all(TASKS.get(name).default_loss in TASKS.get(name).losses for name in TASKS)


def test_weight_modes_and_tuning_metrics_are_their_tables() -> None:
    assert literal_names(schema.LossConfig, "class_weights") == set(WEIGHT_MODES)
    assert literal_names(schema.EvalConfig, "tune_metric") == set(OBJECTIVES)


def test_own_architectures_are_registered_builders() -> None:
    assert set(OWN_ARCHS) == {"simplenet"}
    assert all(callable(OWN_ARCHS.get(name)) for name in OWN_ARCHS)
