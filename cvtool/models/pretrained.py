"""Pretrained weights from `model.pretrained`: resolved by name (torchvision's, timm's) or a local
file (.pth / .pt / .safetensors), read safely (`weights_only=True`), loaded strictly.

Downloads and caches are `weights.py`'s; the resolved weights are recorded on the model
(`WEIGHTS_ATTR`) so that checkpoints say which weights a run started from.
"""

from __future__ import annotations

import pickle
import re
from collections.abc import Mapping
from dataclasses import replace
from pathlib import Path
from typing import Any

import torch
from torch import nn

from cvtool.engine.checkpoint import load_weights_only, refusal
from cvtool.errors import CvtoolError
from cvtool.models.timm import is_timm, timm_weights
from cvtool.models.torchvision import torchvision_weights
from cvtool.models.weights import WeightsSpec, ensure_cached
from cvtool.recipe.model_config import ModelConfig, is_weights_file

WEIGHTS_ATTR = "cvtool_pretrained"

# Old torchvision DenseNet files name layers "norm.1" where the modules are now "norm1".
_DENSENET_KEY = re.compile(r"^(.*denselayer\d+\.(?:norm|relu|conv))\.((?:[12])\.(?:weight|bias|running_mean|running_var))$")


def read_state_dict(path: Path) -> dict[str, torch.Tensor]:
    """The tensors in `path`: a raw state dict, or one nested under "state_dict" or "model"."""
    if not path.is_file():
        raise CvtoolError(f"model.pretrained: file not found: {path}")
    try:
        if path.suffix == ".safetensors":
            loaded: Any = _load_safetensors(path)
        else:
            loaded = load_weights_only(path)
    except CvtoolError:
        raise
    except Exception as exc:  # any unreadable or unsafe file is the user's input problem
        reason = (f"refused: {refusal(exc)}" if isinstance(exc, pickle.UnpicklingError)
                  else str(exc).splitlines()[0] if str(exc) else type(exc).__name__)
        raise CvtoolError(f"model.pretrained: cannot read {path}: {reason}") from None
    for key in ("state_dict", "model"):
        if isinstance(loaded, Mapping) and isinstance(loaded.get(key), Mapping):
            loaded = loaded[key]
            break
    if not isinstance(loaded, Mapping) or not all(isinstance(v, torch.Tensor) for v in loaded.values()):
        raise CvtoolError(f"model.pretrained: {path} holds no state dict (a mapping of names to tensors)")
    state = dict(loaded)
    if state and all(key.startswith("module.") for key in state):  # saved from DataParallel / DDP
        state = {key.removeprefix("module."): value for key, value in state.items()}
    return {_DENSENET_KEY.sub(r"\1\2", key): value for key, value in state.items()}


def _load_safetensors(path: Path) -> dict[str, torch.Tensor]:
    try:
        from safetensors.torch import load_file
    except ImportError:
        raise CvtoolError(f"model.pretrained: {path} needs safetensors: pip install 'cvtool[safetensors]'") from None
    return load_file(str(path), device="cpu")


def _drop_disabled(model: nn.Module, state: dict[str, torch.Tensor]) -> dict[str, torch.Tensor]:
    """Leave out weights of submodules the model switched off (inception/googlenet aux heads = None)."""
    attributes = {**vars(model), **model._modules}
    disabled = {name for name, value in attributes.items() if value is None and not name.startswith("_")}
    return {key: value for key, value in state.items() if key.split(".", 1)[0] not in disabled}


def _fit_report(model: nn.Module, state: dict[str, torch.Tensor], arch: str) -> str | None:
    """One line describing why `state` does not fit `model`, or None when it fits."""
    expected = model.state_dict()
    missing = [key for key in expected if key not in state]
    unexpected = [key for key in state if key not in expected]
    reshaped = [
        f"{key} {list(state[key].shape)} vs {list(expected[key].shape)}"
        for key in expected
        if key in state and state[key].shape != expected[key].shape
    ]
    if not (missing or unexpected or reshaped):
        return None

    def count(items: list[str], noun: str) -> str:
        return f"{len(items)} {noun}" + (f" (e.g. {items[0]})" if items else "")

    line = f"weights do not fit {arch}: {count(missing, 'missing keys')}, {count(unexpected, 'unexpected')}"
    return line + (f", {count(reshaped, 'with another shape')}" if reshaped else "")


def load_pretrained(model: nn.Module, path: Path, arch: str) -> None:
    """Load a local state-dict file into `model` (before its head is replaced); strict on keys and shapes."""
    state = _drop_disabled(model, read_state_dict(Path(path)))
    problem = _fit_report(model, state, arch)
    if problem:
        raise CvtoolError(f"model.pretrained: {problem}")
    model.load_state_dict(state)


def resolve_weights(cfg: ModelConfig) -> WeightsSpec | None:
    """What `model.pretrained` names, resolved without any download (None: random init)."""
    value = cfg.pretrained
    if value is None or value is False:
        return None
    if isinstance(value, str) and is_weights_file(value):
        return WeightsSpec("file", cfg.arch, value, Path(value))
    if is_timm(cfg.arch):
        return timm_weights(cfg.arch, value)
    return torchvision_weights(cfg.arch, value)


def record_weights(model: nn.Module, spec: WeightsSpec | None, record: dict[str, Any] | None = None) -> None:
    """Remember on the model which weights it started from (`spec`, or a record read back from a checkpoint)."""
    setattr(model, WEIGHTS_ATTR, spec.record() if spec is not None else record)


def weights_record(model: nn.Module) -> dict[str, Any] | None:
    """Which weights `model` started from ({source, arch, name, url, file}), as build_model recorded."""
    return getattr(model, WEIGHTS_ATTR, None)


def fetch_weights(arch: str, weights: str | None = None) -> tuple[WeightsSpec, bool]:
    """Put `arch`'s published weights (default: its ImageNet / timm default ones) into the cache.

    Returns the weights, with `file` where they now are, and whether they were downloaded.
    """
    from pydantic import ValidationError

    from cvtool.models.registry import check_arch

    check_arch(arch)
    try:
        cfg = ModelConfig(arch=arch, pretrained=True if weights is None else weights)
    except ValidationError as exc:
        raise CvtoolError(f"--weights: {exc.errors()[0]['msg'].removeprefix('Value error, ')}") from None
    spec = resolve_weights(cfg)
    if spec is None or spec.source == "file":
        raise CvtoolError("--weights: name published weights (imagenet, IMAGENET1K_V2, a timm tag, hf-hub:org/repo)")
    cached = spec.file.is_file()
    return replace(spec, file=ensure_cached(spec)), not cached


def list_cached() -> list[dict[str, Any]]:
    """Cached weights files ({source, name, bytes, path}); torchvision's named as `<arch> <weights>`."""
    from cvtool.models.torchvision import published_files
    from cvtool.models.weights import cached_weights

    names = published_files()
    return [{**row, "name": names.get(row["name"], row["name"])} if row["source"] == "torch" else row
            for row in cached_weights()]


def ensure_weights(cfg: ModelConfig) -> None:
    """Have `model.pretrained`'s file on disk (downloaded if need be, or one line why not), early in a run."""
    spec = resolve_weights(cfg)
    if spec is not None:
        ensure_cached(spec)
