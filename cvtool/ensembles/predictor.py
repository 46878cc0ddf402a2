"""Ensembles: the (weighted) mean of several models' activated outputs.

Members are run dirs, checkpoints, .onnx files or fold sets (each fold a member). They must agree
on task, classes / target columns, image size and channels. The mean is taken over probabilities
(softmax / sigmoid) or keypoint coordinates, then turned back into logits by the inverse of the
task's activation (`log` for softmax, `logit` for sigmoid), so an ensemble is a Predictor like any
other: decoding, thresholds and submissions stay the Task's. Torch-free (the .onnx path).
"""

from __future__ import annotations

from collections.abc import Callable, Sequence

import numpy as np

from cvtool.ensembles.members import check_agreement, ensemble_card, normalized_weights
from cvtool.errors import CvtoolError
from cvtool.tasks import get_task
from cvtool.tasks.base import sigmoid, softmax

EPS = 1e-7  # probabilities are clipped to [EPS, 1 - EPS] before the inverse activation


def _logit(p: np.ndarray) -> np.ndarray:
    p = np.clip(p, EPS, 1.0 - EPS)
    return np.log(p) - np.log1p(-p)


# activation -> (forward, inverse), in float64
ACTIVATIONS: dict[str, tuple[Callable[[np.ndarray], np.ndarray], Callable[[np.ndarray], np.ndarray]]] = {
    "softmax": (softmax, lambda p: np.log(np.clip(p, 1e-30, None))),
    "sigmoid": (sigmoid, _logit),
    "identity": (lambda x: x, lambda x: x),
}


class EnsemblePredictor:
    """Several predictors -> logits of their weighted mean output (see the module docstring)."""

    def __init__(self, members: Sequence, weights: Sequence[float] | None = None,
                 thresholds: list[float] | None = None) -> None:
        if not members:
            raise CvtoolError("ensemble: no models")
        self.members = list(members)
        check_agreement([m.card for m in self.members])
        self.weights = normalized_weights(weights, len(self.members))
        self.card = ensemble_card([m.card for m in self.members], thresholds,
                                  f"ensemble of {len(self.members)}: {', '.join(m.card.source for m in self.members)}")
        self.forward, self.inverse = ACTIVATIONS[get_task(self.card.task).activation]

    def mean(self, outputs: Sequence[np.ndarray]) -> np.ndarray:
        """Weighted mean of activated outputs (float64)."""
        return np.einsum("m,m...->...", self.weights, np.stack([np.asarray(o, np.float64) for o in outputs]))

    def __call__(self, images: np.ndarray) -> np.ndarray:
        activated = [self.forward(np.asarray(m(images), np.float64)) for m in self.members]
        return self.inverse(self.mean(activated))

    def tta(self, images: np.ndarray, passes: int, seed: int, batch_size: int,
            progress: Callable[[int], None] | None) -> np.ndarray:
        """TTA per member (each with its own recipe's transforms), then the weighted mean."""
        missing = [m.card.source for m in self.members if not hasattr(m, "tta")]
        if missing:
            raise CvtoolError(f"--tta needs PyTorch members (run dirs or .pt); {missing[0]} is an .onnx file")
        # the first member drives the progress bar: the total counts images x passes once
        outputs = [m.tta(images, passes, seed, batch_size, progress if i == 0 else None)
                   for i, m in enumerate(self.members)]
        return self.mean(outputs).astype(np.float32)

    def describe(self) -> str:
        return f"ensemble of {len(self.members)} (weights {', '.join(f'{w:.3g}' for w in self.weights)}): " + \
            "; ".join(m.describe() for m in self.members)
