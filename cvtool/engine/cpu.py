"""CPU settings that make training steps fast and steady, scoped to the call they wrap."""

from __future__ import annotations

import contextlib
import ctypes
import functools
import sys
from collections.abc import Callable, Iterator
from typing import Any, TypeVar

import torch

_F = TypeVar("_F", bound=Callable[..., Any])


@contextlib.contextmanager
def cpu_runtime() -> Iterator[None]:
    """CPU settings that make training steps fast and steady, and the process as it was
    afterwards (flush-to-zero is process state other code sees):

    - Denormal floats (|x| < 1.2e-38) take a slow microcode path on x86: once a model fits its
      data, tiny gradients made steps up to 2.6x slower (simplenet 28 px: 42 -> 110 ms).
    - glibc gives freed blocks above its adaptive mmap threshold back to the OS, so a step could
      page-fault its activations in again (simplenet 28 px: 47 ms instead of 39)."""
    _keep_freed_memory()
    torch.set_flush_denormal(True)
    try:
        yield
    finally:
        torch.set_flush_denormal(False)


def with_cpu_runtime(fn: _F) -> _F:
    """`fn` run inside `cpu_runtime()` (a training benchmark, the lr range test)."""

    @functools.wraps(fn)
    def wrapper(*args: Any, **kwargs: Any) -> Any:
        with cpu_runtime():
            return fn(*args, **kwargs)

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
