"""Resuming a run: what may change on the way (train.epochs, with --extend) and what carries over
(thresholds tuned into a checkpoint by `cvtool evaluate --tune-thresholds`)."""

from __future__ import annotations

import dataclasses
import sys
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
    """Tuned thresholds live in best.pt (or the checkpoint tuned); later saves keep them, marked
    with the epoch whose weights they were tuned on (stale for every later epoch's weights), and
    the run says so once."""
    best = run.checkpoint("best")
    source = load_checkpoint(best) if best.is_file() else payload
    if source["meta"].get("thresholds") is None:
        source = payload
    stored = source["meta"].get("thresholds")
    if stored is None:
        return session
    tuned_on = source["meta"].get("thresholds_epoch")
    tuned_on = int(source["epoch"]) if tuned_on is None else int(tuned_on)
    if session.lead:
        print(f"cvtool: the decision thresholds in {run.path.name}/checkpoints were tuned on epoch {tuned_on}'s "
              f"weights: the checkpoints saved from here keep them marked stale (thresholds_epoch {tuned_on}); "
              f"rerun cvtool evaluate {run.path} --tune-thresholds after training", file=sys.stderr)
    meta = dataclasses.replace(session.meta, thresholds=[float(t) for t in stored], thresholds_epoch=tuned_on)
    return dataclasses.replace(session, meta=meta)
