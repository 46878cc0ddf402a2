"""Temperature scaling and calibration error, per kind of output (mixed into the Task classes).

Softmax outputs (multiclass) share one temperature, `softmax(logits / T)` (Guo et al., 2017);
sigmoid outputs (binary, multi-label) get one temperature per output column, each fitted on its
own binary problem. Temperatures minimize the negative log-likelihood (scipy's bounded Brent
search over log T). The logits are recovered from the stored float32 probabilities (`log p`
for softmax, `logit p` for sigmoid), so out-of-fold CSVs calibrate as well as live models.
Torch-free.
"""

from __future__ import annotations

from collections.abc import Callable

import numpy as np

from cvtool.tasks.base import sigmoid, softmax

BINS = 15  # equal-width confidence bins of the expected calibration error, as in Guo et al.
LOG_T = (-4.0, 4.0)  # temperatures searched in [e^-4, e^4]
# float32 probabilities: below 1 the next value is 1 - 6e-8, so a sigmoid logit stops at about 16.6
TOP = float(np.nextafter(np.float32(1.0), np.float32(0.0)))


def reliability(confidence: np.ndarray, correct: np.ndarray, bins: int = BINS
                ) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    """Per equal-width bin: mean confidence, observed frequency, count (empty bins: 0, 0, 0)."""
    index = np.clip(np.ceil(np.asarray(confidence, np.float64) * bins).astype(np.int64) - 1, 0, bins - 1)
    counts = np.bincount(index, minlength=bins)
    mean = np.bincount(index, confidence, bins) / np.maximum(counts, 1)
    observed = np.bincount(index, np.asarray(correct, np.float64), bins) / np.maximum(counts, 1)
    return mean, observed, counts


def expected_calibration_error(confidence: np.ndarray, correct: np.ndarray, bins: int = BINS) -> float:
    """sum over bins of |confidence - frequency| weighted by the bin's share of the samples."""
    mean, observed, counts = reliability(confidence, correct, bins)
    return float((counts * np.abs(mean - observed)).sum() / max(int(counts.sum()), 1))


def _best_temperature(nll: Callable[[float], float]) -> float:
    from scipy.optimize import minimize_scalar

    found = minimize_scalar(nll, bounds=LOG_T, method="bounded", options={"xatol": 1e-5})
    return float(np.exp(found.x))


def _softmax_nll(logits: np.ndarray, labels: np.ndarray) -> float:
    top = logits.max(axis=1, keepdims=True)
    log_norm = np.log(np.exp(logits - top).sum(axis=1)) + top[:, 0]
    return float((log_norm - logits[np.arange(len(labels)), labels]).mean())


def _sigmoid_nll(logits: np.ndarray, truth: np.ndarray) -> float:
    # log(1 + e^z) - y z, computed without overflow
    return float((np.logaddexp(0.0, logits) - truth * logits).mean())


class SoftmaxCalibration:
    """One temperature for all classes; the top-label confidence is what the ECE bins."""

    calibrates = True
    reliability_axes = ("confidence of the predicted class", "accuracy")

    def logits_of(self, outputs: np.ndarray) -> np.ndarray:
        return np.log(np.clip(np.asarray(outputs, np.float64), 1e-45, None))

    def fit_temperature(self, targets: np.ndarray, outputs: np.ndarray) -> np.ndarray:
        logits, labels = self.logits_of(outputs), np.asarray(targets, np.int64).reshape(-1)
        return np.asarray([_best_temperature(lambda log_t: _softmax_nll(logits / np.exp(log_t), labels))])

    def calibrate(self, outputs: np.ndarray, temperature: np.ndarray) -> np.ndarray:
        return softmax(self.logits_of(outputs) / np.asarray(temperature, np.float64).reshape(1, -1)).astype(np.float32)

    def confidence(self, targets: np.ndarray, outputs: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
        """(confidence, correct) per sample: the top probability and whether its class is right."""
        return outputs.max(axis=1).astype(np.float64), outputs.argmax(axis=1) == np.asarray(targets).reshape(-1)

    def confident_errors(self, targets: np.ndarray, outputs: np.ndarray, threshold: object = 0.5) -> np.ndarray:
        """Wrongly predicted samples, the highest probability of the predicted class first."""
        confidence, correct = self.confidence(targets, outputs)
        wrong = np.flatnonzero(~correct)
        return wrong[np.argsort(-confidence[wrong], kind="stable")]

    def calibration_scores(self, targets: np.ndarray, outputs: np.ndarray) -> dict[str, float]:
        """ECE (top label, 15 bins) and the mean negative log-likelihood of the true class."""
        labels = np.asarray(targets, np.int64).reshape(-1)
        return {"ece": expected_calibration_error(*self.confidence(targets, outputs)),
                "nll": _softmax_nll(self.logits_of(outputs), labels)}


class SigmoidCalibration:
    """One temperature per output column; every (image, column) probability is binned."""

    calibrates = True
    reliability_axes = ("predicted probability", "fraction of positives")

    def logits_of(self, outputs: np.ndarray) -> np.ndarray:
        p = np.clip(np.asarray(outputs, np.float64), 1e-45, TOP)
        return np.log(p) - np.log1p(-p)

    def fit_temperature(self, targets: np.ndarray, outputs: np.ndarray) -> np.ndarray:
        logits = self.logits_of(outputs).reshape(len(outputs), -1)
        truth = np.asarray(targets, np.float64).reshape(len(outputs), -1)
        found = []
        for column in range(logits.shape[1]):
            z, y = logits[:, column], truth[:, column]
            both = 0 < y.sum() < len(y)  # a column of one class has no calibration to learn
            found.append(_best_temperature(lambda log_t, z=z, y=y: _sigmoid_nll(z / np.exp(log_t), y)) if both else 1.0)
        return np.asarray(found)

    def calibrate(self, outputs: np.ndarray, temperature: np.ndarray) -> np.ndarray:
        scaled = self.logits_of(outputs).reshape(len(outputs), -1) / np.asarray(temperature, np.float64).reshape(1, -1)
        return sigmoid(scaled).astype(np.float32).reshape(np.shape(outputs))

    def confidence(self, targets: np.ndarray, outputs: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
        """(predicted probability, is positive) for every (image, column)."""
        return np.asarray(outputs, np.float64).ravel(), np.asarray(targets, np.float64).reshape(-1) > 0.5

    def confident_errors(self, targets: np.ndarray, outputs: np.ndarray, threshold: object = 0.5) -> np.ndarray:
        """Samples with a wrong decision, the one farthest on the wrong side of its threshold first."""
        scores = np.asarray(outputs, np.float64).reshape(len(outputs), -1)
        cut = np.asarray(threshold, np.float64).reshape(1, -1)
        wrong = (scores > cut) != (np.asarray(targets).reshape(scores.shape) > 0.5)
        strength = np.where(wrong, np.abs(scores - cut), -1.0).max(axis=1)
        rows = np.flatnonzero(strength >= 0)
        return rows[np.argsort(-strength[rows], kind="stable")]

    def calibration_scores(self, targets: np.ndarray, outputs: np.ndarray) -> dict[str, float]:
        """ECE over every probability (15 bins) and the mean binary cross-entropy."""
        truth = np.asarray(targets, np.float64).reshape(len(outputs), -1)
        return {"ece": expected_calibration_error(*self.confidence(targets, outputs)),
                "nll": _sigmoid_nll(self.logits_of(outputs).reshape(truth.shape), truth)}
