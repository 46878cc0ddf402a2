"""The training loop as plain functions: one training epoch, one inference pass."""

from __future__ import annotations

import contextlib
import ctypes
import functools
import sys
import time
from collections.abc import Callable, Iterator
from dataclasses import dataclass, field
from typing import Any, TypeVar

import numpy as np
import torch

from cvtool.errors import CvtoolError
from cvtool.recipe.schema import TrainConfig

_F = TypeVar("_F", bound=Callable[..., Any])


def with_cpu_runtime(fn: _F) -> _F:
    """Run `fn` (training, a training benchmark) with CPU settings that make steps fast and steady,
    and leave the process as it was afterwards (flush-to-zero is process state other code sees):

    - Denormal floats (|x| < 1.2e-38) take a slow microcode path on x86: once a model fits its
      data, tiny gradients made steps up to 2.6x slower (simplenet 28 px: 42 -> 110 ms).
    - glibc gives freed blocks above its adaptive mmap threshold back to the OS, so a step could
      page-fault its activations in again (simplenet 28 px: 47 ms instead of 39)."""

    @functools.wraps(fn)
    def wrapper(*args: Any, **kwargs: Any) -> Any:
        _keep_freed_memory()
        torch.set_flush_denormal(True)
        try:
            return fn(*args, **kwargs)
        finally:
            torch.set_flush_denormal(False)

    return wrapper  # type: ignore[return-value]


def _keep_freed_memory() -> None:
    if sys.platform != "linux":
        return
    try:
        mallopt = ctypes.CDLL(None).mallopt
    except (OSError, AttributeError):  # not glibc
        return
    mallopt(-3, 32 << 20)  # M_MMAP_THRESHOLD, at the adaptive threshold's ceiling
    mallopt(-1, 1 << 30)  # M_TRIM_THRESHOLD


class NonFiniteLoss(CvtoolError):
    def __init__(self, epoch: int, batch: int, value: float) -> None:
        super().__init__(f"training stopped: loss is {value} at epoch {epoch}, batch {batch} "
                         "(the last good checkpoint is kept; try a lower optim.lr or --detect-anomaly)")


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


def cuda_defaults(device: torch.device, cfg: TrainConfig) -> None:
    """What a user would otherwise set by hand on CUDA (`train.cudnn_benchmark`, `train.tf32`):
    cuDNN autotuning for the (fixed) input shape, TensorFloat-32 for float32 matrix products."""
    if device.type != "cuda":
        return
    torch.backends.cudnn.benchmark = cfg.cudnn_benchmark  # GPU only
    torch.backends.cuda.matmul.allow_tf32 = cfg.tf32  # GPU only
    torch.backends.cudnn.allow_tf32 = cfg.tf32  # GPU only


def compile_model(model: torch.nn.Module, device: torch.device, mode: str | bool) -> Any:
    """torch.compile(model) when `train.compile` asks for it (auto: on CUDA), else None. Compiling
    is lazy: `Stepper.forward` falls back to eager when the first compiled call fails."""
    if not (device.type == "cuda" if mode == "auto" else mode):
        return None
    try:
        return torch.compile(model)
    except Exception as exc:  # e.g. a Python version this torch cannot compile for
        _compile_failed(exc)
        return None


def _compile_failed(exc: BaseException) -> None:
    reason = (str(exc).strip().splitlines() or [""])[0][:160]
    print(f"cvtool: torch.compile failed ({type(exc).__name__}: {reason}); training without it",
          file=sys.stderr, flush=True)


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
    # MixUp / CutMix plug in here: (normalized device images, device targets) -> mixed images and
    # (soft) targets, after augmentation and before the forward pass
    mix: Callable[[torch.Tensor, torch.Tensor], tuple[torch.Tensor, torch.Tensor]] | None = None
    compiled: Any = None  # torch.compile(model) for training steps; None: eager

    def inputs(self, images: torch.Tensor, plan: Any = None) -> torch.Tensor:
        """uint8 batch -> model input, in one pass on the device: the drawn flips/affines, the resize
        to the model's size, normalization, then channels_last."""
        images = images.to(self.device, non_blocking=True)
        if plan is not None and self.augment is not None:
            images = self.augment.apply(images, plan)
        x = self.normalize(images)
        return x.contiguous(memory_format=torch.channels_last) if self.channels_last else x

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        """The compiled model when there is one; on its first failure one line says so and training
        goes on eagerly (a backend without its compiler, an operator it cannot trace)."""
        if self.compiled is not None:
            try:
                return self.compiled(x)
            except Exception as exc:  # the compiler raises many types; any one means: run eagerly
                _compile_failed(exc)
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
    non-finite loss is then reported after the epoch, naming its batch; on CPU at once)."""
    step.model.train()
    step.after_train_mode(step.model)
    eager_check = step.device.type != "cuda"  # reading a loss on the CPU costs nothing
    start, count = time.perf_counter(), 0
    # CUDA: a float64 sum on the device (MPS has no float64; elsewhere a Python float is as cheap)
    total_loss: Any = 0.0 if eager_check else torch.zeros((), dtype=torch.float64, device=step.device)
    losses, logits_all, targets_all, index_all = [], [], [], []
    for batch_no, batch in enumerate(_with_progress(loader, progress)):
        if step.stop():
            raise StopRequested
        if step.cfg.max_batches is not None and batch_no >= step.cfg.max_batches:
            break
        images, targets, index = batch
        x = step.inputs(images, getattr(batch, "augment", None))
        y = targets.to(step.device, non_blocking=True)
        if step.mix is not None:
            x, y = step.mix(x, y)
        with autocast(step.device, step.dtype):
            logits = step.forward(x)
            loss = step.loss_fn(logits.float(), y)
        if eager_check and not torch.isfinite(loss):
            raise NonFiniteLoss(epoch, batch_no + 1, float(loss.detach()))
        step.optimizer.zero_grad(set_to_none=True)
        _backward_and_step(step, loss)
        step.schedule.step_batch()
        n = images.shape[0]
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
    if not losses:
        return
    stacked = torch.stack(losses)
    finite = torch.isfinite(stacked)
    if not bool(finite.all()):
        first = int((~finite).nonzero()[0, 0])
        raise NonFiniteLoss(epoch, first + 1, float(stacked[first]))


def _backward_and_step(step: Stepper, loss: torch.Tensor) -> None:
    if step.scaler is not None:  # GPU only: fp16 needs loss scaling
        step.scaler.scale(loss).backward()
        if step.cfg.grad_clip:
            step.scaler.unscale_(step.optimizer)
            torch.nn.utils.clip_grad_norm_(step.model.parameters(), step.cfg.grad_clip)
        step.scaler.step(step.optimizer)
        step.scaler.update()
        return
    loss.backward()
    if step.cfg.grad_clip:
        torch.nn.utils.clip_grad_norm_(step.model.parameters(), step.cfg.grad_clip)
    step.optimizer.step()


@torch.no_grad()
def run_inference(model: torch.nn.Module, normalize: torch.nn.Module, loader: Any, device: torch.device,
                  dtype: torch.dtype | None = None, loss_fn: torch.nn.Module | None = None,
                  channels_last: bool = False) -> tuple[np.ndarray, np.ndarray, np.ndarray, float]:
    """(logits, targets, indices, mean loss) over a loader, model in eval mode."""
    model.eval()
    eager = device.type != "cuda"  # CUDA: sums stay on the device until the pass ends
    logits_all, targets_all, index_all, count = [], [], [], 0
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
