"""One inference path over a split, shared by training validation, `cvtool evaluate` and the
plain pass of `cvtool tta`: sampler, loader, model, gather over ranks, sort by index, activate
and score with the task's metrics."""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any

import numpy as np
import torch

from cvtool.data.loaders import EpochSampler, SampleDataset, make_loader
from cvtool.engine.loop import NonFiniteOutputs, run_inference
from cvtool.recipe.schema import DataConfig
from cvtool.tasks import Task


def eval_batch_size(data: DataConfig) -> int:
    """Inference keeps no gradients, so twice the training batch fits unless set."""
    return data.eval_batch_size or data.batch_size * 2


@dataclass(frozen=True)
class SplitPrediction:
    outputs: np.ndarray  # activated, in sample order
    targets: np.ndarray | None  # as the metrics want them; None for a split without labels
    indices: np.ndarray
    sizes: np.ndarray  # original (width, height) per sample
    frames: np.ndarray  # the model frame per sample (tasks.frame): what the task's metrics take
    loss: float | None
    metrics: dict[str, float]


def split_loader(dataset: SampleDataset, data: DataConfig, device: torch.device,
                 dist: Any = None) -> torch.utils.data.DataLoader:
    """The loader of one split for inference: this rank's shard (no padding), in sample order.
    Training builds its validation loader once, so its persistent workers serve every epoch."""
    rank, world = (dist.rank, dist.world_size) if dist else (0, 1)
    sampler = EpochSampler(len(dataset), 0, False, rank, world, pad=False)
    return make_loader(dataset, eval_batch_size(data), sampler, data.num_workers, device)


def predict_split(model: torch.nn.Module, normalize: torch.nn.Module, dataset: SampleDataset, task: Task,
                  data: DataConfig, device: torch.device, *, threshold: Any = 0.5, loss_fn: Any = None,
                  dtype: torch.dtype | None = None, channels_last: bool = False,
                  dist: Any = None, loader: Any = None) -> SplitPrediction:
    """The model on every sample of `dataset` (each rank its shard, gathered), scored when labelled.
    `loader`: `split_loader(dataset, ...)` built earlier (training validates every epoch), else built here."""
    if loader is None:
        loader = split_loader(dataset, data, device, dist)
    labelled = dataset.split.targets is not None
    logits, targets, indices, loss = run_inference(model, normalize, loader, device, dtype,
                                                   loss_fn if labelled else None, channels_last)
    if dist:
        logits, targets, indices, loss = dist.gather(logits, targets, indices, loss)
    if not (np.isfinite(logits).all() and (loss is None or np.isfinite(loss))):  # scikit-learn would fail on them
        raise NonFiniteOutputs(dataset.split.name, None)
    order = np.argsort(indices, kind="stable")
    indices = indices[order]
    outputs = task.activate(logits[order])
    sizes, frames = dataset.split.sizes_of(indices), dataset.split.frames[indices]
    if not labelled:
        return SplitPrediction(outputs, None, indices, sizes, frames, None, {})
    targets = task.metric_targets(targets[order])
    return SplitPrediction(outputs, targets, indices, sizes, frames, loss,
                           task.metrics(targets, outputs, threshold, frames))
