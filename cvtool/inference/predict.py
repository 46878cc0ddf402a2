"""`cvtool predict`: a submission CSV from an .onnx file (onnxruntime) or a checkpoint (PyTorch).

Both paths decode with `images.decode` at the model's image size and normalize with
`images.normalize_batch`, and the Task turns outputs into cells, so an export and its
checkpoint write the same CSV. The .onnx path never imports torch (nor does this module).
"""

from __future__ import annotations

import os
from collections.abc import Callable, Iterator, Sequence
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass, field, replace
from pathlib import Path
from typing import Protocol

import numpy as np

from cvtool.data.images import decode, normalize_batch
from cvtool.errors import BadImageError, CvtoolError
from cvtool.fileio import same_path, write_csv
from cvtool.inference.submission import (
    ImageInput,
    check_out,
    class_labels,
    parse_columns,
    read_images,
    submission_header,
)
from cvtool.model_card import ModelCard, card_from_checkpoint
from cvtool.runs.outputs import check_file
from cvtool.tasks import get_task
from cvtool.tasks.frame import frame_boxes

BAD_IMAGE_POLICIES = ("fail", "skip")
TTA_CHUNK = 2048  # images per TTA call; chunk k uses seed k, so results do not depend on --batch-size
Progress = Callable[[int, int], None]  # (images just done, total) -> None


class Predictor(Protocol):
    """uint8 N x H x W x C images at `card.input_size` -> raw outputs (N x num_outputs)."""

    card: ModelCard

    def __call__(self, images: np.ndarray) -> np.ndarray: ...

    def describe(self) -> str: ...


class CheckpointPredictor:
    """A run dir / checkpoint in PyTorch on the CPU; also runs the recipe's TTA."""

    def __init__(self, target: str | Path, which: str = "best") -> None:
        from cvtool.runs.model import load_model  # torch: only for checkpoints, never for .onnx

        self.loaded = load_model(target, which, "cpu")
        self.card = card_from_checkpoint(self.loaded.meta, self.loaded.recipe,
                                         f"{self.loaded.path} (epoch {self.loaded.epoch})")

    def __call__(self, images: np.ndarray) -> np.ndarray:
        import torch

        x = torch.from_numpy(normalize_batch(images, self.card.mean, self.card.std))
        if self.card.input_size != self.card.image_size:  # decoded at data.decode_size, as in training
            from cvtool.data.loaders import resize

            x = resize(x, self.card.image_size)
        with torch.inference_mode():
            return self.loaded(x).numpy()

    def tta(self, images: np.ndarray, passes: int, seed: int, batch_size: int,
            progress: Callable[[int], None] | None) -> np.ndarray:
        """Activated outputs aggregated over `passes` passes of the recipe's TTA transforms."""
        from cvtool.evaluation.tta import tta_outputs  # torch: checkpoint TTA only

        return tta_outputs(self.loaded, images, passes, self.loaded.recipe.tta.aggregate, seed=seed,
                           batch_size=batch_size, progress=progress)

    def describe(self) -> str:
        return f"{self.card.source} (PyTorch, cpu)"


def open_predictor(model: str | Path | Sequence[str | Path], which: str = "best",
                   weights: Sequence[float] | None = None) -> Predictor:
    """An .onnx file -> onnxruntime (torch is not imported); anything else -> a checkpoint;
    several models or a fold set -> their ensemble (cvtool.ensembles.predictor)."""
    from cvtool.ensembles.members import fold_set_thresholds, member_paths
    from cvtool.ensembles.predictor import EnsemblePredictor

    paths = member_paths(model)
    if len(paths) > 1 or weights:
        return EnsemblePredictor([open_predictor(p, which) for p in paths], weights, fold_set_thresholds(model))
    model = paths[0]
    if Path(model).suffix.lower() == ".onnx":
        from cvtool.inference.onnx_runtime import OnnxPredictor  # onnxruntime loads only when used

        return OnnxPredictor(model)
    return CheckpointPredictor(model, which)


@dataclass
class PredictResult:
    out: Path
    header: list[str]
    rows: int
    model: str
    skipped: list[tuple[str, str]] = field(default_factory=list)  # (image, reason)
    cut_off: int = 0  # keypoints predicted outside the model frame (data.resize crop); written as predicted


def predict(model: str | Path | Sequence[str | Path], images: str | Path, out: str | Path, *, which: str = "best",
            batch_size: int = 64, tta: int = 0, columns: str | Sequence[str] | None = None, probs: bool = False,
            on_bad_image: str = "fail", image_column: str | None = None, images_dir: str | Path | None = None,
            progress: Progress | None = None, label_style: str | None = None,
            weights: Sequence[float] | None = None) -> PredictResult:
    """Predict every image of a folder / CSV and write the task's submission CSV atomically;
    several models (or a fold set) predict as their `weights`-weighted mean."""
    _check_options(batch_size, tta, on_bad_image)
    check_out(out)
    models = [model] if isinstance(model, str | Path) else list(model)
    check_file("--out", Path(out), {"IMAGES": images, "--images-dir": images_dir, **{f"MODEL {m}": m for m in models}},
               purpose="predict")
    predictor = open_predictor(model, which, weights)
    card, task = predictor.card, get_task(predictor.card.task)
    if probs and (problem := task.check_probabilities()):
        raise CvtoolError(f"--probs: {problem}")
    if tta and not hasattr(predictor, "tta"):
        raise CvtoolError("--tta needs the PyTorch model (run dir or .pt): TTA applies the recipe's torch "
                          "transforms; an .onnx file predicts without TTA")
    inputs = read_images(images, image_column, images_dir, card.image_extension, card.image_column, card.images_dir)
    if any(item.path.name == Path(out).name and same_path(item.path, out) for item in inputs.items):
        raise CvtoolError(f"--out {out}: is one of the images to predict; choose another path")
    labels = replace(card.labels(), class_names=class_labels(card.class_names, card.class_ids, label_style))
    rename = parse_columns(columns) if isinstance(columns, str) or columns is None else list(columns)
    header = submission_header(inputs.column, task.header(labels, probs), rename)
    kept, outputs, sizes, skipped = _run(predictor, inputs.items, batch_size, tta, on_bad_image, progress)
    if not kept:
        raise CvtoolError(f"{images}: no readable images ({len(skipped)} skipped)")
    frames = frame_boxes(sizes, card.resize)
    cells = task.rows(outputs, labels, probs, frames)
    write_csv(out, header, [[item.key, *row] for item, row in zip(kept, cells, strict=True)])
    cut_off = task.cut_off(outputs) if card.resize == "crop" else 0
    return PredictResult(Path(out), header, len(kept), predictor.describe(), skipped, cut_off)


def _check_options(batch_size: int, tta: int, on_bad_image: str) -> None:
    if on_bad_image not in BAD_IMAGE_POLICIES:
        raise CvtoolError(f"--on-bad-image: '{on_bad_image}' is not one of {', '.join(BAD_IMAGE_POLICIES)}")
    if batch_size < 1:
        raise CvtoolError(f"--batch-size: needs at least 1, got {batch_size}")
    if tta < 0:
        raise CvtoolError(f"--tta: number of passes must be 0 (off) or more, got {tta}")


def _run(predictor: Predictor, items: list[ImageInput], batch_size: int, tta: int, on_bad_image: str,
         progress: Progress | None) -> tuple[list[ImageInput], np.ndarray, np.ndarray, list[tuple[str, str]]]:
    """(kept inputs, activated outputs, original sizes, skipped) in input order."""
    task = get_task(predictor.card.task)
    kept: list[ImageInput] = []
    outputs, sizes, skipped = [], [], []
    total = len(items) * max(tta, 1)
    step = None if progress is None else (lambda n: progress(n, total))
    for index, (good, images, batch_sizes, bad) in enumerate(_decoded(items, predictor.card,
                                                                      TTA_CHUNK if tta else batch_size)):
        if bad and on_bad_image == "fail":
            raise BadImageError(*bad[0])
        skipped += bad
        if good and tta:
            outputs.append(predictor.tta(images, tta, index, batch_size, step))  # type: ignore[attr-defined]
        elif good:
            outputs.append(task.activate(predictor(images)))
        if step is not None:
            step(len(bad) * max(tta, 1) + (0 if tta else len(good)))
        kept += good
        sizes.append(batch_sizes)
    return (kept, np.concatenate(outputs) if outputs else np.zeros((0, 0), np.float32),
            np.concatenate(sizes) if sizes else np.zeros((0, 2), np.int64), skipped)


def _decoded(items: list[ImageInput], card: ModelCard, batch_size: int
             ) -> Iterator[tuple[list[ImageInput], np.ndarray, np.ndarray, list[tuple[str, str]]]]:
    """Batches of (readable inputs, uint8 N x S x S x C, original (w, h) sizes, [(path, reason)]).
    The pool decodes straight into the batch array, the next batch while the caller runs the
    model on this one."""
    shape = (card.input_size, card.input_size, card.channels)

    def work(out: np.ndarray, row: int, item: ImageInput) -> tuple[int, int] | BadImageError:
        try:
            out[row], size = decode(item.path, card.channels, card.input_size, card.resize)
        except BadImageError as exc:
            return exc
        return size

    def submit(pool: ThreadPoolExecutor, batch: list[ImageInput]) -> tuple[np.ndarray, list]:
        out = np.empty((len(batch), *shape), np.uint8)
        return out, [pool.submit(work, out, row, item) for row, item in enumerate(batch)]

    with ThreadPoolExecutor(min(4, os.cpu_count() or 1)) as pool:
        pending = submit(pool, items[:batch_size])
        for start in range(0, len(items), batch_size):
            batch, (images, futures) = items[start:start + batch_size], pending
            pending = submit(pool, items[start + batch_size:start + 2 * batch_size])
            results = [future.result() for future in futures]
            keep = [row for row, result in enumerate(results) if not isinstance(result, BadImageError)]
            bad = [(str(item.path), result.reason) for item, result in zip(batch, results, strict=True)
                   if isinstance(result, BadImageError)]
            if bad:
                images = images[keep]
            sizes = np.asarray([results[row] for row in keep], np.int64).reshape(-1, 2)
            yield [batch[row] for row in keep], images, sizes, bad


def describe_skipped(skipped: Sequence[tuple[str, str]], limit: int = 5) -> str:
    """'2 unreadable images skipped: a.png (empty file), b.png (...)'."""
    shown = ", ".join(f"{path} ({reason})" for path, reason in skipped[:limit])
    more = f" and {len(skipped) - limit} more" if len(skipped) > limit else ""
    return f"{len(skipped)} unreadable image{'s' if len(skipped) != 1 else ''} skipped: {shown}{more}"

