"""The recipe's `model:` section: architecture, pretrained weights, head and surgery."""

from __future__ import annotations

from pathlib import Path
from typing import Annotated, Any, Literal

from pydantic import BeforeValidator, Field, ValidationInfo, field_validator

from cvtool.recipe.fields import NoBool, NonNegInt, PosInt, Probability, Section


class SmallInput(Section):
    remove_maxpool: bool = True
    stride1: NonNegInt = 0


class ShakeDropBlock(Section):
    """One residual block: `stage` counts the architecture's stages from 0 (ResNet `layer1` is 0,
    EfficientNet `features.1` is 0, simplenet `blocks.0` is 0), `block` the blocks of that stage
    from 0 (so EfficientNet's `features.4.3` is stage 3, block 3)."""

    stage: NonNegInt
    block: NonNegInt


class ShakeDropConfig(Section):
    p: Probability = 0.5
    # middle: every residual block of the middle stage; all: every residual block (linear decay);
    # {stage, block}: that one block
    at: Literal["middle", "all"] | ShakeDropBlock = "middle"


class FreezeConfig(Section):
    backbone: bool = True
    unfreeze_last: NonNegInt = 0
    unfreeze_at_epoch: PosInt | None = None
    # frozen BatchNorm layers during training: eval keeps their running statistics as loaded;
    # train lets them follow the new data (what `requires_grad=False` alone does under model.train())
    batchnorm: Literal["eval", "train"] = "eval"


WEIGHT_FILE_SUFFIXES = (".pth", ".pt", ".bin", ".safetensors")
HF_HUB_PREFIX = "hf-hub:"
TIMM_PREFIX = "timm/"


def _pretrained_value(value: Any) -> Any:
    """A path object reads as its text; `false` means no weights, as null does."""
    if isinstance(value, Path):
        return str(value)
    return None if value is False else value


def is_weights_file(pretrained: str) -> bool:
    """Whether a `model.pretrained` text names a local file (a path separator or a weights suffix)."""
    if pretrained.startswith(HF_HUB_PREFIX):
        return False
    return "/" in pretrained or "\\" in pretrained or pretrained.lower().endswith(WEIGHT_FILE_SUFFIXES)


class ModelConfig(Section):
    arch: str = "simplenet"
    # a local file | imagenet / true (the architecture's default weights) | a weights name | hf-hub:org/repo
    pretrained: Annotated[bool | str | None, BeforeValidator(_pretrained_value)] = None
    dropout: Annotated[float, Field(ge=0, lt=1), NoBool] | None = None
    head: list[PosInt] = []
    # simplenet only
    blocks: list[PosInt] = [32, 64]
    skip: bool = False
    batch_norm: bool = False
    activation: Literal["relu", "gelu", "silu", "leaky_relu", "elu", "tanh"] = "relu"
    pool: Literal["avg", "flatten"] = "avg"  # flatten keeps where things are (keypoint regression)
    # surgery
    small_input: SmallInput | None = None
    shakedrop: ShakeDropConfig | None = None
    freeze: FreezeConfig | None = None
    sync_batchnorm: bool = False

    @field_validator("arch")
    @classmethod
    def _timm_name(cls, value: str) -> str:
        if value.startswith(TIMM_PREFIX) and not value[len(TIMM_PREFIX):]:
            raise ValueError("timm/ needs a model name, e.g. timm/resnet18")
        return value

    @field_validator("pretrained")
    @classmethod
    def _weights_fit_arch(cls, value: bool | str | None, info: ValidationInfo) -> bool | str | None:
        arch = info.data.get("arch", "")
        if value is True and arch == "simplenet":
            raise ValueError("simplenet has no published weights; give a local file")
        if not isinstance(value, str):
            return value
        if not value.strip():
            raise ValueError("empty; give a file, imagenet, a weights name or null")
        if value.startswith(HF_HUB_PREFIX) and not arch.startswith(TIMM_PREFIX):
            raise ValueError(f"{HF_HUB_PREFIX} weights need a timm/<name> arch, not {arch}")
        if value.startswith(HF_HUB_PREFIX) and value.count("/") != 1:
            raise ValueError(f"{value}: write {HF_HUB_PREFIX}<org>/<repo>")
        if arch == "simplenet" and not is_weights_file(value):
            raise ValueError(f"simplenet has no published weights '{value}'; give a local file")
        return value
