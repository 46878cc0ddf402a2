"""`cvtool bench`: the performance figures that matter to a user, each with its target.

- train: a recipe's real training loop (build_session, train_dataset, make_loader, train_one_epoch)
  against the pure-compute ceiling, the same loop fed one fixed in-memory batch.
- predict (bench/predict.py): onnxruntime vs torch eager, files -> CSV vs the bare session,
  TTA with N passes vs N plain passes.
- startup (bench/startup.py): `cvtool --help` wall time; does `cvtool predict` on an .onnx import
  torch; `cvtool train` from its start to the first step (fresh and cached) and from the last step
  to its exit.

Speeds are measured here and printed; tests only check that the figures are produced.
"""

from __future__ import annotations

import statistics
from collections.abc import Iterable
from dataclasses import replace
from typing import Any

from cvtool.bench.report import BenchReport, Figure
from cvtool.bench.steps import StepClock, ceiling_batch, on_cpu
from cvtool.data.device import augment_on_device
from cvtool.data.loaders import EpochSampler
from cvtool.data.pipeline import train_dataset
from cvtool.data.resident import is_resident, training_loader
from cvtool.engine.cpu import with_cpu_runtime
from cvtool.engine.loop import train_one_epoch
from cvtool.errors import CvtoolError
from cvtool.recipe.schema import Recipe
from cvtool.runs.step import build_session, build_step

# ---- training ------------------------------------------------------------------------------

@with_cpu_runtime
def bench_train(recipe: Recipe, *, steps: int = 10, warmup: int = 2, rounds: int = 5,
                target: float = 0.95) -> BenchReport:
    """Images/s of training steps through the recipe's real loader, and of the same loop fed one
    fixed in-memory batch (the compute ceiling; on CUDA a random batch already on the device, its
    augmentation still applied there). Rounds alternate the two, each block starting from the same
    weights; the best block of each is kept (other load only ever slows a block). CUDA: also the
    peak GPU memory."""
    import torch

    if steps < 1 or warmup < 1 or rounds < 1:
        raise CvtoolError("--steps, --warmup and --rounds need at least 1")
    if not 0 < target <= 1:  # a ratio of two throughputs; nan would pass or miss every comparison silently
        raise CvtoolError(f"--target {target}: a ratio above 0 and at most 1")
    session = build_session(recipe, quiet=True)
    defer = augment_on_device(session.device, recipe.data.num_workers, recipe.data.on_device)
    train_set = train_dataset(session.bundle, session.task, recipe.augment, recipe.seed, recipe.data.flip_pairs,
                              defer_augment=defer)
    train_set.split.complete()  # steady state: every image decoded (a run decodes during its first epoch)
    batch = recipe.data.batch_size
    sampler = EpochSampler(len(train_set), recipe.seed, True)
    loader = training_loader(train_set, batch, sampler, recipe.data.num_workers, session.device,
                             recipe.data.on_device, drop_last=True)
    resident = is_resident(loader)  # data.on_device (`--set data.on_device=true|false` picks the path)
    if len(loader) <= warmup:
        raise CvtoolError(f"bench train: {len(loader)} full batches of {batch} per epoch; "
                          f"--warmup {warmup} leaves none to time")
    notes = []
    if warmup + steps > len(loader):
        notes.append(f"--steps {steps} cut to {len(loader) - warmup}: one epoch has {len(loader)} batches")
        steps = len(loader) - warmup
    timed = session.recipe.train.model_copy(update={"max_batches": warmup + steps})
    session = replace(session, recipe=session.recipe.model_copy(update={"train": timed}))
    step = build_step(session, steps=len(loader), batch=batch,
                      augment=train_set.batched if train_set.defer_augment else None)
    cuda = session.device.type == "cuda"
    if cuda:  # GPU only
        torch.cuda.reset_peak_memory_stats(session.device)
    real, ceiling = _time_blocks(step, loader, sampler, steps, warmup, rounds)
    paired = statistics.median(r / c for r, c in zip(real, ceiling, strict=True))
    size = f"{recipe.data.image_size} px" + (f" (decoded at {recipe.data.decode_size})"
                                             if recipe.data.cached_size != recipe.data.image_size else "")
    notes.append(f"{recipe.name}: {recipe.model.arch} at {size}, batch {batch}, precision "
                 f"{str(step.dtype or torch.float32).removeprefix('torch.')}, "
                 f"compiled {'yes' if step.forward is not step.model else 'no'}, "
                 f"{len(recipe.augment)} augmentations, {len(train_set)} train images, device {session.device}, "
                 f"torch threads {torch.get_num_threads()}, data.num_workers {recipe.data.num_workers}")
    notes.insert(0, "data path: " + ("the training split kept on the device (data.on_device), batches gathered there"
                                     if resident else f"DataLoader ({recipe.data.num_workers} workers) + DeviceFeeder"))
    notes.append(f"{rounds} rounds of {steps} timed steps (after {warmup}) per source; best block kept; "
                 f"median of the per-round ratios {paired:.3f}")
    notes.append(f"per round, loader: {', '.join(f'{v:.0f}' for v in real)} images/s; "
                 f"ceiling: {', '.join(f'{v:.0f}' for v in ceiling)} images/s")
    figures = [
        Figure("real loader", max(real), unit="images/s"),
        Figure(f"compute ceiling ({'device-resident random batch' if cuda else 'one fixed batch'})", max(ceiling),
               unit="images/s"),
        Figure("real loader / ceiling", max(real) / max(ceiling), target, unit="x"),
        Figure("device-resident training split", resident),
    ]
    if cuda:  # GPU only
        figures.append(Figure("peak GPU memory", torch.cuda.max_memory_allocated(session.device) / 2**30,
                              unit="GiB"))
    return BenchReport(f"bench train {recipe.name}", figures, notes)


def _time_blocks(step: Any, loader: Any, sampler: Any, steps: int, warmup: int,
                 rounds: int) -> tuple[list[float], list[float]]:
    """Images/s per round through `loader` and on its first batch repeated, in blocks of
    warmup + steps calls of train_one_epoch, each from the same weights and optimizer state."""
    import torch

    fixed = ceiling_batch(step, next(iter(loader)))
    # the starting point in host memory: a copy on the GPU would count in the peak memory
    start = on_cpu((step.module.state_dict(), step.optimizer.state_dict()))
    cuda = step.device.type == "cuda"

    def timed(source: Iterable, epoch: int) -> float:
        step.module.load_state_dict(start[0])
        step.optimizer.load_state_dict(start[1])
        clock = StepClock(torch.cuda.synchronize if cuda else None, (warmup, warmup + steps))
        train_one_epoch(step, source, epoch, progress=clock)
        return steps * len(fixed[0]) / (clock.times[warmup + steps] - clock.times[warmup])

    real, ceiling = [], []
    for epoch in range(1, rounds + 1):
        sampler.set_epoch(epoch)
        blocks = [(ceiling, [fixed] * (warmup + steps)), (real, loader)]
        for results, source in blocks if epoch % 2 else blocks[::-1]:
            results.append(timed(source, epoch))
    return real, ceiling
