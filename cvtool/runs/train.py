"""`cvtool train`: fit one recipe into a run directory (sweeps live in sweep.py)."""

from __future__ import annotations

import random
import sys
import time
from collections.abc import Callable
from pathlib import Path
from typing import Any

import numpy as np
import torch

from cvtool.data.batch_mix import build_mixer
from cvtool.data.loaders import Normalize, make_loader
from cvtool.data.pipeline import DataBundle, eval_dataset, prepare_data, train_dataset
from cvtool.data.sampling import train_sampler
from cvtool.data.stats import class_weights, pos_weight
from cvtool.engine.checkpoint import load_checkpoint, rng_state, save_checkpoint, set_rng_state
from cvtool.engine.ema import WeightEMA
from cvtool.engine.loop import (
    Stepper,
    amp_dtype,
    optimizer_steps,
    select_device,
    train_one_epoch,
    with_cpu_runtime,
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
from cvtool.model_card import ModelMeta
from cvtool.models import build_model, frozen_batchnorm_eval, set_trainable
from cvtool.models.pretrained import ensure_weights, record_weights, weights_record
from cvtool.recipe.schema import Recipe
from cvtool.runs.artifacts import finish_run, record_sampling, save_predictions, split_metrics
from cvtool.runs.layout import RunDir
from cvtool.runs.normalization import normalization_line, normalization_source
from cvtool.tasks import Task, get_task, higher_is_better


def seed_everything(seed: int) -> None:
    random.seed(seed)
    np.random.seed(seed % 2**32)
    torch.manual_seed(seed)


def build_session(recipe: Recipe, quiet: bool, dist: Any = None, resume: bool = False) -> Session:
    """The run's live objects. A resumed run loads its weights from last.pt, so the pretrained
    ones are neither needed nor fetched (resuming works offline without the weights cache)."""
    seed_everything(recipe.seed + (dist.rank if dist else 0))
    task = get_task(recipe.task)
    model_cfg = recipe.model.model_copy(update={"pretrained": None}) if resume else recipe.model
    ensure_weights(model_cfg)  # a missing download fails before any image is decoded
    normalization, origin = normalization_source(recipe)
    bundle = prepare_data(recipe, progress=not quiet and not (dist and dist.rank), normalization=normalization)
    if not quiet and not (dist and dist.rank):
        print(normalization_line(origin, bundle.mean, bundle.std), file=sys.stderr)
    info, cfg = bundle.info, recipe.data
    meta = ModelMeta(task.name, list(info.class_names), list(info.target_names), bundle.mean, bundle.std,
                     cfg.image_size, cfg.channels, info.num_outputs, None, [list(p) for p in cfg.flip_pairs] or None)
    device = dist.device if dist else select_device(recipe.train.device)
    model = build_model(model_cfg, info.num_outputs, cfg.channels, cfg.image_size)
    channels_last = device.type == "cuda" if recipe.train.channels_last == "auto" else bool(recipe.train.channels_last)
    model.to(device, memory_format=torch.channels_last if channels_last else torch.preserve_format)
    weights, positive = _loss_weights(recipe, task, bundle, class_weights, pos_weight)
    loss_fn = task.build_loss(recipe.loss, weights, positive).to(device)
    # model.freeze sets requires_grad=False after wrapping: DDP must then expect gradient-less parameters
    net = dist.wrap(model, recipe.model.sync_batchnorm, find_unused=recipe.model.freeze is not None) if dist else model
    if recipe.train.compile:
        net = torch.compile(net)
    optimizer = build_optimizer(model.parameters(), recipe.optim)
    monitor = recipe.train.monitor or task.default_monitor
    dtype = amp_dtype(device, recipe.train.amp)
    scaler = torch.amp.GradScaler("cuda") if dtype == torch.float16 else None  # GPU only
    step = Stepper(net, Normalize(bundle.mean, bundle.std).to(device), loss_fn, optimizer, None, device,
                   recipe.train, dtype, channels_last, scaler, after_train_mode=frozen_batchnorm_eval,
                   mix=build_mixer(recipe.augment_batch, recipe.seed, task, info.num_outputs, dist.rank if dist else 0))
    ema = WeightEMA(model, recipe.train.ema) if recipe.train.ema is not None else None
    if ema is not None:
        step.after_step = lambda epoch: ema.update(model, epoch)
    return Session(recipe, task, bundle, meta, device, step, monitor, dist, ema)


def _loss_weights(recipe: Recipe, task: Task, bundle: DataBundle, class_weights, pos_weight):
    targets = bundle.splits["train"].targets
    mode = recipe.loss.class_weights
    weights = None
    if isinstance(mode, list):
        if len(mode) != bundle.info.num_outputs:
            raise CvtoolError(f"loss.class_weights: {len(mode)} weights for {bundle.info.num_outputs} classes")
        weights = np.asarray(mode, np.float32)
    elif mode != "none" and task.class_weighted:
        counts = task.class_counts(targets, bundle.info.num_outputs)
        weights = class_weights(counts, len(targets), mode)
    positive = pos_weight(targets) if recipe.loss.pos_weight == "auto" else None
    return weights, positive


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
        stop: Any = None, dist: Any = None, started: Callable[[], Path] | None = None) -> dict[str, Any]:
    """Train `recipe`, writing the run into `run_dir`; returns the summary. `started` is called
    once data, model and the first checkpoint are in place and returns where the run lives from
    then on (a new run is written beside an old one and swapped in: see runs/placement.py)."""
    session = build_session(recipe, quiet, dist, resume)
    lead = dist is None or dist.rank == 0
    train_set = train_dataset(session.bundle, recipe, session.task)
    rank, world = (dist.rank, dist.world_size) if dist else (0, 1)
    sampler = train_sampler(recipe.data.sampler, session.task, len(train_set), session.bundle.splits["train"].targets,
                            session.bundle.info.num_outputs, recipe.seed, rank, world)
    batch = recipe.data.batch_size
    loader = make_loader(train_set, batch, sampler, recipe.data.num_workers, session.device,
                         drop_last=len(sampler) % batch == 1)
    steps = optimizer_steps(min(len(loader), recipe.train.max_batches or len(loader)), recipe.train.accumulate)
    session.step.schedule = make_schedule(session, 1, steps)
    if stop is not None:
        session.step.stop = stop
    run = RunDir(run_dir) if run_dir is not None else None
    if resume:
        state = restore(session, load_checkpoint(run.checkpoint("last")), steps)
    else:
        state = TrainState()
        if lead and run is not None:
            save_checkpoint(run.checkpoint("last"), checkpoint_payload(session, state))
    if started is not None:
        run_dir = started()
        run = RunDir(run_dir)
    files = run if lead else None
    log = RunLog(files and files.metrics, quiet or not lead, history=state.history,
                 tensorboard=files and files.tensorboard)
    try:
        _epochs(session, state, loader, sampler, log, run, steps)
    finally:
        log.close()
    if not lead:
        return {}
    return finish_run(session, state, run_dir, quiet)


def _epochs(session: Session, state: TrainState, loader, sampler, log: RunLog, run: RunDir | None,
            steps: int) -> None:
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
    sizes = session.bundle.splits["train"].sizes[result.indices]
    return session.task.metric_targets(result.targets), outputs, session.recipe.evaluate.threshold, sizes


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
