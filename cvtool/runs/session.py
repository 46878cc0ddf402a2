"""What a run is about (`Session`), built once by `runs.step.build_session`."""

from __future__ import annotations

from dataclasses import dataclass
from typing import TYPE_CHECKING

import torch

from cvtool.data.pipeline import DataBundle
from cvtool.model_card import ModelMeta
from cvtool.recipe.schema import Recipe
from cvtool.tasks import Task

if TYPE_CHECKING:
    from cvtool.engine.distributed import Dist


@dataclass(frozen=True)
class Session:
    """What a run is about, built once: the recipe, its task and data, the model card, where it runs."""

    recipe: Recipe
    task: Task
    bundle: DataBundle
    meta: ModelMeta
    device: torch.device
    monitor: str
    dist: Dist | None = None  # torchrun's process group; None for one process

    @property
    def lead(self) -> bool:
        """Rank 0 (or the only process): the one that writes the run and prints."""
        return self.dist is None or self.dist.rank == 0
