"""Checkpoints: plain tensors and primitives only, written atomically, loaded with
`torch.load(weights_only=True)` so a file carrying a malicious pickle runs nothing."""

from __future__ import annotations

import pickle
import random
from pathlib import Path
from typing import Any

import numpy as np
import torch

from cvtool import __version__
from cvtool.errors import CvtoolError
from cvtool.fileio import atomic_open

FORMAT = "cvtool-checkpoint/1"


def save_checkpoint(path: str | Path, payload: dict[str, Any]) -> None:
    """torch.save into a temp file beside `path`, fsync, rename: never a half-written file."""
    payload = {"format": FORMAT, "cvtool_version": __version__, **payload}
    with atomic_open(path, "wb") as handle:
        torch.save(payload, handle)


def load_checkpoint(path: str | Path) -> dict[str, Any]:
    path = Path(path)
    if not path.is_file():
        raise CvtoolError(f"{path}: checkpoint not found")
    try:
        payload = torch.load(path, map_location="cpu", weights_only=True)
    except pickle.UnpicklingError as exc:
        raise CvtoolError(f"{path}: refused: not a plain-weights checkpoint ({_first_line(exc, 'unsupported content')})") from None
    except Exception as exc:  # empty, truncated or not a checkpoint: torch's reader and unpickler raise anything
        raise CvtoolError(f"{path}: not a readable checkpoint ({_reason(path, exc)})") from None
    if not isinstance(payload, dict) or payload.get("format") != FORMAT:
        raise CvtoolError(f"{path}: not a cvtool checkpoint")
    return payload


def _first_line(exc: BaseException, default: str) -> str:
    """The first non-empty line of an exception's message (some have none at all)."""
    lines = [line.strip() for line in str(exc).splitlines() if line.strip()]
    return (lines[0] if lines else default)[:160]


def _reason(path: Path, exc: Exception) -> str:
    if path.stat().st_size == 0:
        return "the file is empty"
    if isinstance(exc, RuntimeError | OSError):  # torch's zip reader: truncated or damaged
        return _first_line(exc, "damaged file").split(". ")[0]
    return "not a PyTorch file"  # the legacy unpickler's KeyError / EOFError on text or other data


def rng_state() -> dict[str, Any]:
    state: dict[str, Any] = {"torch": torch.get_rng_state(), "python": random.getstate()}
    np_state = np.random.get_state()
    state["numpy"] = [np_state[0], torch.from_numpy(np_state[1].astype(np.int64)), *np_state[2:]]
    if torch.cuda.is_available():  # GPU only
        state["cuda"] = torch.cuda.get_rng_state_all()
    return state


def set_rng_state(state: dict[str, Any]) -> None:
    torch.set_rng_state(state["torch"])
    random.setstate(_tuples(state["python"]))
    kind, keys, *rest = state["numpy"]
    np.random.set_state((kind, keys.numpy().astype(np.uint32), *rest))
    if "cuda" in state and torch.cuda.is_available():  # GPU only
        torch.cuda.set_rng_state_all(state["cuda"])


def _tuples(value: Any) -> Any:
    return tuple(_tuples(v) for v in value) if isinstance(value, list | tuple) else value


def update_meta(path: str | Path, **changes: Any) -> None:
    """Rewrite a checkpoint's metadata (e.g. tuned thresholds), atomically."""
    payload = load_checkpoint(path)
    payload["meta"] = {**payload["meta"], **changes}
    payload.pop("format", None)
    payload.pop("cvtool_version", None)
    save_checkpoint(path, payload)
