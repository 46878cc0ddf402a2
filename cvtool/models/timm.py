"""timm models (`model.arch: timm/<name>`, the optional extra `pip install 'cvtool[timm]'`) and
their published weights: timm's pretrained config names the Hub repo and the weights' mean/std;
the file comes from the Hugging Face cache (`weights.py`) and timm's own loader reads it
(`pretrained_cfg_overlay={"file": ...}`: filters, classifier and first-conv adaptation included).

Torch-free at import: recipe checks import this module.
"""

from __future__ import annotations

from pathlib import Path
from typing import TYPE_CHECKING, Any

from cvtool.errors import CvtoolError
from cvtool.models.weights import WeightsSpec, hub_cached, hub_manual_file, hub_url, url_file
from cvtool.recipe.model_config import HF_HUB_PREFIX, TIMM_PREFIX
from cvtool.registry import suggest

if TYPE_CHECKING:
    from torch import nn

INSTALL_HINT = "pip install 'cvtool[timm]'"


def is_timm(arch: str) -> bool:
    return arch.startswith(TIMM_PREFIX)


def require_timm(arch: str) -> Any:
    """The timm module, or one line saying how to install it."""
    try:
        import timm
    except ImportError:
        raise CvtoolError(f"{arch} needs timm, an optional extra: {INSTALL_HINT}") from None
    return timm


def timm_name(arch: str) -> str:
    """`timm/resnet18.a1_in1k` -> `resnet18.a1_in1k` (timm's model name, optionally with a tag)."""
    return arch[len(TIMM_PREFIX):]


def check_timm_arch(arch: str) -> None:
    """Raise CvtoolError unless timm knows the model (closest name suggested)."""
    timm = require_timm(arch)
    name = timm_name(arch)
    if not timm.is_model(name):
        base = name.split(".", 1)[0]
        raise CvtoolError(f"unknown timm model '{name}'{suggest(base, timm.list_models())}")


def _pretrained_cfg(timm: Any, arch: str, name: str) -> Any:
    base = name.split(".", 1)[0]
    try:
        cfg = timm.models.get_pretrained_cfg(name)
    except RuntimeError:  # timm knows the model but not this tag
        cfg = None
    if cfg is None:
        tags = [tag.split(".", 1)[-1] for tag in timm.list_pretrained(f"{base}.*")]
        tag = name.split(".", 1)[-1] if "." in name else name
        hint = f"{suggest(tag, tags)} (valid: true, {', '.join(tags)})" if tags else " (timm publishes none)"
        raise CvtoolError(f"model.pretrained: {arch} has no pretrained weights '{tag}'{hint}")
    return cfg


def timm_weights(arch: str, pretrained: str | bool) -> WeightsSpec:
    """The weights `pretrained` names for `arch`: true / imagenet (timm's default tag), a tag, or hf-hub:org/repo."""
    timm = require_timm(arch)
    name = timm_name(arch)
    base = name.split(".", 1)[0]
    hub = isinstance(pretrained, str) and pretrained.startswith(HF_HUB_PREFIX)
    tag = isinstance(pretrained, str) and not hub and pretrained.lower() != "imagenet"
    cfg = _pretrained_cfg(timm, arch, f"{base}.{pretrained}" if tag else (base if hub else name))
    if hub:
        repo, label = str(pretrained)[len(HF_HUB_PREFIX):], str(pretrained)
    else:
        repo, label = cfg.hf_hub_id, f"{cfg.architecture}.{cfg.tag}" if cfg.tag else cfg.architecture
    mean, std = tuple(cfg.mean or ()) or None, tuple(cfg.std or ()) or None
    selector = str(pretrained) if hub or tag else None  # what `cvtool weights fetch --weights` takes
    if repo:
        file = hub_cached(repo) or hub_manual_file(repo)
        return WeightsSpec("timm", arch, label, file, hub_url(repo), repo=repo, mean=mean, std=std, selector=selector)
    if not cfg.url:
        raise CvtoolError(f"model.pretrained: timm publishes no weights file for {label}")
    return WeightsSpec("timm", arch, label, url_file(cfg.url), cfg.url, mean=mean, std=std, selector=selector)


def build_timm(arch: str, weights_file: Path | None, spec: WeightsSpec | None = None) -> nn.Module:
    """timm's model with its own head (replaced later), loading `weights_file` through timm's loader."""
    timm = require_timm(arch)
    name = timm_name(arch)
    if spec is not None and spec.source == "timm" and not spec.name.startswith(HF_HUB_PREFIX):
        name = spec.name  # the resolved model.tag
    options: dict[str, Any] = {}
    if weights_file is not None:
        options = {"pretrained": True, "pretrained_cfg_overlay": {"file": str(weights_file)}}
    try:
        return timm.create_model(name, **options)
    except Exception as exc:  # timm's loader: missing/unexpected keys, shapes, unreadable files
        lines = [line.strip() for line in str(exc).strip().splitlines() if line.strip()] or [type(exc).__name__]
        reason = " ".join(lines[:2])[:240]
        if weights_file is None:
            raise CvtoolError(f"model.arch: cannot build {arch}: {reason}") from None
        raise CvtoolError(f"model.pretrained: {weights_file} does not fit {arch}: {reason}") from None
