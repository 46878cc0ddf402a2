"""The training loop as plain functions: one training epoch, one inference pass."""

from __future__ import annotations

import contextlib
import time
from collections.abc import Callable, Iterator
from dataclasses import dataclass, field
from typing import Any

import numpy as np
import torch

from cvtool.engine.accel import compile_failed
from cvtool.errors import CvtoolError, NonFiniteError
from cvtool.recipe.schema import TrainConfig


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


class StopRequested(Exception):
    """Raised between batches when SIGINT/SIGTERM asked the run to stop."""


def select_device(name: str) -> torch.device:
    """auto: cuda, then mps, then cpu."""
    if name == "auto":
        if torch.cuda.is_available():  # GPU only
            return torch.device("cuda")
        if getattr(torch.backends, "mps", None) is not None and torch.backends.mps.is_available():
            return torch.device("mps")
        return torch.device("cpu")
    if name == "cuda" and not torch.cuda.is_available():
        raise CvtoolError("train.device: cuda requested but no CUDA device is available")
    return torch.device(name)


def amp_dtype(device: torch.device, amp: str) -> torch.dtype | None:
    """Mixed precision on CUDA only: bf16 where supported (auto), else fp16."""
    if device.type != "cuda" or amp == "none":
        return None
    if amp == "auto":  # GPU only
        return torch.bfloat16 if torch.cuda.is_bf16_supported() else torch.float16
    return torch.bfloat16 if amp == "bf16" else torch.float16


def autocast(device: torch.device, dtype: torch.dtype | None) -> contextlib.AbstractContextManager:
    if dtype is None:
        return contextlib.nullcontext()
    return torch.autocast(device_type=device.type, dtype=dtype)  # GPU only


@dataclass
class Stepper:
    """Everything one optimization step needs."""

    model: torch.nn.Module
    normalize: torch.nn.Module
    loss_fn: torch.nn.Module
    optimizer: torch.optim.Optimizer
    schedule: Any
    device: torch.device
    cfg: TrainConfig
    dtype: torch.dtype | None = None
    channels_last: bool = False
    scaler: Any = None
    stop: Callable[[], bool] = field(default=lambda: False)
    after_train_mode: Callable[[torch.nn.Module], None] = field(default=lambda m: None)
    augment: Any = None  # data.batch_augment.BatchAugment applying a Batch's drawn plan on the device
    mix: Any = None  # cvtool.data.batch_mix.BatchMixer: MixUp / CutMix per batch, on the device
    after_step: Callable[[int], None] | None = None  # after each optimizer step, with the epoch (EMA)
    compiled: Any = None  # torch.compile(model) for training steps; None: eager

    def inputs(self, images: torch.Tensor, plan: Any = None) -> torch.Tensor:
        """uint8 batch -> model input on the device: drawn flips/affines, resize, normalize, channels_last."""
        images = images.to(self.device, non_blocking=True)
        if plan is not None and self.augment is not None:
            images = self.augment.apply(images, plan)
        x = self.normalize(images)
        return x.contiguous(memory_format=torch.channels_last) if self.channels_last else x

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        """The compiled model when there is one; on its first failure, one line and eager from then on."""
        if self.compiled is not None:
            try:
                return self.compiled(x)
            except Exception as exc:  # the compiler raises many types; any one means: run eagerly
                compile_failed(exc)
                self.compiled = None
        return self.model(x)


@dataclass
class EpochResult:
    loss: float
    logits: np.ndarray
    targets: np.ndarray
    indices: np.ndarray
    seconds: float
    images: int


SHOW_LOSS_EVERY = 25  # CUDA: steps between progress-bar loss reads (each read waits for the device)


def train_one_epoch(step: Stepper, loader: Any, epoch: int, progress: Any = None) -> EpochResult:
    """One pass over the training loader; returns the mean loss and the batch outputs. Loss and
    outputs stay on the device until the epoch ends: on CUDA no step waits for the GPU (a
    non-finite loss is reported after the epoch, naming its batch; on CPU at once). With `train.accumulate: N` the optimizer steps every N batches; each batch's loss is weighted
    by its share of the images of its group, so N batches of B give the gradient of one batch of
    N x B (also for a short last group)."""
    step.model.train()
    step.after_train_mode(step.model)
    eager_check = step.device.type != "cuda"  # reading a loss on the CPU costs nothing
    start, count = time.perf_counter(), 0
    # CUDA: a float64 sum on the device (MPS has no float64; elsewhere a Python float is as cheap)
    total_loss: Any = 0.0 if eager_check else torch.zeros((), dtype=torch.float64, device=step.device)
    losses, logits_all, targets_all, index_all = [], [], [], []
    groups = accumulation_groups(loader, step.cfg.accumulate, step.cfg.max_batches)
    for batch_no, batch in enumerate(_with_progress(loader, progress)):
        if step.stop():
            raise StopRequested
        if batch_no >= len(groups):
            break
        group_images, last_of_group = groups[batch_no]
        images, targets, index = batch
        x = step.inputs(images, getattr(batch, "augment", None))
        y = targets.to(step.device, non_blocking=True)
        if step.mix is not None:
            x, y, _ = step.mix(x, y, epoch, batch_no)
        with _sync_gradients(step.model, last_of_group), autocast(step.device, step.dtype):
            logits = step.forward(x)
            loss = step.loss_fn(logits.float(), y)
        if eager_check and not torch.isfinite(loss):
            raise NonFiniteLoss(epoch, batch_no + 1, float(loss.detach()))
        n = images.shape[0]
        share = n / group_images
        if step.cfg.accumulate == 1 or batch_no % step.cfg.accumulate == 0:
            step.optimizer.zero_grad(set_to_none=True)
        with _sync_gradients(step.model, last_of_group):
            _backward(step, loss if share == 1.0 else loss * share)
        if last_of_group:
            _step(step)
            step.schedule.step_batch()
            if step.after_step is not None:
                step.after_step(epoch)
        losses.append(loss.detach())
        total_loss = total_loss + (float(losses[-1]) if eager_check else losses[-1].double()) * n
        count += n
        logits_all.append(logits.detach().float())
        targets_all.append(targets)
        index_all.append(index)
        if progress is not None:
            shown = eager_check or batch_no % SHOW_LOSS_EVERY == 0
            progress.update(loss=float(total_loss) / count if shown else None, images=count,
                            seconds=time.perf_counter() - start)
    _check_finite(losses, epoch)
    return EpochResult(float(total_loss) / max(count, 1), torch.cat(logits_all).cpu().numpy(),
                       torch.cat(targets_all).cpu().numpy(), torch.cat(index_all).numpy(),
                       time.perf_counter() - start, count)


def _check_finite(losses: list[torch.Tensor], epoch: int) -> None:
    """The first non-finite loss of an epoch (one device read for the whole epoch)."""
    stacked = torch.stack(losses) if losses else torch.zeros(0)
    finite = torch.isfinite(stacked)
    if not bool(finite.all()):
        first = int((~finite).nonzero()[0, 0])
        raise NonFiniteLoss(epoch, first + 1, float(stacked[first]))


def batch_sizes(loader: Any, max_batches: int | None = None) -> list[int]:
    """The image count of each batch an epoch of `loader` yields (a DataLoader over a sampler, or
    a list of batches)."""
    loader = getattr(loader, "loader", loader)  # a data.device.DeviceFeeder: the DataLoader it feeds from
    if isinstance(loader, torch.utils.data.DataLoader):
        total, size = len(loader.sampler), loader.batch_size
        sizes = [size] * (total // size) + ([] if loader.drop_last or total % size == 0 else [total % size])
    else:
        sizes = [len(batch[0]) for batch in loader]
    return sizes[:max_batches] if max_batches is not None else sizes


def optimizer_steps(batches: int, accumulate: int) -> int:
    return -(-batches // accumulate)


def accumulation_groups(loader: Any, accumulate: int, max_batches: int | None) -> list[tuple[int, bool]]:
    """Per batch: (images in its accumulation group, whether the optimizer steps after it)."""
    sizes = batch_sizes(loader, max_batches)
    plan = []
    for start in range(0, len(sizes), accumulate):
        group = sizes[start:start + accumulate]
        plan += [(sum(group), i == len(group) - 1) for i in range(len(group))]
    return plan


def _sync_gradients(model: torch.nn.Module, sync: bool) -> contextlib.AbstractContextManager:
    """DDP all-reduces gradients only on the batch the optimizer steps after."""
    if sync or not hasattr(model, "no_sync"):
        return contextlib.nullcontext()
    return model.no_sync()


def _backward(step: Stepper, loss: torch.Tensor) -> None:
    if step.scaler is not None:  # GPU only: fp16 needs loss scaling
        step.scaler.scale(loss).backward()
    else:
        loss.backward()


def _step(step: Stepper) -> None:
    if step.scaler is not None:  # GPU only
        if step.cfg.grad_clip:
            step.scaler.unscale_(step.optimizer)
            torch.nn.utils.clip_grad_norm_(step.model.parameters(), step.cfg.grad_clip)
        step.scaler.step(step.optimizer)
        step.scaler.update()
        return
    if step.cfg.grad_clip:
        torch.nn.utils.clip_grad_norm_(step.model.parameters(), step.cfg.grad_clip)
    step.optimizer.step()


def backward_and_step(step: Stepper, loss: torch.Tensor) -> None:
    """One optimizer step on one loss (the lr range test)."""
    _backward(step, loss)
    _step(step)


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
