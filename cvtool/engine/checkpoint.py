"""Checkpoints: plain tensors and primitives only, written atomically, loaded with
`torch.load(weights_only=True)` so a file carrying a malicious pickle runs nothing."""

from __future__ import annotations

import pickle
import random
import re
import warnings
from pathlib import Path
from typing import TYPE_CHECKING, Any

import numpy as np
import torch

from cvtool import __version__
from cvtool.errors import CvtoolError
from cvtool.fileio import atomic_path

if TYPE_CHECKING:
    from cvtool.engine.ema import WeightEMA
    from cvtool.engine.loop import Step
    from cvtool.engine.schedule import LrSchedule
    from cvtool.engine.state import TrainState

FORMAT = "cvtool-checkpoint/1"


def save_checkpoint(path: str | Path, payload: dict[str, Any]) -> None:
    """torch.save into a temp file beside `path`, fsync, rename: never a half-written file.

    torch.save gets a path, not a Python file: its zip writer then does its own I/O. Given a file
    object it writes through Python callbacks, and an exception raised between them (submitit's
    SIGUSR2 handler exits the process from within whatever runs) left the C++ writer to flush into a
    closed file from its destructor: std::terminate, and a preempted job that never requeued."""
    payload = {"format": FORMAT, "cvtool_version": __version__, **payload}
    with atomic_path(path) as tmp:
        torch.save(payload, str(tmp))


def load_checkpoint(path: str | Path) -> dict[str, Any]:
    path = Path(path)
    if not path.is_file():
        raise CvtoolError(f"{path}: checkpoint not found")
    try:
        payload = load_weights_only(path)
    except pickle.UnpicklingError as exc:
        raise CvtoolError(f"{path}: refused: not a plain-weights checkpoint ({refusal(exc)})") from None
    except Exception as exc:  # empty, truncated or not a checkpoint: torch's reader and unpickler raise anything
        raise CvtoolError(f"{path}: not a readable checkpoint ({_reason(path, exc)})") from None
    if not isinstance(payload, dict) or payload.get("format") != FORMAT:
        raise CvtoolError(f"{path}: not a cvtool checkpoint")
    return payload


def _first_line(exc: BaseException, default: str) -> str:
    """The first non-empty line of an exception's message (some have none at all)."""
    lines = [line.strip() for line in str(exc).splitlines() if line.strip()]
    return (lines[0] if lines else default)[:160]


def load_weights_only(path: Path) -> Any:
    """torch.load(weights_only=True) on the CPU, without torch's warnings (e.g. "Detected pickle
    protocol 4" before a refusal): the caller's one line says what went wrong."""
    with warnings.catch_warnings():
        warnings.filterwarnings("ignore", category=UserWarning, module=r"torch\.")
        return torch.load(path, map_location="cpu", weights_only=True)


def refusal(exc: BaseException) -> str:
    """What the weights-only unpickler refused, from torch's many-line message."""
    text = str(exc)
    if found := re.search(r"GLOBAL ([\w.]+)", text):
        return f"it would import {found.group(1)}"
    if found := re.search(r"Unsupported operand (\d+)", text):
        return f"pickle opcode {found.group(1)} is not allowed"
    return "unsupported content"


def _reason(path: Path, exc: Exception) -> str:
    if path.stat().st_size == 0:
        return "the file is empty"
    if isinstance(exc, RuntimeError | OSError):  # torch's zip reader: truncated or damaged
        return _first_line(exc, "damaged file").split(". ")[0]
    return "not a PyTorch file"  # the legacy unpickler's KeyError / EOFError on text or other data


def rng_state() -> dict[str, Any]:
    """This process's random generators: torch's CPU one, Python's, NumPy's and the current CUDA
    device's (not every visible device's: a resume may see fewer)."""
    state: dict[str, Any] = {"torch": torch.get_rng_state(), "python": random.getstate()}
    np_state = np.random.get_state()
    state["numpy"] = [np_state[0], torch.from_numpy(np_state[1].astype(np.int64)), *np_state[2:]]
    if torch.cuda.is_available() and torch.cuda.is_initialized():  # GPU only
        state["cuda"] = torch.cuda.get_rng_state()
    return state


def set_rng_state(state: dict[str, Any]) -> None:
    torch.set_rng_state(state["torch"])
    random.setstate(_tuples(state["python"]))
    kind, keys, *rest = state["numpy"]
    np.random.set_state((kind, keys.numpy().astype(np.uint32), *rest))
    cuda = state.get("cuda")
    if isinstance(cuda, torch.Tensor) and torch.cuda.is_available():  # GPU only: the current device
        torch.cuda.set_rng_state(cuda)


def _tuples(value: Any) -> Any:
    return tuple(_tuples(v) for v in value) if isinstance(value, list | tuple) else value


def training_payload(step: Step, state: TrainState, rngs: list[dict[str, Any]], **run: Any) -> dict[str, Any]:
    """Everything a resume continues from: the weights, optimizer, schedule, GradScaler, EMA, every
    rank's random generators (`rngs[rank]`) and the run's progress; `run` adds the recipe, the
    model card and the like. "model" holds what evaluate / TTA / export / predict load: with EMA
    the average or the raw weights, whichever validated better this epoch ("weights" says which);
    both stay in the file under "ema_model" and "raw_model" (one copy each: torch.save stores a
    tensor shared by two keys once)."""
    raw = step.module.state_dict()
    weights: dict[str, Any] = {"model": raw, "weights": "raw"}
    if step.ema is not None:
        average = step.ema.module.state_dict()
        kept = state.weights or "ema"
        weights = {"model": average if kept == "ema" else raw, "weights": kept, "raw_model": raw,
                   "ema_model": average, "ema": step.ema.state_dict()}
    return {**run, "epoch": state.epoch, **weights, "optimizer": step.optimizer.state_dict(),
            "scheduler": step.schedule.state_dict(),
            "scaler": step.scaler.state_dict() if step.scaler is not None else None,
            "rng": rngs[0], "rng_per_rank": rngs, "train_state": state.to_dict()}


def restore_training(payload: dict[str, Any], *, module: torch.nn.Module, optimizer: torch.optim.Optimizer,
                     schedule: LrSchedule | None, scaler: torch.amp.GradScaler | None, ema: WeightEMA | None) -> None:
    """Load a `training_payload` into freshly built parts. The optimizer state is loaded after the
    schedule was built (building one writes its starting lr) and before the schedule's own state,
    which sets the lr of the update the run continues with. `schedule` None: a fresh schedule
    (`--extend`) keeps its own start."""
    module.load_state_dict(payload.get("raw_model", payload["model"]))
    if ema is not None:  # checkpoints before "ema_model" held the average under "model"
        ema.load(payload.get("ema_model", payload["model"]), payload["ema"])
    optimizer.load_state_dict(payload["optimizer"])
    if schedule is not None:
        schedule.load_state_dict(payload["scheduler"])
    if scaler is not None and payload.get("scaler"):
        scaler.load_state_dict(payload["scaler"])


def restore_rng(payload: dict[str, Any], rank: int) -> None:
    """This rank's generators as saved. A run resumed on more ranks than it was saved with
    gives the new ranks rank 0's state, each offset by its rank (distinct masks, not exact)."""
    saved = payload.get("rng_per_rank") or [payload["rng"]]
    if rank < len(saved):
        set_rng_state(saved[rank])
        return
    set_rng_state(saved[0])
    torch.manual_seed(int(torch.randint(0, 2**62, (1,))) + rank)


def update_meta(path: str | Path, **changes: Any) -> None:
    """Rewrite a checkpoint's metadata (e.g. tuned thresholds), atomically."""
    payload = load_checkpoint(path)
    payload["meta"] = {**payload["meta"], **changes}
    payload.pop("format", None)
    payload.pop("cvtool_version", None)
    save_checkpoint(path, payload)
