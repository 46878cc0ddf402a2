"""`cvtool lr-find`: the learning-rate range test (Smith, 2017, "Cyclical Learning Rates for
Training Neural Networks", section 3.3) on a recipe's real data and model.

The lr grows exponentially from `start` to `end`, one optimizer step per batch (the training
loader is cycled when an epoch is shorter than `steps`). The loss is smoothed with a debiased
moving average (weight 0.98, as fastai's finder) and the test stops once it exceeds four times
its minimum: the lr has diverged. The suggestion is the lr of the steepest descent of the
smoothed loss against log(lr), before divergence. Nothing of the recipe, its data or a run is
written: only the plot and the curve as CSV.
"""

from __future__ import annotations

import math
from dataclasses import dataclass
from pathlib import Path

import numpy as np

from cvtool.data.loaders import EpochSampler, make_loader
from cvtool.data.pipeline import train_dataset
from cvtool.engine.accel import autocast
from cvtool.engine.cpu import with_cpu_runtime
from cvtool.engine.loop import update
from cvtool.errors import CvtoolError
from cvtool.fileio import refuse_inside, write_csv
from cvtool.recipe.schema import Recipe
from cvtool.runs.lock import hold_for_writing
from cvtool.runs.step import build_session, build_step

SMOOTHING = 0.98
DIVERGED = 4.0  # smoothed loss above this many times its minimum
SKIP_START, SKIP_END = 0.1, 0.05  # the steepest descent is searched inside these margins


@dataclass(frozen=True)
class RangeTest:
    lrs: list[float]
    losses: list[float]
    smoothed: list[float]
    suggestion: float
    diverged_at: float | None
    plot: Path
    table: Path


@with_cpu_runtime
def lr_find(recipe: Recipe, out: Path, start: float = 1e-7, end: float = 1.0, steps: int = 100) -> RangeTest:
    if not 0 < start < end < math.inf:  # float("1e400") is inf: an lr no optimizer can take
        raise CvtoolError(f"--start {start:g} / --end {end:g}: need 0 < start < end, both finite")
    if steps < 10:
        raise CvtoolError(f"--steps {steps}: the range test needs at least 10 steps")
    refuse_inside("--out", out, {"the data root (data.root)": recipe.data.root})  # lr_find.png would be read as data
    hold_for_writing([out], "lr-find")
    session = build_session(recipe, quiet=True)
    train_set = train_dataset(session.bundle, session.task, recipe.augment, recipe.seed, recipe.data.flip_pairs)
    sampler = EpochSampler(len(train_set), recipe.seed, True)
    loader = make_loader(train_set, recipe.data.batch_size, sampler, recipe.data.num_workers, session.device,
                         drop_last=len(sampler) > recipe.data.batch_size)
    lrs = [start * (end / start) ** (i / (steps - 1)) for i in range(steps)]
    step = build_step(session, steps=max(1, len(loader)), batch=min(recipe.data.batch_size, len(sampler)))
    losses = _run(step, loader, sampler, lrs)
    smoothed = _smooth(losses)
    stop = _divergence(smoothed)
    suggestion = _steepest(lrs[:stop], smoothed[:stop])
    table = out / "lr_find.csv"
    write_csv(table, ["lr", "loss", "smoothed"], [[lr, v, s] for lr, v, s in zip(lrs, losses, smoothed, strict=False)])
    plot = _plot(lrs[:len(losses)], losses, smoothed, suggestion, out / "lr_find.png")
    return RangeTest(lrs[:len(losses)], losses, smoothed, suggestion, lrs[stop] if stop < len(losses) else None,
                     plot, table)


def _run(step, loader, sampler, lrs: list[float]) -> list[float]:
    step.train_mode(step.model)
    losses: list[float] = []
    epoch, batches = 0, iter(())
    for lr in lrs:
        try:
            images, targets, _ = next(batches)
        except StopIteration:
            epoch += 1
            sampler.set_epoch(epoch)
            batches = iter(loader)
            images, targets, _ = next(batches)
        for group in step.optimizer.param_groups:
            group["lr"] = lr
        x, y = step.inputs(images), targets.to(step.device)
        if step.mix is not None:
            x, y, _ = step.mix(x, y, epoch, len(losses))
        with autocast(step.device, step.dtype):
            loss = step.loss_fn(step.forward(x).float(), y)
        value = float(loss.detach())
        if not math.isfinite(value):
            break
        (loss if step.scaler is None else step.scaler.scale(loss)).backward()
        update(step, epoch)  # the schedule's lr it sets is replaced by the next one of the test
        losses.append(value)
        if _divergence(_smooth(losses)) < len(losses):  # diverged: later steps only blow up
            break
    if len(losses) < 3:
        raise CvtoolError(f"lr-find: the loss was not finite from lr {lrs[len(losses)]:.2e} on; lower --start")
    return losses


def _smooth(losses: list[float]) -> list[float]:
    out, average = [], 0.0
    for i, value in enumerate(losses, 1):
        average = SMOOTHING * average + (1 - SMOOTHING) * value
        out.append(average / (1 - SMOOTHING**i))
    return out


def _divergence(smoothed: list[float]) -> int:
    """Index of the first point whose smoothed loss is DIVERGED x the running minimum (or the end)."""
    best = math.inf
    for i, value in enumerate(smoothed):
        best = min(best, value)
        if i > 0 and value > DIVERGED * best:
            return i
    return len(smoothed)


def _steepest(lrs: list[float], smoothed: list[float]) -> float:
    """The lr where the smoothed loss falls fastest against log10(lr)."""
    count = len(smoothed)
    low, high = int(count * SKIP_START), max(int(count * (1 - SKIP_END)), int(count * SKIP_START) + 2)
    window = slice(low, min(high, count)) if count - low >= 3 else slice(0, count)
    slopes = np.gradient(np.asarray(smoothed[window]), np.log10(np.asarray(lrs[window])))
    return float(lrs[window][int(np.argmin(slopes))])


def _plot(lrs: list[float], losses: list[float], smoothed: list[float], suggestion: float, path: Path) -> Path:
    from cvtool import plots

    plt = plots._plt()
    fig, ax = plt.subplots(figsize=(6.4, 4))
    ax.plot(lrs, losses, alpha=0.3, label="loss")
    ax.plot(lrs, smoothed, label=f"smoothed ({SMOOTHING})")
    ax.axvline(suggestion, color="red", linestyle="--", label=f"suggested lr {suggestion:.2e}")
    ax.set_xscale("log")
    ax.set_xlabel("learning rate (log scale)")
    ax.set_ylabel("training loss")
    ax.set_title("lr range test")
    top = min(max(smoothed), DIVERGED * min(smoothed))
    ax.set_ylim(min(min(losses), min(smoothed)) * 0.95, top * 1.05)
    ax.grid(alpha=0.3)
    ax.legend(fontsize=7)
    return plots.save(fig, path)
