"""The results of evaluating a model on a split: shared by evaluate, its reports and TTA."""

from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path
from typing import TYPE_CHECKING

import numpy as np

from cvtool.evaluation.thresholds import TunedThresholds

if TYPE_CHECKING:
    from cvtool.tasks.reports import ClassTable


@dataclass
class EvalResult:
    """Outputs of one split in its order: activated outputs, targets as the task's metrics
    take them (None without labels), model frames (x0, y0, width, height in original pixels,
    `tasks.frame`; what keypoint tasks take as `sizes`) and image paths."""

    split: str
    outputs: np.ndarray
    targets: np.ndarray | None
    sizes: np.ndarray
    paths: list[Path]
    metrics: dict[str, float]
    loss: float | None
    threshold: np.ndarray | float


@dataclass
class Tuning:
    """--tune-thresholds: the search on val and the same thresholds on test (if labelled)."""

    tuned: TunedThresholds
    test: dict[str, float] | None  # metric at default / global / per-class thresholds
    stored_in: Path


@dataclass
class EvalReport:
    result: EvalResult
    per_class: ClassTable
    out_dir: Path
    files: list[Path]
    checkpoint: Path
    epoch: int
    tuning: Tuning | None = None
