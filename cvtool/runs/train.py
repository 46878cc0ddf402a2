"""`cvtool train`: fit one recipe into a run directory (sweeps live in sweep.py)."""

from __future__ import annotations

import time
from collections.abc import Callable
from pathlib import Path
from typing import Any

import numpy as np
from rich.console import Console

from cvtool.data.device import DeviceFeeder, augment_on_device
from cvtool.data.loaders import make_loader
from cvtool.data.pipeline import eval_dataset, train_dataset
from cvtool.data.sampling import train_sampler
from cvtool.engine.checkpoint import load_checkpoint, rng_state, save_checkpoint, set_rng_state
from cvtool.engine.cpu import with_cpu_runtime
from cvtool.engine.loop import (
    optimizer_steps,
    train_one_epoch,
)
from cvtool.engine.optim import (
    OPTIMIZERS,
    Schedule,
    build_optimizer,
    current_lr,
    optim_for_epoch,
    phase_start,
    retune,
)
from cvtool.engine.runlog import RunLog
from cvtool.engine.state import Session, TrainState, unwrap
from cvtool.errors import CvtoolError
from cvtool.models import set_trainable
from cvtool.models.pretrained import record_weights, weights_record
from cvtool.recipe.schema import Recipe
from cvtool.runs.artifacts import finish_run, record_sampling, save_predictions, split_metrics
from cvtool.runs.layout import RunDir
from cvtool.runs.loggers import open_loggers
from cvtool.runs.resume import carry_thresholds, check_resume, extend_schedule, planned_epochs
from cvtool.runs.session import build_session
from cvtool.tasks import higher_is_better


def make_schedule(session: Session, epoch: int, steps: int) -> Schedule:
    """The schedule of the phase in force at `epoch`, spanning the epochs left in the run."""
    recipe = session.recipe
    start = phase_start(recipe.phases, epoch)
    mode = "max" if higher_is_better(session.monitor) else "min"
    cfg = recipe.schedule if start == 1 else recipe.schedule.model_copy(update={"warmup_epochs": 0})
    return Schedule(session.step.optimizer, cfg, recipe.train.epochs - start + 1, steps, mode)


def enter_phase(session: Session, epoch: int, steps: int) -> None:
    """At a phase boundary switch (or retune) the optimizer and restart the schedule."""
    recipe, step = session.recipe, session.step
    cfg = optim_for_epoch(recipe.optim, recipe.phases, epoch)
    if type(step.optimizer) is not OPTIMIZERS[cfg.name].opt_class:
        step.optimizer = build_optimizer(unwrap(step.model).parameters(), cfg)
    else:
        retune(step.optimizer, cfg)
    step.schedule = make_schedule(session, epoch, steps)


def checkpoint_payload(session: Session, state: TrainState) -> dict[str, Any]:
    raw = unwrap(session.step.model).state_dict()
    # "model" is what evaluate / TTA / export / predict load: the EMA weights when train.ema is on
    weights = {"model": raw, "weights": "raw"} if session.ema is None else {
        "model": session.ema.module.state_dict(), "weights": "ema", "raw_model": raw, "ema": session.ema.state_dict()}
    return {
        "recipe": session.recipe.model_dump(mode="json"), "meta": session.meta.to_dict(), "epoch": state.epoch,
        **weights, "optimizer": session.step.optimizer.state_dict(),
        "scheduler": session.step.schedule.state_dict(), "rng": rng_state(),
        "train_state": {"best_value": state.best_value, "best_epoch": state.best_epoch,
                        "bad_epochs": state.bad_epochs, "history": state.history},
        "monitor": session.monitor,
        "pretrained": weights_record(unwrap(session.step.model)),  # where the run's weights started from
    }


def restore(session: Session, payload: dict[str, Any], steps: int) -> TrainState:
    """Continue from a last.pt: weights, optimizer, schedule, RNG and history."""
    saved = payload["train_state"]
    state = TrainState(int(payload["epoch"]), saved["best_value"], int(saved["best_epoch"]),
                       int(saved["bad_epochs"]), list(saved["history"]))
    unwrap(session.step.model).load_state_dict(payload.get("raw_model", payload["model"]))
    record_weights(unwrap(session.step.model), None, payload.get("pretrained"))
    if session.ema is not None:
        session.ema.load(payload["model"], payload["ema"])
    # The optimizer and schedule as they were when the checkpoint was taken; a phase that
    # starts at the next epoch is entered by the loop, exactly as in an uninterrupted run.
    saved_epoch = max(state.epoch, 1)
    session.step.optimizer = build_optimizer(unwrap(session.step.model).parameters(),
                                             optim_for_epoch(session.recipe.optim, session.recipe.phases, saved_epoch))
    # Building a torch scheduler writes its starting lr into the optimizer: the saved optimizer
    # state (lr in force at the checkpoint) is loaded after it, or a per-batch schedule such as
    # onecycle would run the first resumed batch at its starting lr.
    session.step.schedule = make_schedule(session, saved_epoch, steps)
    session.step.optimizer.load_state_dict(payload["optimizer"])
    session.step.schedule.load_state_dict(payload["scheduler"])
    set_rng_state(payload["rng"])
    return state


@with_cpu_runtime
def fit(recipe: Recipe, run_dir: Path | None, *, resume: bool = False, quiet: bool = False,
        stop: Any = None, dist: Any = None, extend: bool = False, on_epoch: Any = None,
        started: Callable[[], Path] | None = None) -> dict[str, Any]:
    """Train `recipe`, writing the run into `run_dir`; returns the summary. `on_epoch(row)` is
    called after each epoch is saved (a search prunes a trial by raising there). `started` is
    called once data, model and the first checkpoint are in place and returns where the run lives
    from then on (a new run is written beside an old one and swapped in: see runs/placement.py)."""
    session = build_session(recipe, quiet, dist, resume)
    lead = dist is None or dist.rank == 0
    defer = augment_on_device(session.device, recipe.data.num_workers)
    train_set = train_dataset(session.bundle, recipe, session.task, defer_augment=defer)
    session.step.augment = train_set.batched if train_set.defer_augment else None
    rank, world = (dist.rank, dist.world_size) if dist else (0, 1)
    sampler = train_sampler(recipe.data.sampler, session.task, len(train_set), session.bundle.splits["train"].targets,
                            session.bundle.info.num_outputs, recipe.seed, rank, world)
    batch = recipe.data.batch_size
    if lead and batch > len(sampler):
        _warn_clipped_batch(batch, len(sampler), dist is not None)
    loader = DeviceFeeder(make_loader(train_set, batch, sampler, recipe.data.num_workers, session.device,
                                      drop_last=len(sampler) % batch == 1), session.device)
    steps = optimizer_steps(min(len(loader), recipe.train.max_batches or len(loader)), recipe.train.accumulate)
    session.step.schedule = make_schedule(session, 1, steps)
    if stop is not None:
        session.step.stop = stop
    run = RunDir(run_dir) if run_dir is not None else None
    if resume:
        payload = load_checkpoint(run.checkpoint("last"))
        check_resume(recipe, payload, extend, run_dir)
        state = restore(session, payload, steps)
        if planned_epochs(payload) != recipe.train.epochs:
            extend_schedule(session, state, steps)
        carry_thresholds(session, run, payload)
    else:
        state = TrainState()
        if lead and run is not None:
            save_checkpoint(run.checkpoint("last"), checkpoint_payload(session, state))
    if started is not None:
        run_dir = started()
        run = RunDir(run_dir)
    trackers = open_loggers(recipe, run_dir, resume, state.history) if lead and run is not None else None
    log = RunLog(quiet or not lead, history=state.history, loggers=trackers)
    try:
        _epochs(session, state, loader, sampler, log, run, steps, on_epoch)
        summary = finish_run(session, state, run_dir, quiet) if lead else {}
        if trackers is not None:
            trackers.finish(summary)
    except BaseException as exc:
        log.close(exc)
        raise
    log.close()
    return summary


def _warn_clipped_batch(batch: int, images: int, per_rank: bool) -> None:
    where = "this rank's share of the training split" if per_rank else "the training split"
    Console(stderr=True, highlight=False).print(
        f"[yellow]cvtool: data.batch_size {batch} is larger than {where} ({images} images): "
        f"each epoch is one batch of {images}[/]", soft_wrap=True)


def _epochs(session: Session, state: TrainState, loader, sampler, log: RunLog, run: RunDir | None,
            steps: int, on_epoch: Any = None) -> None:
    recipe, step = session.recipe, session.step
    higher = higher_is_better(session.monitor)
    stopper = recipe.train.early_stop
    lead = session.dist is None or session.dist.rank == 0
    val_set = eval_dataset(session.bundle, "val", session.task, recipe.seed)
    for epoch in range(state.epoch + 1, recipe.train.epochs + 1):
        if epoch > 1 and epoch in {p.epoch for p in recipe.phases}:
            enter_phase(session, epoch, steps)
        set_trainable(unwrap(step.model), recipe.model.freeze, epoch)
        sampler.set_epoch(epoch)
        lr = current_lr(step.optimizer)
        start = time.perf_counter()
        batches = min(len(loader), recipe.train.max_batches or len(loader))
        result = train_one_epoch(step, loader, epoch, log.progress(epoch, recipe.train.epochs, batches))
        train_metrics = session.task.metrics(*_gather_train(session, result))
        val = split_metrics(session.evaluated(), val_set, "val", keep_outputs=lead, epoch=epoch)
        row = {"epoch": epoch, "lr": lr, "seconds": round(time.perf_counter() - start, 3),
               "train/loss": result.loss, "val/loss": val["loss"],
               **{f"train/{k}": v for k, v in train_metrics.items()},
               **{f"val/{k}": v for k, v in val["metrics"].items()},
               **_raw_val_metrics(session, val_set)}
        if session.monitor not in row:
            raise CvtoolError(f"train.monitor: {session.monitor} is not reported (have: "
                              f"{', '.join(k for k in row if k.startswith('val/'))})")
        value = row[session.monitor]
        step.schedule.step_epoch(value)
        is_best = state.improved(value, higher, stopper.min_delta if stopper else 0.0, _tiebreak(recipe, row))
        state.bad_epochs = 0 if is_best else state.bad_epochs + 1
        if is_best:
            state.best_value, state.best_epoch = value, epoch
        state.epoch = epoch
        state.history.append(row)
        log.history = state.history[:-1]
        log.add(row, session.monitor, is_best)
        if lead and run is not None:
            _save_epoch(session, state, run, is_best, val)
            record_sampling(sampler, session, run.path, epoch)
        if on_epoch is not None:
            on_epoch(row)
        if stopper and state.bad_epochs >= stopper.patience:
            log.console.print(f"early stop: no {session.monitor} gain for {stopper.patience} epochs")
            break


def _tiebreak(recipe: Recipe, row: dict[str, float]) -> tuple[str, float, bool] | None:
    """train.monitor_tiebreak: which epoch is best when the monitored value ties (val/loss)."""
    key = recipe.train.monitor_tiebreak
    if key is None:
        return None
    if key not in row:
        raise CvtoolError(f"train.monitor_tiebreak: {key} is not reported (have: "
                          f"{', '.join(k for k in row if k.startswith(('val/', 'train/')))})")
    return key, row[key], higher_is_better(key)


def _raw_val_metrics(session: Session, val_set: Any) -> dict[str, float]:
    """With EMA, the raw weights' validation loss and metrics beside the EMA's (val_raw/...)."""
    if session.ema is None:
        return {}
    raw = split_metrics(session, val_set, "val", keep_outputs=False)
    return {"val_raw/loss": raw["loss"], **{f"val_raw/{k}": v for k, v in raw["metrics"].items()}}


def _gather_train(session: Session, result) -> tuple[np.ndarray, np.ndarray, float, np.ndarray | None]:
    """Train-batch outputs as the task's metrics want them (keypoints need image sizes)."""
    outputs = session.task.activate(result.logits)
    frames = session.bundle.splits["train"].frames[result.indices]
    return session.task.metric_targets(result.targets), outputs, session.recipe.evaluate.threshold, frames


def _save_epoch(session: Session, state: TrainState, run: RunDir, is_best: bool, val: dict) -> None:
    payload = checkpoint_payload(session, state)
    if state.epoch == 1:
        save_predictions(run.prediction("val_epoch_001"), val)
    if is_best:
        save_checkpoint(run.checkpoint("best"), payload)
        save_predictions(run.prediction("val_best"), val)
    every = session.recipe.train.save_every
    if every and state.epoch % every == 0:
        save_checkpoint(run.checkpoint(str(state.epoch)), payload)
    save_checkpoint(run.checkpoint("last"), payload)
