"""The run: `fit` builds the step, loops over the epochs (train, validate, checkpoint) and
finishes the run. The step itself, from the batch to `backward()` and the update, is
`engine/loop.train_one_epoch`. Sweeps, folds and searches call `fit`."""

from __future__ import annotations

import math
import time
from collections.abc import Callable
from pathlib import Path
from typing import TYPE_CHECKING, Any

import torch
from rich.console import Console

from cvtool.data.device import augment_on_device
from cvtool.data.pipeline import eval_dataset, train_dataset
from cvtool.data.resident import training_loader
from cvtool.data.sampling import train_sampler
from cvtool.engine.checkpoint import (
    load_checkpoint,
    restore_rng,
    rng_state,
    save_checkpoint,
    training_payload,
)
from cvtool.engine.cpu import cpu_runtime
from cvtool.engine.inference import split_loader
from cvtool.engine.loop import Step, batch_sizes, train_one_epoch, updates_per_epoch
from cvtool.engine.runlog import RunLog
from cvtool.engine.schedule import current_lr
from cvtool.engine.state import TrainState
from cvtool.errors import CvtoolError
from cvtool.fileio import duplicate
from cvtool.models import set_trainable
from cvtool.models.pretrained import weights_record
from cvtool.recipe.schema import Recipe
from cvtool.runs import plotting
from cvtool.runs.artifacts import finish_run, record_sampling, save_predictions, split_metrics
from cvtool.runs.layout import RunDir
from cvtool.runs.loggers import open_loggers
from cvtool.runs.resume import carry_thresholds, check_resume, planned_epochs
from cvtool.runs.session import Session
from cvtool.runs.step import build_session, build_step, phase_step
from cvtool.tasks import higher_is_better

if TYPE_CHECKING:
    from cvtool.engine.distributed import Dist


def fit(recipe: Recipe, run_dir: Path | None, *, resume: bool = False, extend: bool = False, quiet: bool = False,
        stop: Callable[[], bool] | None = None, dist: Dist | None = None,
        on_epoch: Callable[[dict[str, float]], None] | None = None,
        started: Callable[[], Path] | None = None) -> dict[str, Any]:
    """Train `recipe` into `run_dir` (resume: from its last.pt); returns the summary.
    `on_epoch(row)` is called after each epoch is saved (a search prunes a trial by raising there).
    `started` is called once data, model and the first checkpoint are in place and returns where
    the run lives from then on (a new run is written beside an old one and swapped in: placement.py)."""
    run = RunDir(run_dir) if run_dir is not None else None
    payload = load_checkpoint(run.checkpoint("last")) if resume and run is not None else None
    if payload is not None:
        check_resume(recipe, payload, extend, run.path)
    with cpu_runtime():
        session = build_session(recipe, quiet=quiet, dist=dist, resume=payload is not None)
        train_set, sampler, loader = _training_data(session)
        sizes = batch_sizes(loader, recipe.train.max_batches)
        extend = payload is not None and planned_epochs(payload) != recipe.train.epochs
        step = build_step(session, steps=updates_per_epoch(len(sizes), recipe.train.accumulate), batch=sizes[0],
                          augment=train_set.batched if train_set.defer_augment else None, payload=payload,
                          extend=extend, stop=stop)
        state = TrainState.from_checkpoint(payload)
        if extend:
            state.bad_epochs = 0  # patience counts from the extension on
        if payload is not None:
            restore_rng(payload, dist.rank if dist else 0)
            session = carry_thresholds(session, run, payload)
        else:
            _save(session, step, state, run, best=None)
        if started is not None:
            run = RunDir(started())
        trackers = open_loggers(recipe, run.path, resume, state.history) if session.lead and run else None
        log = RunLog(quiet or not session.lead, loggers=trackers)
        val_set = eval_dataset(session.bundle, "val", session.task, recipe.seed)
        # once per run: rebuilt every epoch, its persistent workers would be forked anew each time
        val_loader = split_loader(val_set, recipe.data, session.device, session.dist)
        meter = session.task.train_meter(session.meta.num_outputs, recipe.evaluate.threshold,
                                         session.bundle.splits["train"].frames)
        filler = session.bundle.fill_behind()  # the images no batch has read yet, behind the training
        # the plots' process, started now at the lowest priority: its imports are done by the last epoch
        plotter = plotting.Plotter() if session.lead and run is not None and plotting.wanted() else None
        first_epoch = state.epoch + 1
        try:
            for epoch in range(state.epoch + 1, recipe.train.epochs + 1):
                if epoch > 1 and epoch in {phase.epoch for phase in recipe.phases}:
                    step = phase_step(step, session, epoch, updates_per_epoch(len(sizes), recipe.train.accumulate))
                set_trainable(step.module, recipe.model.freeze, epoch)
                sampler.set_epoch(epoch)
                lr, start = current_lr(step.optimizer), time.perf_counter()
                result = train_one_epoch(step, loader, epoch, meter, log.progress(epoch, recipe.train.epochs, len(sizes)))
                val, state.weights, both = _validate(session, step, val_set, val_loader, epoch)
                row = {"epoch": epoch, "lr": lr, "seconds": round(time.perf_counter() - start, 3),
                       "train/loss": result.loss, "val/loss": val["loss"],
                       **{f"train/{k}": v for k, v in result.metrics.items()},
                       **{f"val/{k}": v for k, v in val["metrics"].items()}, **both}
                _warn_undefined(session, row, state.history)
                if epoch == first_epoch:
                    filler.finish()  # every image decoded (and cached) after the first epoch; a bad one stops here
                is_best = _end_epoch(session, step, state, row)
                log.add(row, session.monitor, is_best, state.history, state.weights)
                _save(session, step, state, run, "best" if is_best else None, val)
                if session.lead and run is not None:
                    record_sampling(sampler, session, run.path, epoch)
                if on_epoch is not None:
                    on_epoch(row)
                if recipe.train.early_stop and state.bad_epochs >= recipe.train.early_stop.patience:
                    log.console.print(f"early stop: no {session.monitor} gain for {recipe.train.early_stop.patience} epochs")
                    break
            summary = finish_run(session, step, state, run.path if run else None, quiet, plotter) if session.lead else {}
            if trackers is not None:
                trackers.finish(summary)
        except BaseException as exc:
            log.close(exc)
            if isinstance(exc, torch.cuda.OutOfMemoryError):  # GPU only
                raise CvtoolError(f"CUDA out of memory with data.batch_size {recipe.data.batch_size}: lower it "
                                  "(or use train.accumulate to keep the effective batch)") from exc
            raise
        finally:
            filler.stop()
            if plotter is not None:
                plotter.wait()
        log.close()
    return summary


def _training_data(session: Session) -> tuple[Any, Any, Any]:
    """The training set, its sampler (this rank's shard) and the batches feeding the device: from
    the split kept on the device (`data.on_device`), else the DataLoader through DeviceFeeder."""
    recipe, dist = session.recipe, session.dist
    defer = augment_on_device(session.device, recipe.data.num_workers, recipe.data.on_device)
    train_set = train_dataset(session.bundle, session.task, recipe.augment, recipe.seed, recipe.data.flip_pairs,
                              defer_augment=defer)
    rank, world = (dist.rank, dist.world_size) if dist else (0, 1)
    sampler = train_sampler(recipe.data.sampler, session.task, len(train_set), session.bundle.splits["train"].targets,
                            session.bundle.info.num_outputs, recipe.seed, rank, world)
    batch = recipe.data.batch_size
    if session.lead and batch > len(sampler):
        where = "this rank's share of the training split" if dist else "the training split"
        Console(stderr=True, highlight=False).print(
            f"[yellow]cvtool: data.batch_size {batch} is larger than {where} ({len(sampler)} images): "
            f"each epoch is one batch of {len(sampler)}[/]", soft_wrap=True)
    loader = training_loader(train_set, batch, sampler, recipe.data.num_workers, session.device,
                             recipe.data.on_device, drop_last=len(sampler) % batch == 1)
    return train_set, sampler, loader


def _validate(session: Session, step: Step, val_set: Any, val_loader: Any,
              epoch: int) -> tuple[dict[str, Any], str | None, dict[str, float]]:
    """The epoch's validation: (the kept weights' result, which weights the epoch keeps, both sets'
    metrics as val_ema/... and val_raw/...). With EMA both the average and the raw weights are
    validated and the better by the monitored metric is kept (a tie keeps the average): early in
    a run, or with a slow decay, the average lags the raw weights. Under DDP the plain module on
    every rank (its shard; no wrapper, which would broadcast rank 0's BatchNorm statistics), with
    BatchNorm statistics averaged over the ranks first."""
    if session.dist is not None:
        session.dist.average_buffers(step.module)
        if step.ema is not None:
            session.dist.average_buffers(step.ema.module)
    evaluate = lambda model: split_metrics(session, step, val_set, "val", model=model,  # noqa: E731
                                           keep_outputs=session.lead, epoch=epoch, loader=val_loader)
    if step.ema is None:
        return evaluate(step.module), None, {}
    results = {"ema": evaluate(step.ema.module), "raw": evaluate(step.module)}
    kept = "raw" if _better(session.monitor, results["raw"], results["ema"]) else "ema"
    both = {f"val_{name}/{key}": value for name, result in results.items()
            for key, value in {"loss": result["loss"], **result["metrics"]}.items()}
    return results[kept], kept, both


def _better(monitor: str, result: dict[str, Any], other: dict[str, Any]) -> bool:
    """Whether `result` is strictly better than `other` by the monitored val metric (a metric
    undefined in one of them: the defined one is better; not a val metric: neither)."""
    if not monitor.startswith("val/"):
        return False
    name = monitor.removeprefix("val/")
    mine, theirs = ({"loss": r["loss"], **r["metrics"]}.get(name) for r in (result, other))
    if mine is None or theirs is None or not math.isfinite(mine):
        return False
    if not math.isfinite(theirs):
        return True
    return mine > theirs if higher_is_better(monitor) else mine < theirs


def _end_epoch(session: Session, step: Step, state: TrainState, row: dict[str, float]) -> bool:
    """Record the epoch's row; whether it is the best so far (`train.monitor`, ties to
    `train.monitor_tiebreak`). Plateau schedules hear the monitored value here."""
    train = session.recipe.train
    if session.monitor not in row:
        raise CvtoolError(f"train.monitor: {session.monitor} is not reported (have: "
                          f"{', '.join(k for k in row if k.startswith('val/'))})")
    value = row[session.monitor]
    step.schedule.step_epoch(value)
    tiebreak = None
    if train.monitor_tiebreak is not None:
        if train.monitor_tiebreak not in row:
            raise CvtoolError(f"train.monitor_tiebreak: {train.monitor_tiebreak} is not reported (have: "
                              f"{', '.join(k for k in row if k.startswith(('val/', 'train/')))})")
        tiebreak = (train.monitor_tiebreak, row[train.monitor_tiebreak], higher_is_better(train.monitor_tiebreak))
    min_delta = train.early_stop.min_delta if train.early_stop else 0.0
    fallback = ("val/loss", row["val/loss"], False) if "val/loss" in row else None  # an undefined monitor
    is_best = state.improved(value, higher_is_better(session.monitor), min_delta, tiebreak, fallback)
    state.bad_epochs = 0 if is_best else state.bad_epochs + 1
    if is_best:
        state.best_value, state.best_epoch, state.best_weights = value, int(row["epoch"]), state.weights
    state.epoch = int(row["epoch"])
    state.history.append(row)
    return is_best


def _warn_undefined(session: Session, row: dict[str, float], history: list[dict[str, float]]) -> None:
    """One line the first epoch a val metric is undefined (NaN: AUC on a val split of one class)."""
    if not session.lead:
        return
    for key, value in row.items():
        if key.startswith("val/") and not math.isfinite(value) and all(math.isfinite(r.get(key, 0.0)) for r in history):
            choice = "; the best epoch goes by val/loss while it is" if key == session.monitor else ""
            Console(stderr=True, highlight=False).print(
                f"[yellow]cvtool: {key} is undefined from epoch {int(row['epoch'])} on the val split (it lacks "
                f"what the metric needs, e.g. both classes for an AUC): null in summary.json{choice}[/]",
                soft_wrap=True)


def _save(session: Session, step: Step, state: TrainState, run: RunDir | None, best: str | None,
          val: dict[str, Any] | None = None) -> None:
    """last.pt (and best.pt, epoch_NNN.pt every `train.save_every`), with every rank's RNG state;
    the validation outputs behind the plots. Every rank takes part (the RNG states are gathered);
    rank 0 writes."""
    rngs = session.dist.gather_objects(rng_state()) if session.dist else [rng_state()]
    if not session.lead or run is None:
        return
    payload = training_payload(step, state, rngs, recipe=session.recipe.model_dump(mode="json"),
                               meta=session.meta.to_dict(), monitor=session.monitor,
                               pretrained=weights_record(step.module))  # where the run's weights started from
    if val is not None and state.epoch == 1:
        save_predictions(run.prediction("val_epoch_001"), val)
    # written once: best.pt and epoch_NNN.pt are the same bytes, linked (or copied) from last.pt
    save_checkpoint(run.checkpoint("last"), payload)
    if best is not None:
        duplicate(run.checkpoint("last"), run.checkpoint("best"))
        save_predictions(run.prediction("val_best"), val)
    every = session.recipe.train.save_every
    if val is not None and every and state.epoch % every == 0:
        duplicate(run.checkpoint("last"), run.checkpoint(str(state.epoch)))
