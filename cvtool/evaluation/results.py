"""The results of evaluating a model on a split: shared by evaluate, its reports and TTA."""

from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path
from typing import TYPE_CHECKING, Any

import numpy as np

from cvtool.evaluation.thresholds import TunedThresholds

if TYPE_CHECKING:
    from cvtool.tasks.reports import ClassTable


@dataclass
class Calibration:
    temperature: list[float]
    fitted_on: str  # "val" or "out-of-fold"
    images: int  # how many images the temperature was fitted on
    scores: dict[str, dict[str, dict[str, float]]]  # split -> before / after -> ece, nll
    diagram: Path
    stored_in: list[Path]

    def record(self) -> dict[str, Any]:
        return {"temperature": self.temperature, "fitted_on": self.fitted_on, "images": self.images,
                "scores": self.scores, "diagram": str(self.diagram), "stored_in": [str(p) for p in self.stored_in]}


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
    calibration: Calibration | None = None  # --calibrate
