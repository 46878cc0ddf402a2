"""Building a run, each part by one function: the session (task, data, model card, device) and
the step (model, loss, optimizer, GradScaler, schedule, EMA, augmentation, mixing, compiled
forward). A phase change builds a new step from the old one; nothing is assigned afterwards."""

from __future__ import annotations

import random
import sys
from dataclasses import replace
from typing import TYPE_CHECKING, Any

import numpy as np
import torch

from cvtool.data.batch_mix import build_mixer
from cvtool.data.loaders import Normalize
from cvtool.data.pipeline import DataBundle, prepare_data
from cvtool.data.stats import pos_weight
from cvtool.engine.accel import (
    amp_dtype,
    compiled_forward,
    cuda_defaults,
    grad_scaler,
    select_device,
    wants_compile,
)
from cvtool.engine.checkpoint import restore_training
from cvtool.engine.ema import WeightEMA
from cvtool.engine.loop import Step
from cvtool.engine.optim import OPTIMIZERS, build_optimizer, optim_for_epoch, phase_start, retune
from cvtool.engine.schedule import LrSchedule, Span
from cvtool.errors import CvtoolError
from cvtool.model_card import ModelMeta
from cvtool.models import build_model, frozen_batchnorm_eval
from cvtool.models.pretrained import ensure_weights, record_weights
from cvtool.recipe.model_config import FreezeConfig
from cvtool.recipe.schema import LossConfig, Recipe
from cvtool.runs.normalization import normalization_line, normalization_source
from cvtool.runs.session import Session
from cvtool.tasks import Task, get_task, higher_is_better

if TYPE_CHECKING:
    from collections.abc import Callable

    from cvtool.data.batch_augment import BatchAugment
    from cvtool.engine.distributed import Dist


def seed_everything(seed: int) -> None:
    random.seed(seed)
    np.random.seed(seed % 2**32)
    torch.manual_seed(seed)


def build_session(recipe: Recipe, *, quiet: bool, dist: Dist | None = None, resume: bool = False) -> Session:
    """Task, decoded data, model card and device. A resumed run loads its weights from last.pt,
    so the pretrained ones are neither needed nor fetched (resuming works offline)."""
    seed_everything(recipe.seed + (dist.rank if dist else 0))
    task = get_task(recipe.task)
    lead = dist is None or dist.rank == 0
    if not resume:
        ensure_weights(recipe.model)  # a missing download fails before any image is decoded
    normalization, origin = normalization_source(recipe)
    bundle = prepare_data(recipe.data, task, recipe.seed, progress=not quiet and lead, normalization=normalization)
    if not quiet and lead:
        print(normalization_line(origin, bundle.mean, bundle.std), file=sys.stderr)
    info, cfg = bundle.info, recipe.data
    if problem := task.check_flip_pairs(list(cfg.flip_pairs), list(info.target_names)):
        raise CvtoolError(f"data.flip_pairs: {problem}")
    weights, positive = _loss_weights(recipe.loss, task, bundle)
    meta = ModelMeta(task.name, list(info.class_names), list(info.target_names), bundle.mean, bundle.std,
                     cfg.image_size, cfg.channels, info.num_outputs, None, [list(p) for p in cfg.flip_pairs] or None,
                     class_weights=None if weights is None else [float(w) for w in weights], pos_weight=positive,
                     class_ids=list(info.class_ids) or None, resize=cfg.resize,
                     decode_size=cfg.decode_size if cfg.cached_size != cfg.image_size else None)
    device = dist.device if dist else select_device(recipe.train.device)
    return Session(recipe, task, bundle, meta, device, recipe.train.monitor or task.default_monitor, dist)


def build_step(session: Session, *, steps: int, batch: int, augment: BatchAugment | None = None,
               payload: dict[str, Any] | None = None, extend: bool = False,
               stop: Callable[[], bool] | None = None) -> Step:
    """The whole step for the epoch after `payload`'s (the first without one): the model (its
    weights from `payload` when resuming), loss, optimizer and schedule of the phase in force,
    GradScaler for fp16, EMA, MixUp/CutMix and the compiled forward. `steps`: optimizer updates
    per epoch; `batch`: the training batch size (compiling traces that shape). `extend`: the
    resumed run trains on to more epochs than planned, its schedule restarted over the added ones."""
    recipe, device, meta, dist = session.recipe, session.device, session.meta, session.dist
    train, data = recipe.train, recipe.data
    cuda_defaults(device, train)
    module = build_model(recipe.model.model_copy(update={"pretrained": None}) if payload else recipe.model,
                         meta.num_outputs, data.channels, data.image_size)
    if payload:
        record_weights(module, None, payload.get("pretrained"))
    channels_last = device.type == "cuda" if train.channels_last == "auto" else bool(train.channels_last)
    module.to(device, memory_format=torch.channels_last if channels_last else torch.preserve_format)
    loss_fn = session.task.build_loss(recipe.loss, meta.class_weights, meta.pos_weight,
                                      image_size=data.image_size).to(device)
    # model.freeze sets requires_grad=False after wrapping: DDP must then expect gradient-less parameters
    model = dist.wrap(module, recipe.model.sync_batchnorm, find_unused=recipe.model.freeze is not None,
                      broadcast_buffers=train.ddp.broadcast_buffers, bucket_view=train.ddp.bucket_view) if dist \
        else module
    done = int(payload["epoch"]) if payload else 0
    optimizer = build_optimizer(module.parameters(), optim_for_epoch(recipe.optim, recipe.phases, max(done, 1)))
    dtype = amp_dtype(device, train.amp)
    scaler = grad_scaler(device, dtype)
    ema = WeightEMA(module, train.ema) if train.ema is not None else None
    if payload and extend:  # the optimizer back at the recipe's lr, a fresh schedule over the added epochs
        restore_training(payload, module=module, optimizer=optimizer, schedule=None, scaler=scaler, ema=ema)
        retune(optimizer, optim_for_epoch(recipe.optim, recipe.phases, done + 1))
        schedule = _schedule(session, optimizer, done + 1, steps, warmup=False)
    else:
        schedule = _schedule(session, optimizer, phase_start(recipe.phases, max(done, 1)), steps)
        if payload:
            restore_training(payload, module=module, optimizer=optimizer, schedule=schedule, scaler=scaler, ema=ema)
    shape = (batch, data.channels, data.image_size, data.image_size)
    forward = compiled_forward(model, shape, device, dtype, channels_last) if wants_compile(device, train.compile) \
        else None
    # `is None`, not `or`: a compiled module's truth value asks its model's len()
    return Step(model, module, model if forward is None else forward, Normalize(meta.mean, meta.std, data.image_size).to(device),
                loss_fn, optimizer, schedule, device, dtype, scaler, channels_last, ema, augment,
                build_mixer(recipe.augment_batch, recipe.seed, session.task, meta.num_outputs, dist.rank if dist else 0),
                train.accumulate, train.grad_clip, train.max_batches, _train_mode_for(recipe.model.freeze),
                stop or _never)


def phase_step(step: Step, session: Session, epoch: int, steps: int) -> Step:
    """The step of the phase starting at `epoch`: its optimizer (the same one retuned, keeping
    its state, or a new one when the phase switches optimizer) and a fresh schedule over the
    rest of the run, without warm-up."""
    cfg = optim_for_epoch(session.recipe.optim, session.recipe.phases, epoch)
    optimizer = step.optimizer
    if type(optimizer) is not OPTIMIZERS[cfg.name].opt_class:
        optimizer = build_optimizer(step.module.parameters(), cfg)
    else:
        retune(optimizer, cfg)
    return replace(step, optimizer=optimizer, schedule=_schedule(session, optimizer, epoch, steps, warmup=False))


def _schedule(session: Session, optimizer: torch.optim.Optimizer, first_epoch: int, steps: int,
              warmup: bool = True) -> LrSchedule:
    """The schedule from `first_epoch` to the end of the run; the recipe's warm-up only at the start."""
    cfg = session.recipe.schedule
    warmup_epochs = getattr(cfg, "warmup_epochs", 0) if warmup and first_epoch == 1 else 0
    span = Span(session.recipe.train.epochs - first_epoch + 1, steps, warmup_epochs)
    return LrSchedule(optimizer, cfg, span, "max" if higher_is_better(session.monitor) else "min")


def _train_mode(model: torch.nn.Module) -> None:
    """Training mode, with BatchNorm layers whose parameters are all frozen kept in eval mode."""
    model.train()
    frozen_batchnorm_eval(model)


def _all_train_mode(model: torch.nn.Module) -> None:
    """Training mode for every layer: frozen BatchNorm layers still update their running statistics."""
    model.train()


def _train_mode_for(freeze: FreezeConfig | None) -> Callable[[torch.nn.Module], None]:
    """`model.freeze.batchnorm`: eval keeps frozen BatchNorm layers in eval mode, train does not."""
    return _all_train_mode if freeze is not None and freeze.batchnorm == "train" else _train_mode


def _never() -> bool:
    return False


def _loss_weights(cfg: LossConfig, task: Task, bundle: DataBundle) -> tuple[np.ndarray | None, float | None]:
    """loss.class_weights and loss.pos_weight: auto, as computed on the training split."""
    targets = bundle.splits["train"].targets
    mode = getattr(cfg, "class_weights", "none")  # the loss.* keys of the chosen loss only
    weights = None
    if isinstance(mode, list):
        if len(mode) != bundle.info.num_outputs:
            raise CvtoolError(f"loss.class_weights: {len(mode)} weights for {bundle.info.num_outputs} classes")
        weights = np.asarray(mode, np.float32)
    elif mode != "none":
        weights = task.loss_class_weights(targets, bundle.info.num_outputs, mode)
    positive = pos_weight(targets) if getattr(cfg, "pos_weight", None) == "auto" else None
    return weights, positive
