"""A trained model read back from a run directory or a checkpoint file, ready for inference."""

from __future__ import annotations

import sys
from collections.abc import Sequence
from dataclasses import dataclass, replace
from pathlib import Path

import torch

from cvtool.engine.accel import amp_dtype, autocast
from cvtool.engine.checkpoint import load_checkpoint
from cvtool.errors import CvtoolError
from cvtool.model_card import ModelMeta
from cvtool.models import build_model
from cvtool.models.calibration import TemperatureScaled, unwrap_temperature
from cvtool.recipe.load import recipe_from_dict
from cvtool.recipe.schema import Recipe
from cvtool.runs.layout import resolve_checkpoint
from cvtool.tasks import Task, get_task


@dataclass
class LoadedModel:
    model: torch.nn.Module
    recipe: Recipe
    task: Task
    meta: ModelMeta
    path: Path
    epoch: int
    # the precision and layout training validated with on this device (`train.amp`, channels_last),
    # so that `evaluate` on a GPU reproduces summary.json's validation numbers
    dtype: torch.dtype | None = None
    channels_last: bool = False

    def __call__(self, x: torch.Tensor) -> torch.Tensor:
        """Float32 logits of a normalized batch, under the run's autocast."""
        if self.channels_last:
            x = x.contiguous(memory_format=torch.channels_last)
        with autocast(x.device, self.dtype):
            return self.model(x).float()


def load_model(target: str | Path, which: str = "best", device: str | torch.device = "cpu",
               calibrated: bool = True) -> LoadedModel:
    """The model of a run dir or checkpoint, in eval mode, with its recipe and metadata; a stored
    calibration temperature divides its logits unless `calibrated` is False."""

    path = resolve_checkpoint(target, which)
    payload = load_checkpoint(path)
    recipe = recipe_from_dict(payload["recipe"], f"{path} (recipe)")
    meta = ModelMeta(**payload["meta"])
    epoch = int(payload.get("epoch", 0))
    if meta.thresholds is not None and meta.thresholds_epoch not in (None, epoch):
        print(f"cvtool: {path} (epoch {epoch}) holds decision thresholds tuned on epoch {meta.thresholds_epoch}'s "
              f"weights (stale after a resumed run): rerun cvtool evaluate --tune-thresholds", file=sys.stderr)
    cfg = recipe.model.model_copy(update={"pretrained": None})
    model = build_model(cfg, meta.num_outputs, meta.channels, meta.image_size)
    try:
        model.load_state_dict(payload["model"])
    except RuntimeError as exc:
        raise CvtoolError(f"{path}: weights do not fit {recipe.model.arch}: {str(exc).splitlines()[0]}") from None
    if calibrated and meta.temperature:
        model = TemperatureScaled(model, meta.temperature)
    elif meta.temperature:
        meta = replace(meta, temperature=None)
    device = torch.device(device)
    channels_last = device.type == "cuda" if recipe.train.channels_last == "auto" else bool(recipe.train.channels_last)
    model.to(device, memory_format=torch.channels_last if channels_last else torch.preserve_format).eval()
    return LoadedModel(model, recipe, get_task(meta.task), meta, path, epoch,
                       amp_dtype(device, recipe.train.amp), channels_last)


def set_temperature(loaded: LoadedModel, temperature: Sequence[float]) -> None:
    """Calibrate a loaded model in place (the network itself is kept, any old temperature dropped)."""
    network = unwrap_temperature(loaded.model)
    device = next(network.parameters()).device
    loaded.model = TemperatureScaled(network, temperature).to(device).eval()
    loaded.meta = replace(loaded.meta, temperature=[float(t) for t in temperature])
