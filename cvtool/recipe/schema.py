"""The recipe schema: every section validated once (unknown keys refused), then frozen.

Sections are passed to the parts that use them (`build_model(recipe.model, ...)`), never the
whole recipe. Values derived at run time (number of classes, stats) are not written back.
"""

from __future__ import annotations

from pathlib import Path
from typing import Annotated, Any, Literal

from pydantic import (
    BaseModel,
    BeforeValidator,
    ConfigDict,
    Field,
    ValidationInfo,
    field_validator,
    model_validator,
)

from cvtool.tasks import get_task


def _no_bool(value: Any) -> Any:
    """YAML's true/false are not numbers (pydantic would read them as 1/0)."""
    if isinstance(value, bool):
        raise ValueError("expected a number, not true/false")
    return value


NoBool = BeforeValidator(_no_bool)
TaskName = Literal["multiclass", "binary", "multilabel", "keypoints"]
PosFloat = Annotated[float, Field(gt=0), NoBool]
NonNegFloat = Annotated[float, Field(ge=0), NoBool]
Probability = Annotated[float, Field(ge=0, le=1), NoBool]
PosInt = Annotated[int, Field(gt=0), NoBool]
NonNegInt = Annotated[int, Field(ge=0), NoBool]


class Section(BaseModel):
    model_config = ConfigDict(extra="forbid", frozen=True, allow_inf_nan=False)


class NormStats(Section):
    mean: list[float]
    std: list[Annotated[float, Field(gt=0)]]

    @model_validator(mode="after")
    def _same_length(self) -> NormStats:
        if len(self.mean) != len(self.std):
            raise ValueError("mean and std need the same number of channels")
        return self


TransformSpec = dict[str, dict[str, Any] | None]


class DataConfig(Section):
    format: Literal["folder", "csv", "tinyimagenet"] = "folder"
    root: Path
    train: str = "train"
    val: str | None = "val"
    test: str | None = None
    val_fraction: Annotated[float, Field(gt=0, lt=1), NoBool] | None = None
    image_size: PosInt = 64
    channels: Literal[1, 3] = 3
    batch_size: PosInt = 32
    eval_batch_size: PosInt | None = None
    num_workers: NonNegInt = 0
    normalize: Literal["auto", "imagenet", "none"] | NormStats = "auto"
    # format: csv
    images_dir: str = "images"
    image_column: str = "image"
    image_extension: str = ""
    label_column: str = "label"
    tags_column: str = "tags"
    target_columns: list[str] | None = None
    target_prefix: str | None = None
    # keypoints: pairs of point indices swapped by a horizontal flip
    flip_pairs: list[tuple[NonNegInt, NonNegInt]] = []
    # decoded-image cache (uint8, at image_size)
    cache: Literal["auto", "memory", "disk"] = "auto"
    cache_max_gb: PosFloat = 4.0
    on_bad_image: Literal["fail", "skip"] = "fail"
    # training order: uniform (a permutation per epoch) or class-balanced draws with replacement
    sampler: Literal["uniform", "balanced", "sqrt_balanced"] = "uniform"

    @field_validator("image_extension")
    @classmethod
    def _dot(cls, value: str) -> str:
        return value if not value or value.startswith(".") else "." + value


class SmallInput(Section):
    remove_maxpool: bool = True
    stride1: NonNegInt = 0


class ShakeDropConfig(Section):
    p: Probability = 0.5
    at: Literal["middle", "all"] = "middle"


class FreezeConfig(Section):
    backbone: bool = True
    unfreeze_last: NonNegInt = 0
    unfreeze_at_epoch: PosInt | None = None


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


class OptimConfig(Section):
    name: Literal["sgd", "adam", "adamw"] = "sgd"
    lr: PosFloat = 0.01
    momentum: NonNegFloat = 0.9
    nesterov: bool = False
    weight_decay: NonNegFloat = 0.0
    betas: tuple[Probability, Probability] = (0.9, 0.999)

    @model_validator(mode="after")
    def _nesterov(self) -> OptimConfig:
        if self.nesterov and (self.name != "sgd" or self.momentum == 0):
            raise ValueError("nesterov needs optim.name sgd with momentum > 0")
        return self


class OptimPatch(Section):
    """A phase's changes to the optimizer; unset keys keep their value."""

    name: Literal["sgd", "adam", "adamw"] | None = None
    lr: PosFloat | None = None
    momentum: NonNegFloat | None = None
    nesterov: bool | None = None
    weight_decay: NonNegFloat | None = None
    betas: tuple[Probability, Probability] | None = None


class Phase(Section):
    epoch: PosInt  # 1-based epoch at which the phase starts
    optim: OptimPatch


class ScheduleConfig(Section):
    name: Literal["none", "cosine", "multistep", "step", "plateau", "exponential", "onecycle"] = "none"
    T_max: PosInt | None = None  # cosine; default: epochs
    eta_min: NonNegFloat = 0.0
    milestones: list[PosInt] = []
    step_size: PosInt = 10
    gamma: PosFloat = 0.1
    factor: Annotated[float, Field(gt=0, lt=1), NoBool] = 0.1
    patience: NonNegInt = 10
    mode: Literal["min", "max"] | None = None  # plateau; default: the monitor's direction
    max_lr: PosFloat | None = None  # onecycle; default: optim.lr
    pct_start: Annotated[float, Field(gt=0, lt=1), NoBool] = 0.3
    warmup_epochs: NonNegInt = 0


class LossConfig(Section):
    name: Literal["auto", "cross_entropy", "bce", "focal", "mse", "smooth_l1"] = "auto"
    label_smoothing: Annotated[float, Field(ge=0, lt=1), NoBool] = 0.0
    class_weights: Literal["none", "inverse", "sqrt_inverse"] | list[PosFloat] = "none"
    pos_weight: PosFloat | Literal["auto"] | None = None
    alpha: Probability | None = 0.25
    gamma: NonNegFloat = 2.0
    beta: PosFloat = 1.0


class EmaConfig(Section):
    """An exponential moving average of the weights (BatchNorm buffers included)."""

    decay: Annotated[float, Field(gt=0, lt=1), NoBool] = 0.9998
    warmup_epochs: NonNegInt = 0  # the average follows the raw weights until this epoch is done
    every: PosInt = 1  # update every N optimizer steps


class MixArgs(Section):
    alpha: PosFloat = 1.0
    p: Probability | None = None  # chance per batch; unset: the entries share what is left of 1


MIXERS = ("MixUp", "CutMix")
BatchMixSpec = dict[Literal["MixUp", "CutMix"], MixArgs]


class EarlyStop(Section):
    patience: PosInt = 10
    min_delta: NonNegFloat = 0.0


class TrainConfig(Section):
    epochs: PosInt = 10
    monitor: str | None = None  # default: the task's main metric, e.g. val/accuracy
    monitor_tiebreak: str | None = "val/loss"  # which epoch is best when the monitor ties; null: the first
    save_every: NonNegInt = 0
    smoothing: Annotated[float, Field(ge=0, lt=1), NoBool] = 0.6
    early_stop: EarlyStop | None = None
    device: Literal["auto", "cpu", "cuda", "mps"] = "auto"
    amp: Literal["auto", "none", "bf16", "fp16"] = "auto"
    channels_last: Literal["auto"] | bool = "auto"
    compile: bool = False
    grad_clip: PosFloat | None = None
    max_batches: PosInt | None = None  # cut each training epoch short (smoke tests, benchmarks)
    ema: EmaConfig | None = None
    accumulate: PosInt = 1  # an optimizer step every N batches (gradient accumulation)

    @field_validator("monitor", "monitor_tiebreak")
    @classmethod
    def _split_prefix(cls, value: str | None) -> str | None:
        if value is not None and not value.startswith(("val/", "train/")):
            raise ValueError("monitor must look like val/<metric>, e.g. val/accuracy")
        return value


class EvalConfig(Section):
    threshold: Annotated[float, Field(gt=0, lt=1), NoBool] = 0.5
    tune_metric: Literal["f1_macro", "f2"] = "f1_macro"


class TTAConfig(Section):
    passes: PosInt = 10
    aggregate: Literal["vote", "mean"] = "vote"
    transforms: list[TransformSpec] | None = None  # default: geometric part of `augment`


class Recipe(Section):
    name: str = Field(pattern=r"^[A-Za-z0-9_.\-]+$")
    description: str = ""
    task: TaskName = "multiclass"
    seed: Annotated[int, NoBool] = 42
    data: DataConfig
    augment: list[TransformSpec] = []
    augment_batch: list[BatchMixSpec] = []  # MixUp / CutMix on whole training batches
    model: ModelConfig = ModelConfig()
    optim: OptimConfig = OptimConfig()
    phases: list[Phase] = []
    schedule: ScheduleConfig = ScheduleConfig()
    loss: LossConfig = LossConfig()
    train: TrainConfig = TrainConfig()
    evaluate: EvalConfig = EvalConfig()
    tta: TTAConfig = TTAConfig()
    sweep: dict[str, list[Any]] | None = None

    @model_validator(mode="after")
    def _consistent(self) -> Recipe:
        allowed = get_task(self.task).losses
        if self.loss.name != "auto" and self.loss.name not in allowed:
            raise ValueError(f"loss.name {self.loss.name} does not fit task {self.task} (use {', '.join(allowed)})")
        if self.data.val is None and self.data.val_fraction is None:
            raise ValueError("data.val is null: set data.val_fraction to split off a validation set")
        if self.schedule.name == "onecycle" and self.schedule.warmup_epochs:
            raise ValueError("schedule.warmup_epochs: onecycle warms up by itself (schedule.pct_start)")
        epochs = [phase.epoch for phase in self.phases]
        if epochs != sorted(set(epochs)):
            raise ValueError("phases must have increasing, distinct epochs")
        self._check_batch_features()
        return self

    def _check_batch_features(self) -> None:
        from cvtool.tasks import get_task

        task = get_task(self.task)
        if any(len(spec) != 1 for spec in self.augment_batch):
            raise ValueError("augment_batch: each entry is one of MixUp or CutMix, e.g. [{MixUp: {alpha: 0.2}}]")
        if self.augment_batch and not task.mixable:
            raise ValueError(f"augment_batch: MixUp/CutMix cannot mix {self.task} targets")
        given = sum(args.p for spec in self.augment_batch for args in spec.values() if args.p is not None)
        if given > 1 + 1e-9:
            raise ValueError(f"augment_batch: the p of the entries add up to {given:g}, more than 1")
        if self.data.sampler != "uniform" and not task.has_classes:
            raise ValueError(f"data.sampler {self.data.sampler} needs class labels (task {self.task} has none)")

