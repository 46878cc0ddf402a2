"""The building blocks of the recipe schema: strict numbers and the frozen, closed section."""

from __future__ import annotations

from typing import Annotated, Any, Literal

from pydantic import BaseModel, BeforeValidator, ConfigDict, Field


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
