"""Batches onto the training device ahead of the step that needs them.

On CUDA the uint8 batch, pinned by the DataLoader's pin thread (`Batch.pin_memory`), is copied
with `non_blocking` on a side stream while the current step's kernels run; the step's stream
waits on an event for that copy only. A uint8 batch is a quarter of its float32 size, and augmentation and normalization then run on the
device (`engine.loop.Stepper.inputs`), so the CPU only gathers pixels and draws parameters.
Elsewhere batches pass through unchanged (`.to(device)` in the step is then a no-op).
"""

from __future__ import annotations

from collections.abc import Iterator
from typing import Any

import torch

from cvtool.data.loaders import Batch


def augment_on_device(device: torch.device, workers: int, on_device: str | bool = False) -> bool:
    """Whether flips/affines run on the training device rather than in the loader: on CUDA always;
    on the CPU when the main process would run them anyway (no workers; with workers they
    augment in parallel, the same images either way); and with `data.on_device: true`, whose
    batches are gathered on the device (`data.resident`) and carry their drawn plans."""
    return device.type == "cuda" or (device.type == "cpu" and workers == 0) or on_device is True


class DeviceFeeder:
    """Iterates a loader's `Batch`es with images and targets already on `device` (CUDA: one
    batch ahead, overlapping the copy with the current step). `len()` is the loader's."""

    def __init__(self, loader: Any, device: torch.device) -> None:
        self.loader, self.device = loader, device

    def __len__(self) -> int:
        return len(self.loader)

    def __iter__(self) -> Iterator[Batch]:
        if self.device.type != "cuda":
            yield from self.loader
            return
        yield from self._ahead()

    def _ahead(self) -> Iterator[Batch]:  # GPU only
        stream = torch.cuda.Stream(self.device)
        pending = None
        for batch in self.loader:
            copied = self._copy(batch, stream)
            if pending is not None:
                yield self._ready(*pending)
            pending = copied
        if pending is not None:
            yield self._ready(*pending)

    def _copy(self, batch: Batch, stream: Any) -> tuple[Batch, Any]:  # GPU only
        images, targets, indices = batch
        with torch.cuda.stream(stream):
            # the loader's pin thread pinned them (Batch.pin_memory); pinning here is only for other sources
            images = (images if images.is_pinned() else images.pin_memory()).to(self.device, non_blocking=True)
            targets = (targets if targets.is_pinned() else targets.pin_memory()).to(self.device, non_blocking=True)
            done = torch.cuda.Event()
            done.record(stream)
        return Batch((images, targets, indices), getattr(batch, "augment", None)), done

    def _ready(self, batch: Batch, done: Any) -> Batch:  # GPU only
        current = torch.cuda.current_stream(self.device)
        current.wait_event(done)
        for tensor in batch[:2]:
            tensor.record_stream(current)  # memory made on the side stream, used on this one
        return batch
