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


def check_input_size(model: nn.Module, arch: str, channels: int, image_size: int, num_outputs: int,
                     key: str = "data.image_size") -> None:
    """Raise CvtoolError if `image_size` images cannot pass through `model`, or shrink to a
    1x1 map before a strided layer (resnet's stem and four stages need 32 px: below that the
    last stages see one pixel and batch-norm statistics of 1x1 maps blow up after a step).

    A shape-only forward on the meta device (no memory, no compute): a too-small image
    otherwise surfaces as a traceback deep inside the first training step.
    """
    collapsed = _strided_shapes(model, channels, image_size, arch, key)
    output = collapsed.pop("", None)
    if collapsed:
        first = next(iter(collapsed))
        needed = _needed_size(model, channels)
        at_least = f" (needs at least {needed} px)" if needed else ""
        raise CvtoolError(f"{key} {image_size} does not fit {arch} with this model config: the image is down "
                          f"to 1x1 before its strided layer '{first}'{at_least}")
    assert output is not None and tuple(output) == (2, num_outputs), f"{arch} gives {output}"


def _strided_shapes(model: nn.Module, channels: int, image_size: int, arch: str, key: str) -> dict[str, tuple]:
    """{strided layer that receives a 1x1 map: its input shape, ..., '': the output shape}."""
    tensors = {name: torch.empty_like(t, device="meta") for name, t in chain(model.named_parameters(), model.named_buffers())}
    images = torch.empty(2, channels, image_size, image_size, device="meta")
    found: dict[str, tuple] = {}

    def hook(name: str):
        def record(_module: nn.Module, args: tuple) -> None:
            if args and args[0].dim() == 4 and min(args[0].shape[-2:]) == 1:
                found.setdefault(name, tuple(args[0].shape))
        return record

    handles = [module.register_forward_pre_hook(hook(name)) for name, module in model.named_modules()
               if _stride(module) > 1]
    was_training = model.training
    model.eval()
    try:
        output = functional_call(model, tensors, (images,))
    except (RuntimeError, AssertionError, ValueError) as exc:
        reason = str(exc).splitlines()[0] if str(exc) else type(exc).__name__
        raise CvtoolError(f"{key} {image_size} does not fit {arch} with this model config: {reason}") from None
    finally:
        model.train(was_training)
        for handle in handles:
            handle.remove()
    return {**found, "": tuple(output.shape)}


def _stride(module: nn.Module) -> int:
    if not isinstance(module, nn.Conv2d | nn.MaxPool2d | nn.AvgPool2d):
        return 1
    stride = module.stride if module.stride is not None else 1
    return max(stride) if isinstance(stride, tuple) else int(stride)


def _needed_size(model: nn.Module, channels: int, probe: int = 512) -> int | None:
    """The network's total downsampling: `probe` over the smallest map a strided layer makes."""
    smallest = [probe]

    def record(_module: nn.Module, _args: tuple, out: torch.Tensor) -> None:
        if isinstance(out, torch.Tensor) and out.dim() == 4:
            smallest[0] = min(smallest[0], *out.shape[-2:])

    handles = [m.register_forward_hook(record) for m in model.modules() if _stride(m) > 1]
    tensors = {name: torch.empty_like(t, device="meta") for name, t in chain(model.named_parameters(), model.named_buffers())}
    try:
        functional_call(model.eval(), tensors, (torch.empty(2, channels, probe, probe, device="meta"),))
    except (RuntimeError, AssertionError, ValueError):
        return None
    finally:
        for handle in handles:
            handle.remove()
    return probe // smallest[0] if smallest[0] < probe else None
