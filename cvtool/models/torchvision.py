"""torchvision classifiers by name, built without weights, and their published weights by name
(`torchvision.models.get_model_weights`), which `pretrained.py` loads from torch.hub's cache."""

from __future__ import annotations

from collections.abc import Callable
from typing import Any

from torch import nn

from cvtool.errors import CvtoolError
from cvtool.models.weights import WeightsSpec, url_file
from cvtool.registry import suggest

# Builder options by name prefix: plain-tensor outputs (no aux heads) and the input size for
# models whose layers depend on it.
ARCH_OPTIONS: tuple[tuple[str, Callable[[int], dict[str, Any]]], ...] = (
    ("inception_v3", lambda size: {"aux_logits": False, "init_weights": True}),
    ("googlenet", lambda size: {"aux_logits": False, "init_weights": True}),
    ("vit_", lambda size: {"image_size": size}),
    ("maxvit_", lambda size: {"input_size": (size, size)}),
)


def arch_options(name: str, image_size: int) -> dict[str, Any]:
    """Extra keyword arguments torchvision's builder needs for `name` at `image_size`."""
    for prefix, options in ARCH_OPTIONS:
        if name.startswith(prefix):
            return options(image_size)
    return {}


def build_torchvision(name: str, image_size: int) -> nn.Module:
    """torchvision's `name` with its 1000-class head (so ImageNet state dicts fit) and random weights."""
    import torchvision

    try:
        return torchvision.models.get_model(name, weights=None, **arch_options(name, image_size))
    except (ValueError, AssertionError, RuntimeError) as exc:
        reason = str(exc).splitlines()[0] if str(exc) else type(exc).__name__
        raise CvtoolError(f"data.image_size {image_size} does not fit {name}: {reason}") from None


def torchvision_weights(arch: str, name: str | bool) -> WeightsSpec:
    """torchvision's published weights `name` of `arch` (its enum member, e.g. IMAGENET1K_V2), not yet loaded."""
    import torchvision

    try:
        enum = torchvision.models.get_model_weights(arch)
    except (ValueError, KeyError):
        raise CvtoolError(f"model.pretrained: torchvision publishes no weights for {arch}; give a local file") from None
    names = list(enum.__members__)
    # `imagenet` / `true`: torchvision's DEFAULT, the best ImageNet-1k weights it publishes for `arch`
    member = "DEFAULT" if name is True or str(name).lower() in ("imagenet", "default") else str(name)
    if member not in enum.__members__:
        raise CvtoolError(f"model.pretrained: {arch} has no weights '{name}'{suggest(str(name), names)} "
                          f"(valid: imagenet, {', '.join(names)})")
    weights = enum[member]
    match = torch_hub_hash(weights.url)
    transform = weights.transforms()
    mean, std = getattr(transform, "mean", None), getattr(transform, "std", None)
    return WeightsSpec("torchvision", arch, weights.name, url_file(weights.url), weights.url, hash_prefix=match,
                       mean=tuple(mean) if mean else None, std=tuple(std) if std else None,
                       selector=None if weights == enum.DEFAULT else weights.name)


def torch_hub_hash(url: str) -> str | None:
    """The hash prefix torch.hub checks a download against: `<name>-<hex>.pth` in torchvision's URLs."""
    import torch.hub

    found = torch.hub.HASH_REGEX.search(url_file(url).name)
    return found.group(1) if found else None


def published_files() -> dict[str, str]:
    """torch.hub cache file name -> `<arch> <weights name>` for every weights torchvision publishes."""
    import torchvision

    names: dict[str, str] = {}
    for arch in torchvision.models.list_models(module=torchvision.models):
        for weights in torchvision.models.get_model_weights(arch):
            names.setdefault(url_file(weights.url).name, f"{arch} {weights.name}")
    return names
