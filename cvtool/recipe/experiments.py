"""Recipe sections for experiment tracking (`train.loggers`, `train.mlflow`) and Optuna search
(`search:`)."""

from __future__ import annotations

from typing import Annotated, Any, Literal

from pydantic import Field, model_validator

from cvtool.recipe.fields import NoBool, NonNegInt, PosInt, Section


class MlflowConfig(Section):
    uri: str | None = None  # default: $MLFLOW_TRACKING_URI, else a local store beside the run
    experiment: str | None = None  # default: the recipe's name


LoggerName = Literal["csv", "tensorboard", "mlflow", "wandb", "clearml"]


class SearchRange(Section):
    low: Annotated[int | float, NoBool]
    high: Annotated[int | float, NoBool]
    log: bool = False

    @model_validator(mode="after")
    def _ordered(self) -> SearchRange:
        if not self.low < self.high:
            raise ValueError("low must be below high")
        if self.log and self.low <= 0:
            raise ValueError("log: true needs low > 0")
        return self


class SearchConfig(Section):
    """Optuna search: one trial per sampled point of `space`, each a normal run dir."""

    sampler: Literal["tpe", "random", "grid"] = "tpe"
    trials: PosInt = 20
    space: dict[str, SearchRange | Annotated[list[Any], Field(min_length=1)]]
    pruner: Literal["median", "hyperband", "none"] = "median"
    startup_trials: NonNegInt = 2  # finished trials before the median pruner may stop one
    warmup_epochs: NonNegInt = 1  # epochs of each trial that are never pruned
    storage: str | None = None  # Optuna storage URL; default a journal file in the search dir
    study: str | None = None  # default: the recipe's name

    @model_validator(mode="after")
    def _space(self) -> SearchConfig:
        if not self.space:
            raise ValueError("space: needs at least one key")
        if self.sampler == "grid" and any(isinstance(v, SearchRange) for v in self.space.values()):
            raise ValueError("sampler grid needs a list of values for every space key")
        return self
