"""The recipe schema: every section validated once (unknown keys refused), then frozen.

Sections are passed to the parts that use them (`build_model(recipe.model, ...)`), never the
whole recipe. Values derived at run time (number of classes, stats) are not written back.
"""

from __future__ import annotations

from pathlib import Path
from typing import Annotated, Any, Literal

from pydantic import (
    Field,
    PrivateAttr,
    SerializerFunctionWrapHandler,
    field_serializer,
    field_validator,
    model_validator,
)

from cvtool.recipe.executor import ExecutorConfig
from cvtool.recipe.experiments import LoggerName, MlflowConfig, SearchConfig
from cvtool.recipe.fields import (
    BatchSize,
    ImageSide,
    NoBool,
    NonNegFloat,
    NonNegInt,
    PosFloat,
    PosInt,
    Probability,
    Section,
    Seed,
    TaskName,
    Workers,
)
from cvtool.recipe.model_config import ModelConfig
from cvtool.recipe.training_config import (  # the optim / schedule / loss unions live there
    AutoLossConfig,
    LossConfig,
    NoSchedule,
    OptimConfig,
    Phase,
    ScheduleConfig,
    SgdConfig,
    auto_loss_keys,
    check_auto_loss,
    check_phases,
)
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
    seed: Seed | None = None  # default: the recipe's seed
    group_column: str | None = None  # format csv: images sharing a value stay in one fold (GroupKFold)


class DataConfig(Section):
    format: Literal["folder", "csv", "tinyimagenet"] = "folder"
    root: Path
    train: str = "train"
    val: str | None = "val"
    test: str | None = None
    val_fraction: Annotated[float, Field(gt=0, lt=1), NoBool] | None = None
    image_size: ImageSide = 64
    resize: Literal["squash", "crop", "pad"] = "squash"  # to image_size x image_size (cvtool.tasks.frame)
    channels: Literal[1, 3] = 3
    batch_size: BatchSize = 32
    eval_batch_size: BatchSize | None = None
    num_workers: Workers = 0
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
    # decoded-image cache (uint8, at decode_size; default image_size): the device resizes to image_size.
    # auto: kept for later runs in ~/.cache/cvtool (CVTOOL_CACHE_DIR), which cache_max_gb bounds
    # (data/cache.py); memory: this run only; disk: kept whatever its size
    decode_size: ImageSide | None = None
    cache: Literal["auto", "memory", "disk"] = "auto"
    cache_max_gb: PosFloat = 4.0
    on_bad_image: Literal["fail", "skip"] = "fail"
    # the decoded training split kept on the training device, batches gathered there (data/resident.py);
    # auto: on CUDA when it fits in a quarter of the free device memory
    on_device: Literal["auto"] | bool = "auto"
    # training order: uniform (a permutation per epoch) or class-balanced draws with replacement
    sampler: Literal["uniform", "balanced", "sqrt_balanced"] = "uniform"
    duplicates: Literal["refuse", "keep"] = "refuse"  # the same image twice in one CSV
    # a text file of images to leave out of every split: one path per line, relative to root
    # (`cvtool doctor --fix` writes one); '#' starts a comment line
    exclude: Path | None = None
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


class EmaConfig(Section):
    """An exponential moving average of the weights (BatchNorm buffers included)."""

    decay: Annotated[float, Field(gt=0, lt=1), NoBool] = 0.9998
    warmup_epochs: NonNegInt = 0  # the average follows the raw weights until this epoch is done
    every: PosInt = 1  # update every N optimizer steps
    # the decay ramps up over the first updates, min(decay, 1 - (1 + n)^(-2/3)) at the n-th averaged
    # update (timm's ModelEmaV3 warm-up), so a short run's average is not stuck near its first weights
    ramp: bool = True


class MixArgs(Section):
    alpha: PosFloat = 1.0
    p: Probability | None = None  # chance per batch; unset: the entries share what is left of 1


MIXERS = ("MixUp", "CutMix")
BatchMixSpec = dict[Literal["MixUp", "CutMix"], MixArgs]


class EarlyStop(Section):
    patience: PosInt = 10
    min_delta: NonNegFloat = 0.0


class DdpConfig(Section):
    """DistributedDataParallel's options under torchrun."""

    # torch's and timm's default: rank 0's BatchNorm statistics to every rank at each forward
    # (MMEngine and detectron2 turn it off to save a broadcast per step)
    broadcast_buffers: bool = True
    # gradients live in DDP's all-reduce buckets: one gradient copy less in memory (PyTorch's DDP notes)
    bucket_view: bool = True


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
    ddp: DdpConfig = DdpConfig()

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
    seed: Seed = 42
    data: DataConfig
    augment: list[TransformSpec] = []
    augment_batch: list[BatchMixSpec] = []  # MixUp / CutMix on whole training batches
    model: ModelConfig = ModelConfig()
    optim: OptimConfig = SgdConfig()
    phases: list[Phase] = []
    schedule: ScheduleConfig = NoSchedule()
    loss: LossConfig = AutoLossConfig()
    train: TrainConfig = TrainConfig()
    evaluate: EvalConfig = EvalConfig()
    tta: TTAConfig = TTAConfig()
    sweep: dict[str, list[Any]] | None = None
    search: SearchConfig | None = None
    executor: ExecutorConfig | None = None  # `cvtool train --executor slurm`: the jobs' size (recipe/executor.py)
    # a sweep's or search's recipe.yaml as cvtool stored it (recipe.load.keep_written): its points
    # and trials are built from that mapping, each read as a stored recipe
    _written: dict[str, Any] | None = PrivateAttr(default=None)

    @model_validator(mode="after")
    def _consistent(self) -> Recipe:
        allowed = get_task(self.task).losses
        if self.loss.name != "auto" and self.loss.name not in allowed:
            raise ValueError(f"loss.name {self.loss.name} does not fit task {self.task} (use {', '.join(allowed)})")
        if self.data.val is None and self.data.val_fraction is None:
            raise ValueError("data.val is null: set data.val_fraction to split off a validation set")
        if self.sweep and self.search:
            raise ValueError("sweep and search: use one of them (a grid, or sampler: grid)")
        check_auto_loss(self.loss, self.task)
        epochs = [phase.epoch for phase in self.phases]
        if epochs != sorted(set(epochs)):
            raise ValueError("phases must have increasing, distinct epochs")
        check_phases(self.optim, self.phases)
        self._check_batch_features()
        return self

    @field_serializer("loss", mode="wrap")
    def _loss_of_task(self, loss: LossConfig, handler: SerializerFunctionWrapHandler) -> Any:
        """`loss.name: auto` is written with the keys of its task's loss only (the others are not read)."""
        written = handler(loss)
        if loss.name != "auto" or not isinstance(written, dict):
            return written
        keys = auto_loss_keys(self.task)
        return {key: value for key, value in written.items() if key in keys}

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

