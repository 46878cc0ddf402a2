"""The recipe's `optim`, `schedule` and `loss` sections: one class per `name`, joined in a union
tagged by `name`. A class holds only what its optimizer / scheduler / loss reads, so a setting
that cannot take effect (`optim.momentum` under adam) is refused like a typo.

The engine reads the field names as they are here (`cfg.T_max`, `cfg.warmup_epochs`, ...).
"""

from __future__ import annotations

import types
import typing
from typing import Annotated, Any, ClassVar, Literal

from pydantic import BeforeValidator, Field, ValidationError, model_validator

from cvtool.recipe.fields import NoBool, NonNegFloat, NonNegInt, PosFloat, PosInt, Probability, Section
from cvtool.tasks import get_task


def _tagged(default: str, union: Any) -> BeforeValidator:
    """Fills in the default `name`; `key: null` unsets a key the name does not read."""
    by_name = variants(union)

    def fill(value: Any) -> Any:
        if not isinstance(value, dict):
            return value  # pydantic answers "expected a mapping"
        value = {"name": default, **value}
        variant = by_name.get(value["name"]) if isinstance(value["name"], str) else None
        if variant is None:
            return value  # pydantic lists the names
        # null is no value: it is how a recipe drops a key its base set for another name
        # (a step switching from cosine to multistep writes T_max: null)
        return {key: item for key, item in value.items() if item is not None or key in variant.model_fields}

    return BeforeValidator(fill)


def variants(union: Any) -> dict[str, type[Section]]:
    """{name: class} of a section union tagged by `name` (the alias or its bare union); {} for other types."""
    if typing.get_origin(union) is Annotated:
        union = typing.get_args(union)[0]
    if typing.get_origin(union) not in (typing.Union, types.UnionType):
        return {}
    found: dict[str, type[Section]] = {}
    for member in typing.get_args(union):
        field = member.model_fields.get("name") if isinstance(member, type) and issubclass(member, Section) else None
        if field is None or typing.get_origin(field.annotation) is not Literal:
            return {}
        found[field.default] = member
    return found


# ---- optim --------------------------------------------------------------------------------------

class _Optimizer(Section):
    name: str
    lr: PosFloat = 0.01
    weight_decay: NonNegFloat | None = None  # None: the optimizer's own default (SGD 0, Adam 0, AdamW 0.01)


class SgdConfig(_Optimizer):
    name: Literal["sgd"] = "sgd"
    momentum: NonNegFloat = 0.9
    nesterov: bool = False

    @model_validator(mode="after")
    def _nesterov(self) -> SgdConfig:
        if self.nesterov and self.momentum == 0:
            raise ValueError("nesterov needs momentum > 0")
        return self


class _AdamFamily(_Optimizer):
    betas: tuple[Probability, Probability] = (0.9, 0.999)
    amsgrad: bool = False


class AdamConfig(_AdamFamily):
    name: Literal["adam"] = "adam"


class AdamWConfig(_AdamFamily):
    name: Literal["adamw"] = "adamw"


_Optimizers = SgdConfig | AdamConfig | AdamWConfig
OptimConfig = Annotated[_Optimizers, Field(discriminator="name"), _tagged("sgd", _Optimizers)]
OPTIM_VARIANTS = variants(OptimConfig)


class OptimPatch(Section):
    """A phase's changes to the optimizer; unset keys keep their value. Each key must be one the
    optimizer in force after the patch reads (the recipe checks, it knows the optimizer before)."""

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


def patched(cfg: OptimConfig, patch: OptimPatch) -> OptimConfig:
    """The optimizer after a phase's patch. A switch of name keeps what the new optimizer reads
    (lr, weight_decay; betas and amsgrad between adam and adamw) and drops the rest."""
    changes = patch.model_dump(exclude_none=True)
    variant = OPTIM_VARIANTS[changes.get("name", cfg.name)]
    kept = {key: value for key, value in cfg.model_dump().items() if key in variant.model_fields}
    return variant.model_validate({**kept, **changes})


def check_phases(optim: OptimConfig, phases: list[Phase]) -> None:
    """Every phase's keys apply to the optimizer in force after it, and the result is valid."""
    cfg = optim
    for index, phase in enumerate(phases):
        changes = phase.optim.model_dump(exclude_none=True)
        name = changes.get("name", cfg.name)
        for key in changes:
            if key not in OPTIM_VARIANTS[name].model_fields:
                raise ValueError(f"phases[{index}].optim.{key}: " + not_a_setting(
                    "optim", name, key, OPTIM_VARIANTS, f" in force from epoch {phase.epoch}"))
        try:
            cfg = patched(cfg, phase.optim)
        except ValidationError as exc:
            reason = exc.errors()[0]["msg"].removeprefix("Value error, ")
            raise ValueError(f"phases[{index}].optim: {reason}") from None


# ---- schedule -----------------------------------------------------------------------------------

class _Schedule(Section):
    name: str
    warmup_epochs: NonNegInt = 0  # a linear warm-up in front of the schedule


class _Decay(_Schedule):
    gamma: PosFloat = 0.1


class NoSchedule(_Schedule):
    name: Literal["none"] = "none"


class CosineSchedule(_Schedule):
    name: Literal["cosine"] = "cosine"
    T_max: PosInt | None = None  # default: epochs
    eta_min: NonNegFloat = 0.0


class MultiStepSchedule(_Decay):
    name: Literal["multistep"] = "multistep"
    milestones: list[PosInt] = []


class StepSchedule(_Decay):
    name: Literal["step"] = "step"
    step_size: PosInt = 10


class ExponentialSchedule(_Decay):
    name: Literal["exponential"] = "exponential"


class PlateauSchedule(_Schedule):
    name: Literal["plateau"] = "plateau"
    factor: Annotated[float, Field(gt=0, lt=1), NoBool] = 0.1
    patience: NonNegInt = 10
    mode: Literal["min", "max"] | None = None  # default: the monitor's direction


class OneCycleSchedule(Section):
    name: Literal["onecycle"] = "onecycle"
    max_lr: PosFloat | None = None  # default: optim.lr
    pct_start: Annotated[float, Field(gt=0, lt=1), NoBool] = 0.3
    # what an error says instead of the names that take the key
    absent: ClassVar[dict[str, str]] = {"warmup_epochs": "onecycle warms up by itself through schedule.pct_start"}

    @property
    def warmup_epochs(self) -> int:
        """0: not a key of onecycle, read by code that warms any schedule up."""
        return 0


_Schedules = (NoSchedule | CosineSchedule | MultiStepSchedule | StepSchedule | PlateauSchedule
              | ExponentialSchedule | OneCycleSchedule)
ScheduleConfig = Annotated[_Schedules, Field(discriminator="name"), _tagged("none", _Schedules)]
SCHEDULE_VARIANTS = variants(ScheduleConfig)


# ---- loss: which keys each loss reads, as tasks/losses.py builds it ------------------------------

class _Loss(Section):
    name: str


class _Weighted(_Loss):
    class_weights: Literal["none", "inverse", "sqrt_inverse"] | list[PosFloat] = "none"


class _Smoothing(_Loss):
    label_smoothing: Annotated[float, Field(ge=0, lt=1), NoBool] = 0.0


class _PosWeight(_Loss):
    pos_weight: PosFloat | Literal["auto"] | None = None  # auto: n_negative / n_positive of the train split


class _Focusing(_Loss):
    alpha: Probability | None = 0.25  # null: no alpha balancing
    gamma: NonNegFloat = 2.0


class _Beta(_Loss):
    beta: PosFloat = 1.0  # in pixels of the model input


class CrossEntropyConfig(_Weighted, _Smoothing):
    name: Literal["cross_entropy"] = "cross_entropy"


class BceConfig(_PosWeight, _Weighted):
    name: Literal["bce"] = "bce"


class FocalConfig(_Focusing, _Weighted):
    name: Literal["focal"] = "focal"


class MseConfig(_Loss):
    name: Literal["mse"] = "mse"


class SmoothL1Config(_Beta):
    name: Literal["smooth_l1"] = "smooth_l1"


class AutoLossConfig(_Beta, _Focusing, _PosWeight, _Weighted, _Smoothing):
    """The task's default loss. It has every loss's keys: the recipe, which knows the task, keeps
    those of that loss (`check_auto_loss`) and writes only them."""

    name: Literal["auto"] = "auto"
    stand_in: ClassVar[bool] = True  # not listed among the names that take a key


_Losses = (AutoLossConfig | CrossEntropyConfig | BceConfig | FocalConfig | MseConfig | SmoothL1Config)
LossConfig = Annotated[_Losses, Field(discriminator="name"), _tagged("auto", _Losses)]
LOSS_VARIANTS = variants(LossConfig)


def auto_loss_keys(task: str) -> list[str]:
    """The keys `loss.name: auto` takes for a task: those of the task's default loss."""
    return list(LOSS_VARIANTS[get_task(task).default_loss].model_fields)


def check_auto_loss(loss: LossConfig, task: str) -> None:
    if loss.name != "auto":
        return
    resolved, keys = get_task(task).default_loss, auto_loss_keys(task)
    for key in type(loss).model_fields:
        if key in loss.model_fields_set and key not in keys and getattr(loss, key) is not None:
            raise ValueError(f"loss.{key}: " + not_a_setting(
                "loss", "auto", key, LOSS_VARIANTS, f", which is {resolved} for task {task}"))


def not_a_setting(section: str, name: str, key: str, options: dict[str, type[Section]], which: str = "") -> str:
    """'not a setting of optim.name adam (it applies to: sgd)': why `key` is refused under `name`."""
    absent: dict[str, str] = getattr(options.get(name), "absent", {})
    takers = [tag for tag, cls in options.items() if key in cls.model_fields and not getattr(cls, "stand_in", False)]
    reason = absent.get(key) or f"it applies to: {', '.join(takers)}"
    return f"not a setting of {section}.name {name}{which} ({reason})"
