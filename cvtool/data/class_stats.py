"""The label section of `cvtool stats`, asked of the dataset's Task (`Task.label_stats`: class
counts, imbalance and class weights, or target ranges; the numbers in tasks/label_stats.py)."""

from __future__ import annotations

from typing import Any

from cvtool.data.formats import DatasetInfo
from cvtool.tasks import get_task


def label_stats(info: DatasetInfo, chosen: list[str]) -> dict[str, Any]:
    train = info.splits["train"]
    if train.targets is None:  # e.g. a CSV without the label column: nothing to count
        return {}
    splits = {name: info.splits[name].targets for name in chosen if info.splits[name].targets is not None}
    return get_task(info.task).label_stats(train.targets, splits, info.class_names, info.target_names)
