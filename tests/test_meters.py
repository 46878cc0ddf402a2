"""Training metrics as running sums equal the task's scikit-learn metrics on the whole epoch's
outputs (no training needed: random logits in uneven batches)."""

from __future__ import annotations

import numpy as np
import pytest
import torch

from cvtool.tasks import get_task


def _batches(logits: torch.Tensor, targets: torch.Tensor, sizes: list[int]):
    start = 0
    for size in sizes:
        yield logits[start:start + size], targets[start:start + size], torch.arange(start, start + size)
        start += size


@pytest.mark.parametrize("task_name, outputs", [("multiclass", 3), ("multiclass", 12), ("binary", 1),
                                                 ("multilabel", 6)])
def test_running_metrics_equal_sklearns_on_the_whole_epoch(task_name: str, outputs: int) -> None:
    task = get_task(task_name)
    generator = torch.Generator().manual_seed(outputs)
    n = 157
    logits = torch.randn(n, outputs, generator=generator) * 2
    if task_name == "multiclass":
        targets = torch.randint(0, outputs, (n,), generator=generator)
        targets[targets == 1] = 0  # a class that never occurs: macro F1 counts it as 0 like scikit-learn
    else:
        targets = (torch.rand(n, outputs, generator=generator) < 0.3).float()
        targets[:5] = 0  # images without any tag
    meter = task.train_meter(outputs, 0.4, np.zeros((n, 4)))
    for batch in _batches(logits, targets, [64, 64, 29]):
        meter.add(*batch)
    expected = task.metrics(task.metric_targets(targets.numpy()), task.activate(logits.numpy()), 0.4)
    got = meter.result()
    if task_name == "binary":
        expected.pop("auc")  # every score is needed for it: validation reports it
    assert got.keys() == expected.keys()
    for key, value in expected.items():
        assert got[key] == pytest.approx(value, abs=1e-12), key


def test_keypoint_meter_scores_in_pixels_like_the_task() -> None:
    task = get_task("keypoints")
    frames = np.array([[0, 0, 64, 48], [0, 0, 32, 32], [0, 0, 100, 50]], np.float64)
    logits = torch.tensor([[0.1, -0.2], [0.5, 0.5], [-0.9, 0.3]])
    targets = torch.tensor([[0.0, 0.0], [0.4, 0.6], [-1.0, 0.2]])
    meter = task.train_meter(2, 0.5, frames)
    meter.add(logits[:2], targets[:2], torch.tensor([0, 1]))
    meter.add(logits[2:], targets[2:], torch.tensor([2]))
    assert meter.result() == pytest.approx(task.metrics(targets.numpy(), logits.numpy(), 0.5, frames))
