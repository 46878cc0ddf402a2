"""`cvtool status DIR`: each member of a fold set, sweep or search (or trial of a search) with its
job, state, epoch and best monitored value, read from the run folders and DIR/cluster/. Needs no
torch: it answers at once on a login node."""

from __future__ import annotations

import math
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import yaml

from cvtool.cluster.ledger import Ledger, alive, log_tail
from cvtool.errors import CvtoolError
from cvtool.recipe.schema import Recipe
from cvtool.runs.layout import FOLD_PREFIX, RunDir
from cvtool.tasks import get_task, higher_is_better

# sacct's states, and those of an Optuna trial (a search's trial folders have no job of their own)
SCHEDULER_STATES = {"PENDING": "queued", "RUNNING": "running", "REQUEUED": "requeued", "PREEMPTED": "requeued",
                    "COMPLETING": "running", "CONFIGURING": "queued", "SUSPENDED": "suspended",
                    "PRUNED": "pruned", "FAIL": "failed", "WAITING": "queued"}


@dataclass(frozen=True)
class MemberRow:
    member: str
    job: str | None
    state: str  # done, failed, running, queued, requeued, stopped, not started
    epoch: int | None = None  # epochs finished
    epochs: int | None = None  # epochs planned
    best: float | None = None  # best monitored value so far
    host: str | None = None
    attempts: int | None = None
    tail: list[str] = field(default_factory=list)  # a failed or stopped job's last log lines


@dataclass(frozen=True)
class SetStatus:
    set_dir: Path
    kind: str
    name: str
    monitor: str
    executor: str | None
    rows: list[MemberRow]


def set_status(set_dir: Path, live: dict[str, str] | None = None) -> SetStatus:
    """The status of the set in `set_dir`; `live`: scheduler states the caller already knows."""
    from cvtool.cluster.members import stored_kind
    from cvtool.runs.recipes import load_recipe

    run = RunDir(set_dir)
    if not run.recipe.is_file():
        raise CvtoolError(f"{set_dir}: no {run.recipe.name} (not a fold set, sweep or search folder)")
    recipe = load_recipe(run.recipe, stored=True)
    kind = stored_kind(set_dir, recipe)
    ledger = Ledger(set_dir)
    jobs = ledger.latest_jobs()
    executor = ledger.read_jobs().get("executor")
    logs = Path(ledger.read_jobs().get("logs") or ledger.default_logs)
    live = dict(live or {})
    if executor == "slurm" and not live:
        from cvtool.cluster.driver import slurm_states

        live = slurm_states(logs, jobs)
    monitor = recipe.train.monitor or get_task(recipe.task).default_monitor
    higher = higher_is_better(monitor)
    rows = [member_row(set_dir / name if kind != "search" else None, name, ledger, jobs.get(name), live.get(name),
                       logs, monitor, higher) for name in member_names(kind, recipe, set_dir, jobs)]
    if kind == "search":
        states = trial_states(set_dir)
        trials = sorted(p for p in set_dir.glob("trial_*") if p.is_dir())
        rows += [member_row(path, path.name, None, None, states.get(path.name), logs, monitor, higher)
                 for path in trials]
    return SetStatus(set_dir, kind, recipe.name, monitor, executor, rows)


def trial_states(set_dir: Path) -> dict[str, str]:
    """Each trial folder's state in the search's study (complete, pruned, fail, running)."""
    try:
        from cvtool.search.table import load_search

        _, study = load_search(set_dir)
    except Exception:  # noqa: BLE001 (no optuna, or a storage out of reach: the folders still tell)
        return {}
    return {Path(t.user_attrs["run_dir"]).name: t.state.name for t in study.get_trials(deepcopy=False)
            if "run_dir" in t.user_attrs}


def member_names(kind: str, recipe: Recipe, set_dir: Path, jobs: dict[str, str]) -> list[str]:
    if kind == "folds":
        return [f"{FOLD_PREFIX}{index}" for index in range(recipe.data.folds.k)]  # type: ignore[union-attr]
    if kind == "sweep":
        from cvtool.recipe.sweep import expand_sweep

        return [name for name, _ in expand_sweep(recipe)]
    return sorted(jobs, key=lambda name: (len(name), name))  # a search's workers


def member_row(folder: Path | None, name: str, ledger: Ledger | None, job: str | None, scheduler: str | None,
               logs: Path, monitor: str, higher: bool) -> MemberRow:
    record = ledger.read_member(name) if ledger is not None else {}
    record = record if job is None or record.get("job") == job else {}  # a record of an older job
    epoch, epochs, best = progress(folder, monitor, higher) if folder is not None else (None, None, None)
    state = member_state(folder, record, job, scheduler)
    tail = log_tail(logs, job) if job and state in ("failed", "stopped") else []
    return MemberRow(name, job, state, epoch, epochs, best, record.get("host"), record.get("attempts"), tail)


def member_state(folder: Path | None, record: dict[str, Any], job: str | None, scheduler: str | None) -> str:
    run = RunDir(folder) if folder is not None else None
    if run is not None and run.summary.is_file():
        return "done"
    if run is not None and run.failed.is_file():
        return "failed"
    known = SCHEDULER_STATES.get(scheduler.upper()) if scheduler else None
    ended = scheduler is not None and known is None  # sacct: COMPLETED, FAILED, CANCELLED, TIMEOUT, ...
    state = record.get("state")
    if known is not None and state != "running":
        return known
    if state == "running":
        return "stopped" if ended or alive(record) is False else "running"
    if state in ("failed", "requeued", "done"):
        return state
    if job is not None:
        return "stopped" if ended else "queued"
    if run is not None and run.checkpoint("last").is_file():
        return "stopped"
    return "not started"


def progress(folder: Path, monitor: str, higher: bool) -> tuple[int | None, int | None, float | None]:
    """(epochs finished, epochs planned, best monitored value) of a run folder."""
    run = RunDir(folder)
    epochs = _planned_epochs(run)
    if run.summary.is_file():
        try:
            summary = run.read_summary()
        except CvtoolError:
            summary = {}
        return summary.get("epochs_run", summary.get("best_epoch")), epochs, summary.get("best_value")
    if not run.metrics.is_file():
        return None, epochs, None
    try:
        history = run.read_history()
    except (CvtoolError, ValueError):
        return None, epochs, None
    values = [row[monitor] for row in history if monitor in row and math.isfinite(row[monitor])]
    best = (max(values) if higher else min(values)) if values else None
    return len(history), epochs, best


def _planned_epochs(run: RunDir) -> int | None:
    try:
        data = yaml.safe_load(run.recipe.read_text(encoding="utf-8"))
        return int(data["train"]["epochs"])
    except (OSError, yaml.YAMLError, KeyError, TypeError, ValueError):
        return None
