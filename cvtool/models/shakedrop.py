"""ShakeDrop (Yamada et al., 2018, "ShakeDrop Regularization for Deep Residual Learning").

On a residual branch F(x), training computes x + (b + α − bα)·F(x) with, per sample,
b ~ Bernoulli(1 − p) and α ~ U[−1, 1]; the backward pass scales the gradient by (b + β − bβ)
with an independent β ~ U[0, 1]. Evaluation uses the expectation, x + (1 − p)·F(x): a plain
multiply, so exported graphs (ONNX) stay ordinary.
"""

from __future__ import annotations

from collections.abc import Callable
from typing import Any

import torch
from torch import nn

from cvtool.errors import CvtoolError
from cvtool.models.simplenet import SimpleNet
from cvtool.recipe.model_config import ShakeDropBlock, ShakeDropConfig

SHAKEDROP_FAMILIES = "ResNet, ResNeXt, WideResNet, EfficientNet, EfficientNetV2, simplenet with skip: true"

# A residual block and the attribute at the end of its residual branch (just before the addition).
BranchEnd = tuple[nn.Module, str]
# A block of a stage and that attribute, None for a block without a residual connection.
Block = tuple[nn.Module, str | None]


class ShakeDropFunction(torch.autograd.Function):
    """Forward scales by b + α − bα, backward by b + β − bβ (one b, α, β per sample)."""

    @staticmethod
    def forward(ctx: Any, branch: torch.Tensor, drop_prob: float) -> torch.Tensor:
        shape = (branch.shape[0],) + (1,) * (branch.dim() - 1)
        keep = torch.rand(shape, device=branch.device) >= drop_prob  # b ~ Bernoulli(1 - p)
        alpha = torch.empty(shape, dtype=branch.dtype, device=branch.device).uniform_(-1.0, 1.0)
        ctx.save_for_backward(keep)
        return branch * alpha.masked_fill_(keep, 1.0)  # b + α − bα, exactly 1 where b = 1

    @staticmethod
    def backward(ctx: Any, grad_output: torch.Tensor) -> tuple[torch.Tensor, None]:
        (keep,) = ctx.saved_tensors
        beta = torch.rand(keep.shape, dtype=grad_output.dtype, device=grad_output.device)
        return grad_output * beta.masked_fill_(keep, 1.0), None  # b + β − bβ


class ShakeDrop(nn.Module):
    """ShakeDrop on a residual branch output; `p` is the probability of perturbing (dropping) it."""

    def __init__(self, p: float = 0.5) -> None:
        super().__init__()
        if not 0.0 <= p <= 1.0:
            raise ValueError(f"ShakeDrop p must be in [0, 1], got {p}")
        self.p = p

    def forward(self, branch: torch.Tensor) -> torch.Tensor:
        if self.p == 0.0:
            return branch
        if self.training:
            return ShakeDropFunction.apply(branch, self.p)
        return branch * (1.0 - self.p)

    def extra_repr(self) -> str:
        return f"p={self.p}"


def _resnet_stages(model: nn.Module) -> list[list[Block]]:
    from torchvision.models.resnet import Bottleneck

    stages = (model.layer1, model.layer2, model.layer3, model.layer4)
    return [[(block, "bn3" if isinstance(block, Bottleneck) else "bn2") for block in stage] for stage in stages]


def _efficientnet_stages(model: nn.Module) -> list[list[Block]]:
    stages = list(model.features)[1:-1]  # features[0] is the stem conv, features[-1] the 1x1 head conv
    # a block that changes resolution or width has no residual connection
    return [[(block, "stochastic_depth" if getattr(block, "use_res_connect", False) else None) for block in stage]
            for stage in stages]


def _simplenet_stages(model: nn.Module) -> list[list[Block]]:
    if not model.skip:
        raise CvtoolError("model.shakedrop: simplenet needs model.skip: true (ShakeDrop acts on residual branches)")
    return [[(block, "branch_end")] for block in model.blocks]


def residual_stages(model: nn.Module, arch: str) -> list[list[Block]]:
    """Every block of each stage, as (block, attribute ending its residual branch; None for a block
    without a residual connection)."""
    from torchvision.models import EfficientNet, ResNet

    finders: tuple[tuple[type, Callable[[nn.Module], list[list[Block]]]], ...] = (
        (ResNet, _resnet_stages),
        (EfficientNet, _efficientnet_stages),
        (SimpleNet, _simplenet_stages),
    )
    for family, find in finders:
        if isinstance(model, family):
            return find(model)
    raise CvtoolError(f"model.shakedrop: not supported for {arch} (supported: {SHAKEDROP_FAMILIES})")


def _one_block(model: nn.Module, stages: list[list[Block]], at: ShakeDropBlock, arch: str) -> BranchEnd:
    """The residual block `at` names, or a one-line error listing the ones there are."""
    if at.stage >= len(stages):
        raise CvtoolError(f"model.shakedrop.at.stage: {arch} has stages 0-{len(stages) - 1}, not {at.stage}")
    stage = stages[at.stage]
    residual = ", ".join(str(index) for index, (_, attr) in enumerate(stage) if attr is not None) or "none"
    if at.block >= len(stage):
        raise CvtoolError(f"model.shakedrop.at.block: {arch} stage {at.stage} has blocks 0-{len(stage) - 1}, "
                          f"not {at.block} (residual: {residual})")
    block, attr = stage[at.block]
    if attr is None:
        name = next(name for name, module in model.named_modules() if module is block)
        raise CvtoolError(f"model.shakedrop.at.block: {arch} {name} (stage {at.stage}, block {at.block}) has no "
                          f"residual branch; residual blocks of stage {at.stage}: {residual}")
    return block, attr


def shakedrop_sites(model: nn.Module, cfg: ShakeDropConfig, arch: str) -> list[tuple[BranchEnd, float]]:
    """Where `cfg` puts ShakeDrop and with which p, before anything is inserted.

    `at: middle`: ShakeDrop(p) on every residual block of the middle stage; `at: all`: on every
    residual block, with the paper's linear decay p_l = p · l / L (l = 1..L); `at: {stage, block}`:
    ShakeDrop(p) on that one block."""
    stages = residual_stages(model, arch)
    if isinstance(cfg.at, ShakeDropBlock):
        return [(_one_block(model, stages, cfg.at, arch), cfg.p)]
    chosen = stages[len(stages) // 2] if cfg.at == "middle" else [block for stage in stages for block in stage]
    ends: list[BranchEnd] = [(block, attr) for block, attr in chosen if attr is not None]
    if not ends:
        raise CvtoolError(f"model.shakedrop: {arch} has no residual blocks at '{cfg.at}'")
    if cfg.at == "middle":
        return [(end, cfg.p) for end in ends]
    return [(end, cfg.p * (index + 1) / len(ends)) for index, end in enumerate(ends)]


def apply_shakedrop(model: nn.Module, cfg: ShakeDropConfig, arch: str) -> list[ShakeDrop]:
    """Insert ShakeDrop at the end of residual branches (`shakedrop_sites`); return the inserted
    modules in order."""
    inserted = []
    for (block, attr), prob in shakedrop_sites(model, cfg, arch):
        shakedrop = ShakeDrop(prob)
        setattr(block, attr, nn.Sequential(getattr(block, attr), shakedrop))
        inserted.append(shakedrop)
    return inserted
