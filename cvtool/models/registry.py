"""Model architectures by name: cvtool's own nets, every torchvision classifier and, with the
timm extra, every timm model as `timm/<name>`."""

from __future__ import annotations

from collections.abc import Callable
from typing import TYPE_CHECKING

from cvtool.errors import CvtoolError
from cvtool.models.timm import check_timm_arch, is_timm
from cvtool.registry import Registry, suggest

if TYPE_CHECKING:
    from torch import nn

    from cvtool.recipe.model_config import ModelConfig

OwnBuilder = Callable[["ModelConfig", int, int, int], "nn.Module"]  # (cfg, num_outputs, channels, image_size)
OWN_ARCHS: Registry[OwnBuilder] = Registry("architecture")


@OWN_ARCHS.register("simplenet")
def _simplenet(cfg: ModelConfig, num_outputs: int, channels: int, image_size: int) -> nn.Module:
    # imported on use: recipe checks import this module and must stay torch-free
    from cvtool.models.simplenet import build_simplenet

    return build_simplenet(cfg, num_outputs, channels, image_size)


def torchvision_archs() -> list[str]:
    import torchvision

    return sorted(torchvision.models.list_models(module=torchvision.models))


def available_archs() -> list[str]:
    return sorted({*OWN_ARCHS, *torchvision_archs()})


def check_arch(name: str) -> None:
    """Raise CvtoolError for an unknown architecture name."""
    if name in OWN_ARCHS:
        return
    if is_timm(name):
        check_timm_arch(name)
        return
    names = available_archs()
    if name not in names:
        raise CvtoolError(f"unknown architecture '{name}'{suggest(name, names)}")
