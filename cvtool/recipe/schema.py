"""The recipe schema: every section validated once (unknown keys refused), then frozen.

Sections are passed to the parts that use them (`build_model(recipe.model, ...)`), never the
whole recipe. Values derived at run time (number of classes, stats) are not written back.
"""

from __future__ import annotations

from pathlib import Path
from typing import Annotated, Any, Literal

from pydantic import Field, field_validator, model_validator

from cvtool.recipe.experiments import LoggerName, MlflowConfig, SearchConfig
from cvtool.recipe.fields import (
    NoBool,
    NonNegFloat,
    NonNegInt,
    PosFloat,
    PosInt,
    Probability,
    Section,
    TaskName,
)
from cvtool.recipe.model_config import ModelConfig
from cvtool.tasks import get_task


class NormStats(Section):
    mean: list[float]
    std: list[Annotated[float, Field(gt=0)]]

    @model_validator(mode="after")
    def _same_length(self) -> NormStats:
        if len(self.mean) != len(self.std):
            raise ValueError("mean and std need the same number of channels")
        return self


TransformSpec = dict[str, dict[str, Any] | None]


class FoldsConfig(Section):
    """K-fold cross-validation over the training split (`cvtool train --fold all|N`)."""

    k: Annotated[int, Field(ge=2), NoBool] = 5
    stratify: Literal["auto", "none"] = "auto"  # auto: by class / by tags, as the task says
    seed: Annotated[int, NoBool] | None = None  # default: the recipe's seed
    group_column: str | None = None  # format csv: images sharing a value stay in one fold (GroupKFold)


class DataConfig(Section):
    format: Literal["folder", "csv", "tinyimagenet"] = "folder"
    root: Path
    train: str = "train"
    val: str | None = "val"
    test: str | None = None
    val_fraction: Annotated[float, Field(gt=0, lt=1), NoBool] | None = None
    image_size: PosInt = 64
    resize: Literal["squash", "crop", "pad"] = "squash"  # to image_size x image_size (cvtool.tasks.frame)
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
    # decoded-image cache (uint8, at decode_size; default image_size): the device resizes to image_size
    decode_size: PosInt | None = None
    cache: Literal["auto", "memory", "disk"] = "auto"
    cache_max_gb: PosFloat = 4.0
    on_bad_image: Literal["fail", "skip"] = "fail"
    # training order: uniform (a permutation per epoch) or class-balanced draws with replacement
    sampler: Literal["uniform", "balanced", "sqrt_balanced"] = "uniform"
    duplicates: Literal["refuse", "keep"] = "refuse"  # the same image twice in one CSV
    folds: FoldsConfig | None = None
    fold: NonNegInt | None = None  # the held-out fold of a fold run (set by --fold; it is that run's val)

    @property
    def cached_size(self) -> int:
        """The size images are decoded and cached at."""
        return self.decode_size or self.image_size

    @field_validator("image_extension")
    @classmethod
    def _dot(cls, value: str) -> str:
        return value if not value or value.startswith(".") else "." + value

    @model_validator(mode="after")
    def _fold_in_range(self) -> DataConfig:
        if self.fold is not None and self.folds is None:
            raise ValueError("data.fold needs data.folds (k, stratify, seed)")
        if self.fold is not None and self.folds is not None and self.fold >= self.folds.k:
            raise ValueError(f"data.fold {self.fold} is out of range for data.folds.k {self.folds.k} (0 to {self.folds.k - 1})")
        return self


class OptimConfig(Section):
    name: Literal["sgd", "adam", "adamw"] = "sgd"
    lr: PosFloat = 0.01
    momentum: NonNegFloat = 0.9
    nesterov: bool = False
    weight_decay: NonNegFloat | None = None  # None: the optimizer's own default (SGD 0, Adam 0, AdamW 0.01)
    betas: tuple[Probability, Probability] = (0.9, 0.999)
    amsgrad: bool = False  # adam / adamw

    @model_validator(mode="after")
    def _nesterov(self) -> OptimConfig:
        if self.nesterov and (self.name != "sgd" or self.momentum == 0):
            raise ValueError("nesterov needs optim.name sgd with momentum > 0")
        if self.amsgrad and self.name == "sgd":
            raise ValueError("amsgrad needs optim.name adam or adamw")
        return self


class OptimPatch(Section):
    """A phase's changes to the optimizer; unset keys keep their value."""

    name: Literal["sgd", "adam", "adamw"] | None = None
    lr: PosFloat | None = None
    momentum: NonNegFloat | None = None
    nesterov: bool | None = None
    weight_decay: NonNegFloat | None = None
    betas: tuple[Probability, Probability] | None = None
    amsgrad: bool | None = None


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
    compile: Literal["auto"] | bool = "auto"  # auto: on for CUDA (falls back to eager if it fails)
    cudnn_benchmark: bool = True  # CUDA only: cuDNN picks the fastest kernels for the input shape
    tf32: bool = True  # CUDA only: TensorFloat-32 matrix products for the float32 parts
    grad_clip: PosFloat | None = None
    max_batches: PosInt | None = None  # cut each training epoch short (smoke tests, benchmarks)
    ema: EmaConfig | None = None
    accumulate: PosInt = 1  # an optimizer step every N batches (gradient accumulation)
    loggers: list[LoggerName] = ["csv", "tensorboard"]
    mlflow: MlflowConfig = MlflowConfig()
    log_checkpoints: Literal["none", "best"] = "none"  # best.pt and an exported .onnx as artifacts

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
    search: SearchConfig | None = None

    @model_validator(mode="after")
    def _consistent(self) -> Recipe:
        allowed = get_task(self.task).losses
        if self.loss.name != "auto" and self.loss.name not in allowed:
            raise ValueError(f"loss.name {self.loss.name} does not fit task {self.task} (use {', '.join(allowed)})")
        if self.data.val is None and self.data.val_fraction is None:
            raise ValueError("data.val is null: set data.val_fraction to split off a validation set")
        if self.schedule.name == "onecycle" and self.schedule.warmup_epochs:
            raise ValueError("schedule.warmup_epochs: onecycle warms up by itself (schedule.pct_start)")
        if self.sweep and self.search:
            raise ValueError("sweep and search: use one of them (a grid, or sampler: grid)")
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
        if self.augment_batch and (problem := task.check_mixing()):
            raise ValueError(f"augment_batch: {problem}")
        given = sum(args.p for spec in self.augment_batch for args in spec.values() if args.p is not None)
        if given > 1 + 1e-9:
            raise ValueError(f"augment_batch: the p of the entries add up to {given:g}, more than 1")
        if problem := task.check_sampler(self.data.sampler):
            raise ValueError(problem)

