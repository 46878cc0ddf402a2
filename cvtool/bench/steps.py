"""What `bench train` times training steps with: a clock around train_one_epoch's steps, and the
pure-compute ceiling's input batch."""

from __future__ import annotations

import time
from collections.abc import Iterable, Iterator
from typing import Any

import torch

from cvtool.data.loaders import Batch


class StepClock:
    """A `progress` for train_one_epoch that records when the loop starts and each step ends.
    `sync` (CUDA) waits for the device at the steps in `marks`: steps queue work asynchronously,
    so only a synchronized clock says when they are done."""

    def __init__(self, sync: Any = None, marks: Iterable[int] = ()) -> None:
        self.times: list[float] = []
        self.sync, self.marks = sync, set(marks)

    def track(self, loader: Iterable) -> Iterator:
        self.times.append(time.perf_counter())
        yield from loader

    def update(self, **_: Any) -> None:
        if self.sync is not None and len(self.times) in self.marks:
            self.sync()
        self.times.append(time.perf_counter())


def ceiling_batch(step: Any, batch: Any) -> Any:
    """The ceiling's input. CPU: one real batch with its augmentation done (the loader's share of
    the work). CUDA: random uint8 pixels of the same shape already on the device, with the batch's
    drawn augmentation still to apply there (device work belongs to the compute)."""
    images, targets, indices = batch
    plan = getattr(batch, "augment", None)
    if step.device.type == "cuda":  # GPU only
        noise = torch.randint(0, 256, images.shape, dtype=torch.uint8, device=step.device)
        return Batch((noise, targets.to(step.device), indices), plan)
    if plan is not None and step.augment is not None:
        images = step.augment.apply(images, plan).contiguous()
    return Batch((images, targets, indices))


def on_cpu(value: Any) -> Any:
    """A copy of nested state dicts with every tensor in host memory."""
    if isinstance(value, torch.Tensor):
        return value.detach().to("cpu", copy=True)
    if isinstance(value, dict):
        return {key: on_cpu(item) for key, item in value.items()}
    if isinstance(value, list | tuple):
        return type(value)(on_cpu(item) for item in value)
    return value
