"""An ensemble as one torch module, for `cvtool export FOLDSET --onnx` (`inference.export.export_ensemble`).

The module computes what `EnsemblePredictor` computes in numpy: each member's activation (softmax,
sigmoid, none), the weighted mean, and the inverse activation, so its output is still `logits`
and a client decodes it exactly like a single model's. The input is normalized with the first
member's mean/std; a member trained with other statistics re-normalizes inside the graph.
"""

from __future__ import annotations

from collections.abc import Sequence
from pathlib import Path

import torch
from torch import nn

from cvtool.ensembles.members import (
    check_agreement,
    ensemble_card,
    fold_set_thresholds,
    member_paths,
    normalized_weights,
)
from cvtool.ensembles.predictor import EPS
from cvtool.errors import CvtoolError
from cvtool.model_card import ModelCard, card_from_checkpoint
from cvtool.recipe.schema import Recipe
from cvtool.runs.model import LoadedModel, load_model
from cvtool.tasks import get_task

# activation -> (forward, inverse) on N x outputs tensors
TORCH_ACTIVATIONS = {
    "softmax": (lambda z: torch.softmax(z, dim=1), lambda p: torch.log(p.clamp_min(1e-30))),
    "sigmoid": (torch.sigmoid, lambda p: torch.log(p.clamp(EPS, 1 - EPS)) - torch.log(1 - p.clamp(EPS, 1 - EPS))),
    "identity": (lambda z: z, lambda p: p),
}


class EnsembleModule(nn.Module):
    """Normalized images -> logits of the weighted mean of the members' activated outputs."""

    def __init__(self, members: Sequence[nn.Module], cards: Sequence[ModelCard], weights: Sequence[float],
                 activation: str) -> None:
        super().__init__()
        self.members = nn.ModuleList(members)
        self.activation = activation
        first = cards[0]
        mean0, std0 = (torch.tensor(first.mean).view(1, -1, 1, 1), torch.tensor(first.std).view(1, -1, 1, 1))
        # x_i = (x * std0 + mean0 - mean_i) / std_i: the identity when the statistics agree
        scales = [std0 / torch.tensor(c.std).view(1, -1, 1, 1) for c in cards]
        shifts = [(mean0 - torch.tensor(c.mean).view(1, -1, 1, 1)) / torch.tensor(c.std).view(1, -1, 1, 1)
                  for c in cards]
        self.same = [bool(torch.equal(s, torch.ones_like(s)) and torch.equal(t, torch.zeros_like(t)))
                     for s, t in zip(scales, shifts, strict=True)]
        self.register_buffer("scales", torch.stack(scales).float())
        self.register_buffer("shifts", torch.stack(shifts).float())
        self.weights = [float(w) for w in weights]

    def forward(self, images: torch.Tensor) -> torch.Tensor:
        forward, inverse = TORCH_ACTIVATIONS[self.activation]
        total = None
        for i, member in enumerate(self.members):
            x = images if self.same[i] else images * self.scales[i] + self.shifts[i]
            part = forward(member(x).float()) * self.weights[i]
            total = part if total is None else total + part
        return inverse(total)


def load_members(models: str | Path | Sequence[str | Path], which: str) -> list[LoadedModel]:
    paths = member_paths(models)
    if any(Path(p).suffix.lower() == ".onnx" for p in paths):
        raise CvtoolError("export: ensemble members must be run dirs or checkpoints, not .onnx files")
    return [load_model(p, which, "cpu") for p in paths]


def ensemble_module(models: str | Path | Sequence[str | Path], which: str = "best",
                    weights: Sequence[float] | None = None) -> tuple[EnsembleModule, ModelCard, Recipe]:
    """A fold set (or several runs) loaded on the CPU as one module, with the ensemble's card and
    the first member's recipe (whose data the export's parity check reads)."""
    loaded = load_members(models, which)
    cards = [card_from_checkpoint(m.meta, m.recipe, f"{m.path} (epoch {m.epoch})") for m in loaded]
    check_agreement(cards)
    source = f"ensemble of {len(cards)}: {', '.join(c.source for c in cards)}"
    card = ensemble_card(cards, fold_set_thresholds(models), source)
    module = EnsembleModule([m.model for m in loaded], cards, normalized_weights(weights, len(cards)),
                            get_task(card.task).activation)
    return module, card, loaded[0].recipe
