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
# Seeds are combined (seed * 100_003 + epoch in the samplers) and handed to torch's 64-bit
# generator: NumPy's legacy seed range keeps every combination in range.
Seed = Annotated[int, Field(gt=-(2**32), lt=2**32), NoBool]
# Counts a library turns into processes or slices: torch's samplers slice by batch size
# (islice: at most sys.maxsize), and every DataLoader worker is a forked process.
BatchSize = Annotated[int, Field(gt=0, lt=2**31), NoBool]
Workers = Annotated[int, Field(ge=0, le=1024), NoBool]
# An image side: decoding refuses sources over 64 M pixels (data/images.py), so a side beyond 8192
# is a typo; 1e8 would otherwise fail later as an allocation of petabytes.
MAX_IMAGE_SIDE = 8192
ImageSide = Annotated[int, Field(gt=0, le=MAX_IMAGE_SIDE), NoBool]


class Section(BaseModel):
    model_config = ConfigDict(extra="forbid", frozen=True, allow_inf_nan=False)
