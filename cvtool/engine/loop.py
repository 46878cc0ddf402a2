"""The step: one training epoch (`train_one_epoch`) over a `Step`, and one inference pass.

`Step` holds everything an optimizer update needs. `runs/step.py` builds it whole; nothing
assigns its fields later (a phase change builds a new one), so what a step does can be read
here, top to bottom, from the batch to `backward()` and the update.
"""

from __future__ import annotations

import contextlib
import time
from collections.abc import Callable, Iterator
from dataclasses import dataclass
from typing import TYPE_CHECKING, Any, Protocol

import numpy as np
import torch

from cvtool.engine.accel import autocast
from cvtool.errors import NonFiniteError

if TYPE_CHECKING:
    from cvtool.data.batch_augment import BatchAugment, Plan
    from cvtool.data.batch_mix import BatchMixer
    from cvtool.engine.ema import WeightEMA
    from cvtool.engine.schedule import LrSchedule


class NonFiniteLoss(NonFiniteError):
    def __init__(self, epoch: int, batch: int, value: float) -> None:
        super().__init__(f"training stopped: loss is {value} at epoch {epoch}, batch {batch} "
                         "(the last good checkpoint is kept; try a lower optim.lr or --detect-anomaly)")


class NonFiniteOutputs(NonFiniteError):
    def __init__(self, split: str, epoch: int | None) -> None:
        if epoch is None:  # evaluating a checkpoint
            super().__init__(f"the model's {split} outputs are NaN or infinite (the checkpoint's weights diverged)")
            return
        super().__init__(f"training stopped: the model's {split} outputs are NaN or infinite at epoch {epoch} "
                         "while the training loss is finite (the last good checkpoint is kept; try a lower "
                         "optim.lr, train.grad_clip or --detect-anomaly)")


class Meter(Protocol):
    """Gathers the training split's metrics while an epoch runs (`Task.train_meter`)."""

    def add(self, logits: torch.Tensor, targets: torch.Tensor, indices: torch.Tensor) -> None: ...

    def result(self) -> dict[str, float]: ...


class StopRequested(Exception):
    """Raised between batches when SIGINT/SIGTERM asked the run to stop."""


def _never() -> bool:
    return False


def _train_mode(model: torch.nn.Module) -> None:
    model.train()


@dataclass(frozen=True)
class Step:
    """Everything one optimizer update needs, built whole by `runs.step.build_step`."""

    model: torch.nn.Module  # what trains: DistributedDataParallel around `module` under torchrun
    module: torch.nn.Module  # the plain model (checkpoints, EMA)
    forward: Callable[[torch.Tensor], torch.Tensor]  # the compiled model, or `model`
    normalize: torch.nn.Module
    loss_fn: torch.nn.Module
    optimizer: torch.optim.Optimizer
    schedule: LrSchedule
    device: torch.device
    dtype: torch.dtype | None = None  # autocast dtype; None: fp32
    scaler: torch.amp.GradScaler | None = None  # fp16's loss scaling
    channels_last: bool = False
    ema: WeightEMA | None = None
    augment: BatchAugment | None = None  # applies a batch's drawn flips/affines on the device
    mix: BatchMixer | None = None  # MixUp / CutMix of whole batches
    accumulate: int = 1  # batches per optimizer update
    grad_clip: float | None = None
    max_batches: int | None = None  # cut each epoch short (smoke tests, benchmarks)
    train_mode: Callable[[torch.nn.Module], None] = _train_mode  # model.train() (+ frozen BatchNorm in eval)
    stop: Callable[[], bool] = _never  # asked before every batch (SIGINT/SIGTERM)

    def inputs(self, images: torch.Tensor, plan: Plan | None = None) -> torch.Tensor:
        """uint8 batch -> model input on the device: drawn flips/affines, resize, normalize, channels_last."""
        images = images.to(self.device, non_blocking=True)
        if plan is not None and self.augment is not None:
            images = self.augment.apply(images, plan)
        x = self.normalize(images)
        return x.contiguous(memory_format=torch.channels_last) if self.channels_last else x


@dataclass(frozen=True)
class EpochResult:
    loss: float
    metrics: dict[str, float]  # train/* metrics (none under MixUp: mixed images have no true label)
    seconds: float
    images: int


SHOW_LOSS_EVERY = 25  # CUDA: steps between progress-bar loss reads (each read waits for the device)


def train_one_epoch(step: Step, loader: Any, epoch: int, meter: Meter | None = None,
                    progress: Any = None) -> EpochResult:
    """One pass over the training loader. With `accumulate: N` the optimizer updates after every
    N batches; each batch's loss is weighted by its share of its group's images, so N batches of
    B give the gradient of one batch of N x B (also for a short last group). On CUDA nothing
    waits for the device: the loss sum stays there and a non-finite loss is reported after the
    epoch, naming its batch (on the CPU at once)."""
    step.train_mode(step.model)
    sizes = batch_sizes(loader, step.max_batches)
    eager_check = step.device.type != "cuda"  # reading a loss on the CPU costs nothing
    total: Any = 0.0 if eager_check else torch.zeros((), dtype=torch.float64, device=step.device)
    losses: list[torch.Tensor] = []
    start, count = time.perf_counter(), 0
    for i, batch in enumerate(_with_progress(loader, progress)):
        if i == len(sizes):
            break
        if step.stop():
            raise StopRequested
        group = sizes[i - i % step.accumulate:][:step.accumulate]  # this batch's accumulation group
        last_of_group = len(group) == i % step.accumulate + 1
        images, targets, index = batch
        x, y = step.inputs(images, getattr(batch, "augment", None)), targets.to(step.device, non_blocking=True)
        if step.mix is not None:
            x, y, _ = step.mix(x, y, epoch, i)
        with _sync_gradients(step.model, last_of_group):
            with autocast(step.device, step.dtype):
                logits = step.forward(x)
                loss = step.loss_fn(logits.float(), y)
            if eager_check and not torch.isfinite(loss):
                raise NonFiniteLoss(epoch, i + 1, float(loss.detach()))
            weighted = loss * (len(images) / sum(group))
            (weighted if step.scaler is None else step.scaler.scale(weighted)).backward()
        if last_of_group:
            update(step, epoch)
        losses.append(loss.detach())
        total = total + (float(losses[-1]) if eager_check else losses[-1].double()) * len(images)
        count += len(images)
        if meter is not None and step.mix is None:
            meter.add(logits.detach(), y, index)
        if progress is not None:
            shown = eager_check or i % SHOW_LOSS_EVERY == 0
            progress.update(loss=float(total) / count if shown else None, images=count,
                            seconds=time.perf_counter() - start)
    _check_finite(losses, epoch)
    metrics = meter.result() if meter is not None and step.mix is None else {}
    return EpochResult(float(total) / max(count, 1), metrics, time.perf_counter() - start, count)


def update(step: Step, epoch: int) -> None:
    """One optimizer update from the accumulated gradients, which are freed right after it (they
    would otherwise stay allocated through the next forward); then the schedule's next lr and
    the weight average."""
    if step.scaler is not None and step.grad_clip:
        step.scaler.unscale_(step.optimizer)  # clip the true gradients, not the scaled ones
    if step.grad_clip:
        torch.nn.utils.clip_grad_norm_(step.model.parameters(), step.grad_clip)
    if step.scaler is not None:
        step.scaler.step(step.optimizer)  # skipped when fp16 gradients overflowed
        step.scaler.update()
    else:
        step.optimizer.step()
    step.optimizer.zero_grad(set_to_none=True)
    step.schedule.step()
    if step.ema is not None:
        step.ema.update(step.module, epoch)


def _check_finite(losses: list[torch.Tensor], epoch: int) -> None:
    """The first non-finite loss of an epoch (one device read for the whole epoch)."""
    stacked = torch.stack(losses) if losses else torch.zeros(0)
    finite = torch.isfinite(stacked)
    if not bool(finite.all()):
        first = int((~finite).nonzero()[0, 0])
        raise NonFiniteLoss(epoch, first + 1, float(stacked[first]))


def batch_sizes(loader: Any, max_batches: int | None = None) -> list[int]:
    """The image count of each batch an epoch of `loader` yields (a DataLoader over a sampler, or
    a list of batches), the first `max_batches` of them."""
    loader = getattr(loader, "loader", loader)  # a data.device.DeviceFeeder: the DataLoader it feeds from
    if isinstance(loader, torch.utils.data.DataLoader):
        total, size = len(loader.sampler), loader.batch_size
        sizes = [size] * (total // size) + ([] if loader.drop_last or total % size == 0 else [total % size])
    else:
        sizes = [len(batch[0]) for batch in loader]
    return sizes[:max_batches] if max_batches is not None else sizes


def updates_per_epoch(batches: int, accumulate: int) -> int:
    return -(-batches // accumulate)


def _sync_gradients(model: torch.nn.Module, sync: bool) -> contextlib.AbstractContextManager:
    """DDP all-reduces gradients only on the batch the optimizer updates after."""
    if sync or not hasattr(model, "no_sync"):
        return contextlib.nullcontext()
    return model.no_sync()


@torch.no_grad()
def run_inference(model: torch.nn.Module, normalize: torch.nn.Module, loader: Any, device: torch.device,
                  dtype: torch.dtype | None = None, loss_fn: torch.nn.Module | None = None,
                  channels_last: bool = False) -> tuple[np.ndarray, np.ndarray, np.ndarray, float]:
    """(logits, targets, indices, mean loss) over a loader, model in eval mode."""
    model.eval()
    eager, logits_all, targets_all, index_all, count = device.type != "cuda", [], [], [], 0  # CUDA: sums stay there
    total_loss: Any = 0.0 if eager else torch.zeros((), dtype=torch.float64, device=device)
    for images, targets, index in loader:
        x = normalize(images.to(device, non_blocking=True))
        if channels_last:
            x = x.contiguous(memory_format=torch.channels_last)
        with autocast(device, dtype):
            logits = model(x).float()
        if loss_fn is not None:
            loss = loss_fn(logits, targets.to(device, non_blocking=True)).detach()
            total_loss = total_loss + (float(loss) if eager else loss.double()) * images.shape[0]
        count += images.shape[0]
        logits_all.append(logits if not eager else logits.cpu())
        targets_all.append(targets)
        index_all.append(index)
    if not logits_all:  # an empty shard (more ranks than samples)
        return np.zeros((0, 0), np.float32), np.zeros((0,), np.float32), np.zeros((0,), np.int64), 0.0
    return (torch.cat(logits_all).cpu().numpy(), torch.cat(targets_all).numpy(), torch.cat(index_all).numpy(),
            float(total_loss) / max(count, 1))


def _with_progress(loader: Any, progress: Any) -> Iterator:
    return iter(loader) if progress is None else progress.track(loader)
