"""Resuming a run: what may change on the way (train.epochs, with --extend) and what carries over
(thresholds tuned into a checkpoint by `cvtool evaluate --tune-thresholds`)."""

from __future__ import annotations

import dataclasses
from pathlib import Path
from typing import Any

from cvtool.engine.checkpoint import load_checkpoint
from cvtool.errors import CvtoolError
from cvtool.recipe.schema import Recipe
from cvtool.runs.layout import RunDir
from cvtool.runs.session import Session


def planned_epochs(payload: dict[str, Any]) -> int:
    return int(payload["recipe"]["train"]["epochs"])


def check_resume(recipe: Recipe, payload: dict[str, Any], extend: bool, run_dir: Path) -> None:
    """A changed train.epochs changes the schedule of the epochs already run (cosine's T_max,
    onecycle's total steps): continue only with --extend, and only to more epochs than ran."""
    planned, done, wanted = planned_epochs(payload), int(payload["epoch"]), recipe.train.epochs
    if wanted == planned:
        return
    if not extend:
        state = "finished" if done >= planned else f"stopped after epoch {done}"
        raise CvtoolError(f"--resume {run_dir}: train.epochs is {wanted}, the run was planned for {planned} "
                          f"({state}); pass --extend to train on to {wanted} epochs (the schedule restarts "
                          f"over the added epochs)")
    if wanted <= done:
        raise CvtoolError(f"--extend: train.epochs {wanted} adds no epoch to the {done} the run has done")


def carry_thresholds(session: Session, run: RunDir, payload: dict[str, Any]) -> Session:
    """Tuned thresholds live in best.pt (or the checkpoint tuned); later saves keep them."""
    best = run.checkpoint("best")
    stored = load_checkpoint(best)["meta"].get("thresholds") if best.is_file() else None
    stored = stored if stored is not None else payload["meta"].get("thresholds")
    if stored is None:
        return session
    return dataclasses.replace(session, meta=dataclasses.replace(session.meta, thresholds=[float(t) for t in stored]))
