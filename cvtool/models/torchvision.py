"""torchvision classifiers by name, always built without weights (no download, ever)."""

from __future__ import annotations

from collections.abc import Callable
from typing import Any

from torch import nn

from cvtool.errors import CvtoolError

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
