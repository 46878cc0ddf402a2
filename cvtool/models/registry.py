"""Model architectures by name: cvtool's own nets, every torchvision classifier and, with the
timm extra, every timm model as `timm/<name>`."""

from __future__ import annotations

from cvtool.errors import CvtoolError
from cvtool.models.timm import check_timm_arch, is_timm
from cvtool.registry import suggest

OWN_ARCHS = ("simplenet",)


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
