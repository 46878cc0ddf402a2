"""CUDA settings a user would otherwise set by hand, and torch.compile with a one-line fallback."""

from __future__ import annotations

import sys
from typing import Any

import torch

from cvtool.recipe.schema import TrainConfig


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
        compile_failed(exc)
        return None


def compile_failed(exc: BaseException) -> None:
    """The one line a failed compile prints (training goes on eagerly)."""
    reason = (str(exc).strip().splitlines() or [""])[0][:160]
    print(f"cvtool: torch.compile failed ({type(exc).__name__}: {reason}); training without it",
          file=sys.stderr, flush=True)
