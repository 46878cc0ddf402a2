"""Every file name of a run directory, in one place.

A run directory (what `cvtool train` writes) and a sweep directory (one run per grid point)
are recognised by their files; nothing else in cvtool spells these names.
"""

from __future__ import annotations

import csv
import json
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from cvtool.errors import CvtoolError

RECIPE = "recipe.yaml"
SUMMARY = "summary.json"
METRICS = "metrics.csv"
SWEEP = "sweep.json"
SWEEP_TABLE = "sweep.csv"
CHECKPOINTS = "checkpoints"
PLOTS = "plots"
PREDICTIONS = "predictions"
TENSORBOARD = "tensorboard"
EVAL = "eval"
EXPLAIN = "explain"  # `cvtool explain RUN`'s default folder
MARKER = ".cvtool-run"  # written first into every run and sweep dir: what --overwrite may remove
FAILED = "failed.json"  # a sweep point stopped by a non-finite loss or output: resume moves on
SAMPLING = "sampling.csv"  # data.sampler: the classes each epoch drew
FOLD_PREFIX = "fold_"
FOLDS = "folds.json"
FOLDS_TABLE = "folds.csv"
OOF = "oof.csv"
CHECKPOINT_TABLE = "checkpoints.csv"  # `cvtool evaluate RUN --checkpoint all`, in eval/<split>-all/
CHECKPOINT_METRICS = "checkpoints.json"
CALIBRATION = "calibration.json"  # `cvtool evaluate --calibrate`, in the report folder
EXPORTED = "model.onnx"  # the best checkpoint exported for tracking artifacts (train.log_checkpoints)
SEARCH = "search.json"
SEARCH_TABLE = "search.csv"
SEARCH_JOURNAL = "optuna-journal.log"
TRACKING = "tracking.json"  # ids of the tracker runs, so --resume continues them


@dataclass(frozen=True)
class RunDir:
    """A run directory's paths; `RunDir.from_checkpoint` finds the run a checkpoint belongs to."""

    path: Path

    @property
    def recipe(self) -> Path:
        return self.path / RECIPE

    @property
    def summary(self) -> Path:
        return self.path / SUMMARY

    @property
    def metrics(self) -> Path:
        return self.path / METRICS

    @property
    def checkpoints(self) -> Path:
        return self.path / CHECKPOINTS

    @property
    def plots(self) -> Path:
        return self.path / PLOTS

    @property
    def predictions(self) -> Path:
        return self.path / PREDICTIONS

    @property
    def tensorboard(self) -> Path:
        return self.path / TENSORBOARD

    @property
    def sampling(self) -> Path:
        return self.path / SAMPLING

    @property
    def sweep(self) -> Path:
        return self.path / SWEEP

    @property
    def sweep_table(self) -> Path:
        return self.path / SWEEP_TABLE

    def fold(self, index: int) -> Path:
        """fold_<index>/: the run of one fold of a k-fold set."""
        return self.path / f"{FOLD_PREFIX}{index}"

    @property
    def folds(self) -> Path:
        return self.path / FOLDS

    @property
    def folds_table(self) -> Path:
        return self.path / FOLDS_TABLE

    @property
    def oof(self) -> Path:
        return self.path / OOF

    def is_fold_set(self) -> bool:
        return self.folds_table.is_file()

    def fold_runs(self) -> list[Path]:
        """The fold_<N>/ runs that have a checkpoint, in fold order."""
        found = [p for p in self.path.glob(f"{FOLD_PREFIX}*") if p.name[len(FOLD_PREFIX):].isdigit()]
        return sorted((p for p in found if RunDir(p).is_run()), key=lambda p: int(p.name[len(FOLD_PREFIX):]))

    @property
    def exported(self) -> Path:
        return self.path / EXPORTED

    @property
    def search(self) -> Path:
        return self.path / SEARCH

    @property
    def search_table(self) -> Path:
        return self.path / SEARCH_TABLE

    @property
    def search_journal(self) -> Path:
        return self.path / SEARCH_JOURNAL

    @property
    def tracking(self) -> Path:
        return self.path / TRACKING

    def trial(self, number: int) -> Path:
        """A search's trial run dir: trial_007."""
        return self.path / f"trial_{number:03d}"
    @property
    def marker(self) -> Path:
        return self.path / MARKER

    @property
    def failed(self) -> Path:
        return self.path / FAILED

    def checkpoint(self, name: str) -> Path:
        """checkpoints/<name>.pt: best, last, epoch_046 (or 46)."""
        name = f"epoch_{int(name):03d}" if name.isdigit() else name
        return self.checkpoints / f"{name}.pt"

    def prediction(self, name: str) -> Path:
        """predictions/<name>.npz: val_epoch_001, val_best, test_best."""
        return self.predictions / f"{name}.npz"

    def eval_dir(self, split: str, checkpoint: str) -> Path:
        return self.path / EVAL / f"{split}-{checkpoint}"

    def kept_checkpoints(self) -> list[Path]:
        """best.pt, last.pt, then epoch_NNN.pt by epoch: the ones that exist."""
        named = [self.checkpoint(name) for name in ("best", "last")]
        epochs = sorted(self.checkpoints.glob("epoch_*.pt"), key=lambda p: (len(p.stem), p.stem))
        return [path for path in named if path.is_file()] + epochs

    def is_run(self) -> bool:
        return self.summary.is_file() or self.checkpoint("last").is_file()

    def is_sweep(self) -> bool:
        return self.sweep.is_file()

    def is_search(self) -> bool:
        return self.search.is_file()
    def is_marked(self) -> bool:
        """cvtool created this folder (a run or a sweep), so --overwrite may replace it."""
        return self.marker.is_file()

    def has_results(self) -> bool:
        """At least one epoch finished here (in a sweep: in one of its points)."""
        if self.metrics.is_file() or self.summary.is_file() or self.sweep.is_file():
            return True
        return any(RunDir(p).metrics.is_file() for p in self.path.iterdir() if p.is_dir())

    @classmethod
    def from_checkpoint(cls, checkpoint: Path) -> RunDir | None:
        """The run a checkpoint file lies in (None for a loose .pt file)."""
        checkpoint = Path(checkpoint)
        if checkpoint.parent.name == CHECKPOINTS:
            return cls(checkpoint.parent.parent)
        return None

    def read_summary(self) -> dict[str, Any]:
        try:
            return json.loads(self.summary.read_text(encoding="utf-8"))
        except FileNotFoundError:
            raise CvtoolError(f"{self.path}: no {SUMMARY} (is it a finished cvtool run?)") from None
        except json.JSONDecodeError as exc:
            raise CvtoolError(f"{self.summary}: invalid JSON ({exc.msg})") from None

    def read_history(self) -> list[dict[str, float]]:
        if not self.metrics.is_file():
            raise CvtoolError(f"{self.path}: no {METRICS}")
        with self.metrics.open(newline="", encoding="utf-8") as handle:
            return [{k: float(v) for k, v in row.items() if v not in ("", None)} for row in csv.DictReader(handle)]


def resolve_checkpoint(target: str | Path, which: str = "best") -> Path:
    """A run dir means its checkpoints/<which>.pt (best, last, epoch_046 or 46); a file is itself."""
    target = Path(target)
    if target.is_file():
        return target
    if not target.is_dir():
        raise CvtoolError(f"{target}: no such run directory or checkpoint")
    run = RunDir(target)
    path = run.checkpoint(which)
    if not path.is_file():
        options = sorted(p.stem for p in run.checkpoints.glob("*.pt"))
        raise CvtoolError(f"{target}: no checkpoint '{path.stem}' (have: {', '.join(options) or 'none'})")
    return path
