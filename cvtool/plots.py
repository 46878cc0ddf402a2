"""Matplotlib figures shared by train, evaluate and report (Agg backend, PNG files)."""

from __future__ import annotations

import math
from collections.abc import Sequence
from pathlib import Path

import numpy as np

from cvtool.fileio import atomic_open


def smooth_curve(values: list[float], weight: float) -> list[float]:
    """A curve smoothed as TensorBoard does: a debiased exponential moving average of the values
    (0.6 is its default weight). Not engine/ema.py, which averages model weights."""
    smoothed, last, count = [], 0.0, 0
    for value in values:
        if not math.isfinite(value):
            smoothed.append(value)
            continue
        count += 1
        last = last * weight + (1 - weight) * value
        smoothed.append(last / (1 - weight**count) if weight > 0 else value)
    return smoothed


def _plt():
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    return plt


def warm_up() -> None:
    """Import matplotlib and draw one empty figure (its font cache and Agg renderer), ahead of the
    figures that count."""
    plt = _plt()
    fig, _ = plt.subplots()
    fig.canvas.draw()
    plt.close(fig)


def save(fig, path: Path) -> Path:
    with atomic_open(path, "wb") as handle:
        fig.savefig(handle, format="png", dpi=110, bbox_inches="tight")
    _plt().close(fig)
    return path


def curves(series: dict[str, tuple[Sequence[float], Sequence[float]]], title: str, ylabel: str,
           path: Path, smoothing: float | None = None, logy: bool = False) -> Path:
    """Lines per label (x, y); with `smoothing`, raw lines faint and the EMA on top."""
    plt = _plt()
    fig, ax = plt.subplots(figsize=(6.4, 4))
    for label, (x, y) in series.items():
        if smoothing:
            line, = ax.plot(x, y, alpha=0.3)
            ax.plot(x, smooth_curve(list(y), smoothing), color=line.get_color(), label=f"{label} (smoothed {smoothing})")
        else:
            ax.plot(x, y, label=label)
    ax.set_xlabel("epoch")
    ax.set_ylabel(ylabel)
    ax.set_title(title)
    if logy:
        ax.set_yscale("log")
    ax.grid(alpha=0.3)
    ax.legend(fontsize=7)
    return save(fig, path)


def confusion(matrix: np.ndarray, class_names: Sequence[str], title: str, path: Path,
              normalize: bool = False) -> Path:
    plt = _plt()
    data = matrix.astype(np.float64)
    if normalize:
        data = data / np.maximum(data.sum(axis=1, keepdims=True), 1)
    n = len(class_names)
    # names are drawn up to 40 classes, and the figure grows for them; beyond, one image of n x n
    # cells is as legible at 10 inches (11 px a cell at 100 classes) and 9x cheaper to render than at 30
    size = 4 + n * 0.35 if n <= 40 else 10.0
    fig, ax = plt.subplots(figsize=(size, size * 0.85))
    image = ax.imshow(data, cmap="Blues")
    fig.colorbar(image, ax=ax, fraction=0.046)
    if n <= 40:
        ax.set_xticks(range(n), list(class_names), rotation=90, fontsize=7)
        ax.set_yticks(range(n), list(class_names), fontsize=7)
        if n <= 15:
            for (i, j), value in np.ndenumerate(data):
                ax.text(j, i, f"{value:.2f}" if normalize else f"{int(value)}", ha="center", va="center",
                        fontsize=7, color="white" if value > data.max() / 2 else "black")
    ax.set_xlabel("predicted")
    ax.set_ylabel("true")
    ax.set_title(title)
    return save(fig, path)


def roc(curves_by_label: dict[str, tuple[np.ndarray, np.ndarray, float]], title: str, path: Path) -> Path:
    """ROC curves: label -> (fpr, tpr, auc)."""
    plt = _plt()
    fig, ax = plt.subplots(figsize=(5.5, 5))
    for label, (fpr, tpr, auc) in curves_by_label.items():
        ax.plot(fpr, tpr, label=f"{label} (AUC {auc:.3f})")
    ax.plot([0, 1], [0, 1], "k--", alpha=0.4)
    ax.set_xlabel("false positive rate")
    ax.set_ylabel("true positive rate")
    ax.set_title(title)
    ax.legend(fontsize=6, loc="lower right")
    return save(fig, path)


def roc_curves(targets: np.ndarray, scores: np.ndarray, names: Sequence[str]) -> dict[str, tuple]:
    """Per-column ROC data for binary (one column) or multi-label outputs (sklearn)."""
    from sklearn.metrics import roc_auc_score, roc_curve

    truth = targets.reshape(len(targets), -1)
    prob = scores.reshape(len(scores), -1)
    result = {}
    for column in range(prob.shape[1]):
        if len(np.unique(truth[:, column])) < 2:
            continue
        fpr, tpr, _ = roc_curve(truth[:, column], prob[:, column])
        result[names[column]] = (fpr, tpr, float(roc_auc_score(truth[:, column], prob[:, column])))
    return result


def confusion_matrix(targets: np.ndarray, outputs: np.ndarray, classes: int, threshold: float = 0.5) -> np.ndarray:
    """The confusion matrix (rows: true class, columns: predicted; sklearn's layout) of multiclass
    (argmax) or binary (score > threshold) outputs; counted with numpy, which spares the plotting
    process scikit-learn's import."""
    predicted = (outputs.reshape(-1) > threshold).astype(np.int64) if outputs.shape[1] == 1 else outputs.argmax(axis=1)
    truth = targets.reshape(-1).astype(np.int64)
    return np.bincount(truth * classes + predicted, minlength=classes * classes).reshape(classes, classes)


def keypoint_grid(panels: Sequence[tuple[np.ndarray, np.ndarray, np.ndarray, str]], title: str,
                  path: Path, columns: int = 4) -> Path:
    """Images with true (o) and predicted (x) points: panels of (H x W x C image,
    true N x 2, predicted N x 2, caption); points in continuous pixel coordinates."""
    plt = _plt()
    rows = max(1, -(-len(panels) // columns))
    fig, axes = plt.subplots(rows, columns, figsize=(3 * columns, 3 * rows), squeeze=False)
    for ax in axes.ravel():
        ax.axis("off")
    for ax, (image, truth, predicted, caption) in zip(axes.ravel(), panels, strict=False):
        height, width = image.shape[:2]
        ax.imshow(image, extent=(0, width, height, 0), interpolation="nearest")
        for (tx, ty), (px, py) in zip(truth, predicted, strict=True):
            ax.plot([tx, px], [ty, py], color="yellow", linewidth=0.8)
        ax.scatter(truth[:, 0], truth[:, 1], s=40, facecolors="none", edgecolors="lime", linewidths=1.5)
        ax.scatter(predicted[:, 0], predicted[:, 1], s=40, marker="x", color="red", linewidths=1.5)
        ax.set_xlim(0, width)
        ax.set_ylim(height, 0)
        ax.set_title(caption, fontsize=7)
    fig.suptitle(title, fontsize=9)
    return save(fig, path)


def reliability(curves: dict[str, tuple[np.ndarray, np.ndarray, np.ndarray]], axes: Sequence[str], title: str,
                path: Path) -> Path:
    """Reliability diagram: per curve label, (mean confidence, observed frequency, count) per
    bin; points of empty bins are left out, the diagonal is perfect calibration."""
    plt = _plt()
    fig, ax = plt.subplots(figsize=(5.5, 5))
    ax.plot([0, 1], [0, 1], "k--", alpha=0.4, label="perfectly calibrated")
    for label, (mean, observed, counts) in curves.items():
        kept = counts > 0
        ax.plot(mean[kept], observed[kept], marker="o", markersize=3, label=label)
    ax.set_xlim(0, 1)
    ax.set_ylim(0, 1)
    ax.set_xlabel(axes[0])
    ax.set_ylabel(axes[1])
    ax.set_title(title, fontsize=9)
    ax.grid(alpha=0.3)
    ax.legend(fontsize=7, loc="upper left")
    return save(fig, path)


def image_grid(panels: Sequence[tuple[np.ndarray, str]], title: str, path: Path, columns: int = 4) -> Path:
    """RGB images with a caption each (e.g. Grad-CAM overlays of a run's most confident errors)."""
    plt = _plt()
    rows = max(1, -(-len(panels) // columns))
    fig, axes = plt.subplots(rows, columns, figsize=(2.6 * columns, 2.9 * rows), squeeze=False)
    for ax in axes.ravel():
        ax.axis("off")
    for ax, (image, caption) in zip(axes.ravel(), panels, strict=False):
        ax.imshow(image)
        ax.set_title(caption, fontsize=7)
    fig.suptitle(title, fontsize=9)
    return save(fig, path)
