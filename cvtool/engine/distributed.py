"""Distributed training under torchrun (DDP); a single process gets no Dist at all.

torchrun starts one process per device and exports RANK, LOCAL_RANK, WORLD_SIZE and
MASTER_ADDR/MASTER_PORT; `from_environment` joins them into one process group (nccl on
CUDA, gloo on CPU). The recipe's batch size is per process, so the global batch is
`data.batch_size x WORLD_SIZE`. Ranks other than 0 print nothing on stdout: their epoch
rows would repeat rank 0's (errors still reach stderr).

Failures: when a worker exits non-zero, torchrun sends SIGTERM to the others (SIGKILL 30 s
later); a rank blocked in a collective with the dead one gets an error at once (gloo) or
when the process-group timeout expires (CVTOOL_DIST_TIMEOUT seconds, default 30 min).
`failure_guard` makes the first failing rank report its error as usual and the ranks
failing after it (on the broken collective) exit quietly, so the user reads one message.
"""

from __future__ import annotations

import contextlib
import inspect
import os
import sys
from collections.abc import Iterator
from dataclasses import dataclass
from datetime import timedelta
from typing import Any, TextIO

import numpy as np
import torch
from torch import nn

from cvtool.errors import CvtoolError

TIMEOUT_ENV = "CVTOOL_DIST_TIMEOUT"  # seconds a collective may wait for the slowest rank
DEFAULT_TIMEOUT = 1800.0
STORE_TIMEOUT = timedelta(seconds=10)  # failure bookkeeping must never hold up an exit for long


@dataclass
class Dist:
    """This process's place in the process group, and the collectives cvtool uses."""

    rank: int
    local_rank: int
    world_size: int
    device: torch.device
    store: Any = None  # torch.distributed.Store shared by all ranks (failure bookkeeping)
    failure_key: str = "cvtool/failures/0"
    stdout: TextIO | None = None  # the real stdout of a silenced rank, restored by close()

    def wrap(self, model: nn.Module, sync_batchnorm: bool, find_unused: bool = False, broadcast_buffers: bool = True,
             bucket_view: bool = True) -> nn.Module:
        """DistributedDataParallel around `model` (already on `self.device`).

        sync_batchnorm: BatchNorm statistics over the global batch (CUDA only; the layers are
        converted in place, so `model` keeps its parameters and state-dict keys).
        find_unused: some parameters may get no gradient in a step; needed when `model.freeze`
        sets requires_grad=False after wrapping, since DDP otherwise waits for their gradients.
        broadcast_buffers, bucket_view: `train.ddp` (DDP's broadcast_buffers, gradient_as_bucket_view).
        """
        if sync_batchnorm and any(isinstance(m, nn.modules.batchnorm._BatchNorm) for m in model.modules()):
            if self.device.type != "cuda":
                raise CvtoolError(f"model.sync_batchnorm: SyncBatchNorm runs on CUDA only, not on "
                                  f"{self.device.type}; set it to false for this run")
            model = nn.SyncBatchNorm.convert_sync_batchnorm(model)  # GPU only
        device_ids = [self.device.index] if self.device.type == "cuda" else None
        # torch 2.14 renamed broadcast_buffers (False also skipped the sync at init) to
        # forward_sync_buffers (the init sync stays, which is what cvtool wants either way)
        sync = "forward_sync_buffers" if "forward_sync_buffers" in inspect.signature(
            nn.parallel.DistributedDataParallel).parameters else "broadcast_buffers"
        return nn.parallel.DistributedDataParallel(model, device_ids=device_ids, find_unused_parameters=find_unused,
                                                   gradient_as_bucket_view=bucket_view, **{sync: broadcast_buffers})

    def average_buffers(self, model: nn.Module) -> None:
        """Every floating-point buffer (BatchNorm's running statistics) averaged over the ranks, in
        place: each rank's batches moved its own, and validation, which every rank runs on its
        shard, must see one model (it is also the one the checkpoint keeps)."""
        buffers = [b for b in model.buffers() if b.is_floating_point()]
        if not buffers:
            return
        flat = torch.cat([b.detach().reshape(-1).float() for b in buffers])
        torch.distributed.all_reduce(flat)
        flat /= self.world_size
        offset = 0
        with torch.no_grad():
            for buffer in buffers:
                buffer.copy_(flat[offset:offset + buffer.numel()].view_as(buffer))
                offset += buffer.numel()

    def gather(self, logits: np.ndarray, targets: np.ndarray, indices: np.ndarray,
               loss: float) -> tuple[np.ndarray, np.ndarray, np.ndarray, float]:
        """Every rank's outputs concatenated in rank order (on every rank), and the
        sample-weighted mean of the ranks' mean losses. Shards must not overlap (eval
        samplers do not pad), or samples would count twice. The arrays travel as tensors (one
        all_gather each, padded to the largest shard, then trimmed), not pickled; only each
        rank's count, loss and array layout go as a small object (an empty shard has no layout)."""
        layouts = self.gather_objects((len(indices), float(loss), [(a.shape[1:], a.dtype.str)
                                                                   for a in (logits, targets, indices)]))
        counts = [count for count, _, _ in layouts]
        mean = sum(count * part_loss for count, part_loss, _ in layouts) / max(sum(counts), 1)
        filled = next((layout for count, _, layout in layouts if count), layouts[0][2])
        arrays = [self._gather_rows(array, counts, trailing, np.dtype(dtype))
                  for array, (trailing, dtype) in zip((logits, targets, indices), filled, strict=True)]
        return arrays[0], arrays[1], arrays[2], float(mean)

    def _gather_rows(self, array: np.ndarray, counts: list[int], trailing: tuple[int, ...],
                     dtype: np.dtype) -> np.ndarray:
        """All ranks' rows of one array (`counts[r]` rows from rank r), in rank order."""
        padded = np.zeros((max(counts), *trailing), dtype)
        if len(array):
            padded[:len(array)] = array
        if not padded.size:  # nothing to send (every shard empty, or rows of width 0)
            return np.zeros((sum(counts), *trailing), dtype)
        mine = torch.from_numpy(padded).to(self.device)  # nccl gathers device tensors, gloo host ones
        parts = [torch.empty_like(mine) for _ in range(self.world_size)]
        torch.distributed.all_gather(parts, mine)
        return np.concatenate([part[:count].cpu().numpy() for part, count in zip(parts, counts, strict=True)])

    def gather_objects(self, value: Any) -> list[Any]:
        """Every rank's `value`, in rank order, on every rank (small objects: RNG states)."""
        parts: list[Any] = [None] * self.world_size
        torch.distributed.all_gather_object(parts, value)
        return parts

    def barrier(self) -> None:
        torch.distributed.barrier()

    def close(self) -> None:
        """Leave the process group (and give a silenced rank its stdout back)."""
        if torch.distributed.is_initialized():
            torch.distributed.destroy_process_group()
        if self.stdout is not None:
            sys.stdout.flush()
            sys.stdout, self.stdout = self.stdout, None

    def claim_first_failure(self) -> bool:
        """True for the first rank to fail in this run (and when nobody can tell)."""
        if self.store is None:
            return True
        try:
            return int(self.store.add(self.failure_key, 1)) == 1
        except Exception:  # the store's host is gone: better a second message than none
            return True


@contextlib.contextmanager
def failure_guard(dist: Dist | None) -> Iterator[None]:
    """Around a distributed run: the first rank to fail re-raises (the CLI prints its one red
    line, or a traceback for a bug); ranks failing after it exit quietly with a non-zero code."""
    if dist is None:
        yield
        return
    try:
        yield
    except BaseException as exc:
        code = _exit_code(exc)
        if code == 0 or dist.claim_first_failure():
            raise
        raise SystemExit(code) from None


def _exit_code(exc: BaseException) -> int:
    if isinstance(exc, SystemExit):  # sys.exit(): None is success, a message is failure
        return 0 if exc.code is None else exc.code if isinstance(exc.code, int) else 1
    code = getattr(exc, "exit_code", 1)  # CvtoolError, typer.Exit
    return code if isinstance(code, int) else 1


def from_environment(device: str) -> Dist | None:
    """A Dist when launched by torchrun with WORLD_SIZE > 1 (joins the process group), else None.

    device: the recipe's train.device; "auto" means CUDA (nccl) when available, else CPU (gloo).
    """
    world_size = int(os.environ.get("WORLD_SIZE", "1"))
    if world_size <= 1:
        return None
    if "RANK" not in os.environ:
        raise CvtoolError(f"WORLD_SIZE={world_size} but RANK is not set: start the processes with torchrun")
    rank, local_rank = int(os.environ["RANK"]), int(os.environ.get("LOCAL_RANK", "0"))
    target = _device(device, local_rank)
    if target.type == "cuda":  # GPU only
        torch.cuda.set_device(target)
    torch.distributed.init_process_group("nccl" if target.type == "cuda" else "gloo", timeout=_timeout(),
                                         device_id=target if target.type == "cuda" else None)
    store = _failure_store()
    restart = os.environ.get("TORCHELASTIC_RESTART_COUNT", "0")
    stdout = None
    if rank != 0:
        stdout, sys.stdout = sys.stdout, open(os.devnull, "w")  # noqa: SIM115 (closed with the process)
    return Dist(rank, local_rank, world_size, target, store, f"cvtool/failures/{restart}", stdout)


def _device(name: str, local_rank: int) -> torch.device:
    if name == "auto":
        name = "cuda" if torch.cuda.is_available() else "cpu"
    if name == "mps":
        raise CvtoolError("train.device: mps cannot train distributed; use cpu (gloo) or cuda (nccl)")
    if name == "cpu":
        return torch.device("cpu")
    count = torch.cuda.device_count()  # GPU only from here
    if count == 0:
        raise CvtoolError("train.device: cuda requested but no CUDA device is available")
    if local_rank >= count:
        raise CvtoolError(f"LOCAL_RANK {local_rank} but this node has {count} visible CUDA device(s); "
                          "start at most that many processes per node (--nproc_per_node)")
    return torch.device("cuda", local_rank)


def _timeout() -> timedelta:
    text = os.environ.get(TIMEOUT_ENV, "")
    try:
        seconds = float(text) if text else DEFAULT_TIMEOUT
    except ValueError:
        raise CvtoolError(f"{TIMEOUT_ENV}={text!r}: expected a number of seconds") from None
    if not seconds > 0:
        raise CvtoolError(f"{TIMEOUT_ENV}={text!r}: must be a positive number of seconds")
    return timedelta(seconds=seconds)


def _failure_store() -> Any:
    """A client of the rendezvous store (torchrun's agent, or rank 0 for a plain env:// launch)."""
    address, port = os.environ.get("MASTER_ADDR"), os.environ.get("MASTER_PORT")
    if not address or not port:
        return None
    try:
        return torch.distributed.TCPStore(address, int(port), is_master=False, timeout=STORE_TIMEOUT)
    except (RuntimeError, ValueError):
        return None
