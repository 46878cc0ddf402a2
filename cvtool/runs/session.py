"""Building a run's live objects from its recipe: data, model, loss, optimizer and the stepper
(EMA, batch mixing and the CUDA defaults included)."""

from __future__ import annotations

import random
import sys
from dataclasses import replace
from typing import Any

import numpy as np
import torch

from cvtool.data.batch_mix import build_mixer
from cvtool.data.loaders import Normalize
from cvtool.data.pipeline import DataBundle, prepare_data
from cvtool.data.stats import class_weights, pos_weight
from cvtool.engine.accel import compile_model, cuda_defaults
from cvtool.engine.ema import WeightEMA
from cvtool.engine.loop import Stepper, amp_dtype, select_device
from cvtool.engine.optim import build_optimizer
from cvtool.engine.state import Session
from cvtool.errors import CvtoolError
from cvtool.model_card import ModelMeta
from cvtool.models import build_model, frozen_batchnorm_eval
from cvtool.models.pretrained import ensure_weights
from cvtool.recipe.schema import Recipe
from cvtool.runs.normalization import normalization_line, normalization_source
from cvtool.tasks import Task, get_task


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
                     cfg.image_size, cfg.channels, info.num_outputs, None, [list(p) for p in cfg.flip_pairs] or None,
                     resize=cfg.resize, decode_size=cfg.decode_size if cfg.cached_size != cfg.image_size else None)
    device = dist.device if dist else select_device(recipe.train.device)
    cuda_defaults(device, recipe.train)
    model = build_model(model_cfg, info.num_outputs, cfg.channels, cfg.image_size)
    channels_last = device.type == "cuda" if recipe.train.channels_last == "auto" else bool(recipe.train.channels_last)
    model.to(device, memory_format=torch.channels_last if channels_last else torch.preserve_format)
    weights, positive = _loss_weights(recipe, task, bundle, class_weights, pos_weight)
    meta = replace(meta, class_weights=None if weights is None else [float(w) for w in weights],
                   pos_weight=positive, class_ids=list(info.class_ids) or None)  # evaluate rebuilds this loss
    loss_fn = task.build_loss(recipe.loss, weights, positive, image_size=cfg.image_size).to(device)
    # model.freeze sets requires_grad=False after wrapping: DDP must then expect gradient-less parameters
    net = dist.wrap(model, recipe.model.sync_batchnorm, find_unused=recipe.model.freeze is not None) if dist else model
    optimizer = build_optimizer(model.parameters(), recipe.optim)
    monitor = recipe.train.monitor or task.default_monitor
    dtype = amp_dtype(device, recipe.train.amp)
    scaler = torch.amp.GradScaler("cuda") if dtype == torch.float16 else None  # GPU only
    step = Stepper(net, Normalize(bundle.mean, bundle.std, cfg.image_size).to(device), loss_fn, optimizer, None,
                   device, recipe.train, dtype, channels_last, scaler, after_train_mode=frozen_batchnorm_eval,
                   mix=build_mixer(recipe.augment_batch, recipe.seed, task, info.num_outputs, dist.rank if dist else 0),
                   compiled=compile_model(net, device, recipe.train.compile))
    ema = WeightEMA(model, recipe.train.ema) if recipe.train.ema is not None else None
    if ema is not None:
        step.after_step = lambda epoch: ema.update(model, epoch)
    return Session(recipe, task, bundle, meta, device, step, monitor, dist, ema)


def _loss_weights(recipe: Recipe, task: Task, bundle: DataBundle, class_weights, pos_weight):
    targets = bundle.splits["train"].targets
    mode = getattr(recipe.loss, "class_weights", "none")  # a key of the losses that take weights only
    weights = None
    if isinstance(mode, list):
        if len(mode) != bundle.info.num_outputs:
            raise CvtoolError(f"loss.class_weights: {len(mode)} weights for {bundle.info.num_outputs} classes")
        weights = np.asarray(mode, np.float32)
    elif mode != "none" and task.class_weighted:
        counts = task.class_counts(targets, bundle.info.num_outputs)
        weights = class_weights(counts, len(targets), mode)
    positive = pos_weight(targets) if getattr(recipe.loss, "pos_weight", None) == "auto" else None
    return weights, positive
