"""Model surgery: input channels, small-image stems (`model.small_input`) and an input-size check."""

from __future__ import annotations

from itertools import chain

import torch
from torch import nn
from torch.func import functional_call

from cvtool.errors import CvtoolError
from cvtool.recipe.schema import SmallInput

SMALL_INPUT_FAMILIES = "ResNet, ResNeXt, WideResNet, EfficientNet, EfficientNetV2, VGG"


def adapt_input_channels(model: nn.Module, channels: int) -> None:
    """Give the first conv `channels` inputs; 1 channel gets the sum of the RGB kernels."""
    name, conv = next((n, m) for n, m in model.named_modules() if isinstance(m, nn.Conv2d))
    if conv.in_channels == channels:
        return
    new = nn.Conv2d(
        channels, conv.out_channels, conv.kernel_size, conv.stride, conv.padding, conv.dilation,
        conv.groups, conv.bias is not None, conv.padding_mode,
        device=conv.weight.device, dtype=conv.weight.dtype,
    )
    with torch.no_grad():
        # Grey = R = G = B keeps the pretrained response: the kernel summed over its inputs.
        summed = conv.weight.sum(dim=1, keepdim=True)
        new.weight.copy_(summed.expand(-1, channels, -1, -1) / channels)
        if conv.bias is not None:
            new.bias.copy_(conv.bias)
    model.set_submodule(name, new)


def _stride2_units(module: nn.Module, blocks: tuple[type, ...]) -> list[list[nn.Conv2d]]:
    """Strided convs in module order; the strided convs of one residual block form one unit."""
    if isinstance(module, nn.Conv2d):
        return [[module]] if max(module.stride) > 1 else []
    if isinstance(module, blocks):
        convs = [m for m in module.modules() if isinstance(m, nn.Conv2d) and max(m.stride) > 1]
        return [convs] if convs else []
    return [unit for child in module.children() for unit in _stride2_units(child, blocks)]


def apply_small_input(model: nn.Module, cfg: SmallInput, arch: str) -> list[str]:
    """Keep small images large for longer; returns the names of the modules it changed.

    `remove_maxpool` swaps ResNet's stem max-pool for Identity (EfficientNet and VGG have none).
    `stride1: N` counts the main-path stride-2 convolutions in forward order (the stem conv,
    then each downsampling block once) and sets stride 1 in the first N; a residual block's
    strided shortcut (ResNet's `downsample`) changes with its block and is not counted on its own.
    ResNet-18 `stride1: 3` therefore changes five convolutions: conv1, layer2.0.conv1 +
    layer2.0.downsample.0, layer3.0.conv1 + layer3.0.downsample.0. VGG has no strided convs:
    there `stride1: N` removes the first N max-pools.
    """
    from torchvision.models import VGG, EfficientNet, ResNet
    from torchvision.models.efficientnet import FusedMBConv, MBConv
    from torchvision.models.resnet import BasicBlock, Bottleneck

    if not isinstance(model, ResNet | EfficientNet | VGG):
        raise CvtoolError(f"model.small_input: not supported for {arch} (supported: {SMALL_INPUT_FAMILIES})")
    changed: list[str] = []
    if isinstance(model, ResNet) and cfg.remove_maxpool:
        model.maxpool = nn.Identity()
        changed.append("maxpool")
    if isinstance(model, VGG):
        pools = [name for name, m in model.features.named_children() if isinstance(m, nn.MaxPool2d)]
        _check_count(cfg.stride1, len(pools), arch, "max-pools")
        for name in pools[: cfg.stride1]:
            model.features.set_submodule(name, nn.Identity())
        return changed + [f"features.{name}" for name in pools[: cfg.stride1]]
    units = _stride2_units(model, (BasicBlock, Bottleneck, MBConv, FusedMBConv))
    _check_count(cfg.stride1, len(units), arch, "stride-2 convolutions")
    names = {id(m): name for name, m in model.named_modules()}
    for conv in chain.from_iterable(units[: cfg.stride1]):
        conv.stride = (1, 1)
        changed.append(names[id(conv)])
    return changed


def small_input_changes(cfg: SmallInput, arch: str, image_size: int = 224) -> list[str]:
    """The modules `apply_small_input` changes in `arch` (built on the meta device: no memory)."""
    from cvtool.models.torchvision import build_torchvision

    with torch.device("meta"):
        model = build_torchvision(arch, image_size)
    return apply_small_input(model, cfg, arch)


def _check_count(wanted: int, available: int, arch: str, what: str) -> None:
    if wanted > available:
        raise CvtoolError(f"model.small_input.stride1: {arch} has only {available} {what}, not {wanted}")


def check_input_size(model: nn.Module, arch: str, channels: int, image_size: int, num_outputs: int) -> None:
    """Raise CvtoolError if `image_size` images cannot pass through `model`.

    A shape-only forward on the meta device (no memory, no compute): a too-small image
    otherwise surfaces as a traceback deep inside the first training step.
    """
    tensors = {name: torch.empty_like(t, device="meta") for name, t in chain(model.named_parameters(), model.named_buffers())}
    images = torch.empty(2, channels, image_size, image_size, device="meta")
    was_training = model.training
    model.eval()
    try:
        output = functional_call(model, tensors, (images,))
    except (RuntimeError, AssertionError, ValueError) as exc:
        reason = str(exc).splitlines()[0] if str(exc) else type(exc).__name__
        raise CvtoolError(f"data.image_size {image_size} does not fit {arch} with this model config: {reason}") from None
    finally:
        model.train(was_training)
    assert tuple(output.shape) == (2, num_outputs), f"{arch} gives {tuple(output.shape)}"
