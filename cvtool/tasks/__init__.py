"""The task registry: `get_task(name)` returns the one Task object of a problem type."""

from __future__ import annotations

from cvtool.registry import Registry
from cvtool.tasks.base import Task, higher_is_better
from cvtool.tasks.classification import Binary, Multiclass, Multilabel
from cvtool.tasks.keypoints import Keypoints

TASKS: Registry[Task] = Registry("task")
for _task in (Multiclass(), Binary(), Multilabel(), Keypoints()):
    TASKS.add(_task.name, _task)


def get_task(name: str) -> Task:
    return TASKS.get(name)


__all__ = ["TASKS", "Binary", "Keypoints", "Multiclass", "Multilabel", "Task", "get_task", "higher_is_better"]
