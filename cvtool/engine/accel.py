"""The device, its precision and the settings a user would otherwise set by hand: which device,
which autocast dtype (and whether fp16 needs a GradScaler), cuDNN autotuning, TF32, and
torch.compile checked once while the step is built."""

from __future__ import annotations

import contextlib
import sys
from typing import Any

import torch

from cvtool.errors import CvtoolError
from cvtool.recipe.schema import TrainConfig

# bf16 runs on tensor cores from Ampere (compute capability 8.0) on. Below it
# `torch.cuda.is_bf16_supported()` is still True (emulated), and slower than fp16 and often
# than fp32, so `amp: auto` takes fp16 with loss scaling there (T4, V100, P100).
BF16_CAPABILITY = (8, 0)
DTYPES = {"bf16": torch.bfloat16, "fp16": torch.float16}


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


def amp_dtype(device: torch.device, amp: str, capability: tuple[int, int] | None = None) -> torch.dtype | None:
    """The autocast dtype of `train.amp`: auto is bf16 on CUDA GPUs of compute capability >= 8.0,
    fp16 below, and none (fp32) elsewhere; bf16 / fp16 asked explicitly run on the CPU too
    (CPU autocast), which is how the CPU tests cover the mixed-precision paths."""
    if amp == "none":
        return None
    if amp != "auto":
        return DTYPES[amp]
    if device.type != "cuda":
        return None
    if capability is None:
        capability = torch.cuda.get_device_capability(device)  # GPU only
    return torch.bfloat16 if tuple(capability) >= BF16_CAPABILITY else torch.float16


def grad_scaler(device: torch.device, dtype: torch.dtype | None) -> torch.amp.GradScaler | None:
    """fp16 gradients underflow without loss scaling; bf16 has fp32's range and needs none."""
    return torch.amp.GradScaler(device.type) if dtype == torch.float16 else None


def autocast(device: torch.device, dtype: torch.dtype | None) -> contextlib.AbstractContextManager:
    if dtype is None:
        return contextlib.nullcontext()
    return torch.autocast(device_type=device.type, dtype=dtype)


def cuda_defaults(device: torch.device, cfg: TrainConfig) -> None:
    """What a user would otherwise set by hand on CUDA (`train.cudnn_benchmark`, `train.tf32`):
    cuDNN autotuning for the (fixed) input shape, TensorFloat-32 for float32 matrix products."""
    if device.type != "cuda":
        return
    torch.backends.cudnn.benchmark = cfg.cudnn_benchmark  # GPU only
    torch.backends.cuda.matmul.allow_tf32 = cfg.tf32  # GPU only
    torch.backends.cudnn.allow_tf32 = cfg.tf32  # GPU only


def wants_compile(device: torch.device, mode: str | bool) -> bool:
    return device.type == "cuda" if mode == "auto" else bool(mode)


def compiled_forward(model: torch.nn.Module, shape: tuple[int, ...], device: torch.device,
                     dtype: torch.dtype | None, channels_last: bool) -> Any:
    """torch.compile(model), compiled now: one forward and backward on a random batch of `shape`
    (a training batch's shape and layout), so that a failure of the forward or of the backward
    graph shows here, once, and training runs eagerly with one line saying why; the training
    loop never catches anything. Running out of memory is not a compiler failure: it is raised.
    The trial changes nothing: gradients are dropped, BatchNorm statistics and every RNG
    restored. None when compiling failed."""
    buffers = {name: value.detach().clone() for name, value in model.named_buffers()}
    model.train()
    try:
        compiled = torch.compile(model)
        cuda = [device.index if device.index is not None else torch.cuda.current_device()] if device.type == "cuda" \
            else []
        with torch.random.fork_rng(devices=cuda):
            sample = torch.randn(shape, device=device)
            if channels_last:
                sample = sample.contiguous(memory_format=torch.channels_last)
            with autocast(device, dtype):
                output = compiled(sample)
            output.float().sum().backward()
    except torch.cuda.OutOfMemoryError:
        raise
    except Exception as exc:  # the compiler raises many types (backend, dynamo, inductor); any one means eager
        compile_failed(exc)
        compiled = None
    finally:
        model.zero_grad(set_to_none=True)
        with torch.no_grad():
            for name, value in model.named_buffers():
                value.copy_(buffers[name])
    return compiled


def compile_failed(exc: BaseException) -> None:
    """The one line a failed compile prints (training goes on eagerly)."""
    reason = (str(exc).strip().splitlines() or [""])[0][:160]
    print(f"cvtool: torch.compile failed ({type(exc).__name__}: {reason}); training without it",
          file=sys.stderr, flush=True)
