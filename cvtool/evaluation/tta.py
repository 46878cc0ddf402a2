"""Test-time augmentation: N stochastic passes of the recipe's `tta.transforms` (default: the
geometric part of `augment`; pixel transforms such as GaussianBlur or CLAHE work there too, per
image), aggregated by the Task (majority vote or mean probability; keypoints: median or mean of
the coordinates mapped back to the original frame).

Each batch is decoded once and augmented per pass, so the cost is about N plain passes.
Pass p of sample i is seeded from (seed, p, i) like SampleDataset seeds (epoch, index): the
result does not depend on the batch size, and the caller's torch RNG is left untouched.
"""

from __future__ import annotations

import time
from collections.abc import Callable, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import TYPE_CHECKING, Any

import numpy as np

from cvtool.data.batch_augment import BatchAugment
from cvtool.data.loaders import Normalize, sample_seed
from cvtool.data.transforms import (
    apply_with_points,
    build_pipeline,
    geometric_part,
    invert_points,
    mirrored,
    swap_pairs,
)
from cvtool.engine.accel import select_device
from cvtool.engine.inference import eval_batch_size
from cvtool.errors import CvtoolError
from cvtool.evaluation.evaluate import (
    check_split,
    default_threshold,
    evaluate_split,
    load_splits,
    model_device,
    require_split,
)
from cvtool.recipe.schema import Recipe
from cvtool.runs.model import load_model
from cvtool.tasks import higher_is_better

if TYPE_CHECKING:
    import torch

    from cvtool.data.cache import DecodedSplit
    from cvtool.runs.model import LoadedModel

AGGREGATES = ("vote", "mean")


@dataclass
class TTAComparison:
    split: str
    passes: int
    aggregate: str
    plain: dict[str, float]
    tta: dict[str, float]
    gain: dict[str, float]
    outputs: np.ndarray  # aggregated TTA outputs in split order
    seconds: tuple[float, float]  # plain, TTA


def tta_transforms(recipe: Recipe) -> list[dict[str, Any]]:
    """The recipe's tta.transforms, or the geometric part of its train augmentations."""

    return list(recipe.tta.transforms) if recipe.tta.transforms is not None else geometric_part(recipe.augment)


def check_options(passes: int, aggregate: str) -> None:
    if passes < 1:
        raise CvtoolError(f"--passes: needs at least 1 pass, got {passes}")
    if aggregate not in AGGREGATES:
        raise CvtoolError(f"--aggregate: unknown mode '{aggregate}' (use {', '.join(AGGREGATES)})")


def _augment_images(pipeline: Any, batch: torch.Tensor, seeds: Sequence[int],
                    device: Any = "cpu") -> tuple[torch.Tensor, None]:
    """Each image through the pipeline under its own seed. Flips and affines run batched on
    `device` (`BatchAugment`; on the CPU the same result per image as the loop below), with the
    parameters drawn on the CPU."""
    import torch

    if BatchAugment.supports(pipeline):
        batched = BatchAugment(pipeline)
        return batched.apply(batch.to(device), batched.draw(seeds, *batch.shape[-2:])).contiguous(), None
    images = []
    for image, image_seed in zip(batch, seeds, strict=True):
        torch.default_generator.manual_seed(image_seed)  # CPU stream only: transforms draw from it
        images.append(pipeline(image).contiguous())
    return torch.stack(images), None


def _augment_points(pipeline: Any, batch: torch.Tensor, seeds: Sequence[int],
                    device: Any = "cpu") -> tuple[torch.Tensor, list[np.ndarray]]:
    """Each image through the pipeline under its own seed, with the affine map that moved its
    pixels (`restore_points` moves the predicted points back through it)."""
    import torch

    size = batch.shape[-1]
    images, affines = [], []
    for image, image_seed in zip(batch, seeds, strict=True):
        torch.default_generator.manual_seed(image_seed)  # CPU stream only: transforms draw from it
        image, _, affine = apply_with_points(pipeline, image, np.zeros((0, 2), np.float32), size)
        images.append(image.contiguous())
        affines.append(affine)
    return torch.stack(images), affines


def restore_points(outputs: np.ndarray, affines: Sequence[np.ndarray], out_size: int, size: int,
                   flip_pairs: Sequence[Sequence[int]]) -> np.ndarray:
    """Normalized coordinates predicted on transformed images -> the original frame: through
    each image's inverse affine map, with left/right pairs swapped back when it was mirrored."""

    pixels = (outputs.reshape(len(outputs), -1, 2).astype(np.float64) + 1.0) / 2.0 * out_size
    restored = np.empty_like(pixels)
    for i, affine in enumerate(affines):
        back = invert_points(pixels[i], affine)
        restored[i] = swap_pairs(back, [tuple(p) for p in flip_pairs]) if mirrored(affine) and flip_pairs else back
    return (restored / size * 2.0 - 1.0).reshape(len(outputs), -1).astype(np.float32)


def tta_outputs(loaded: LoadedModel, images: np.ndarray | DecodedSplit, passes: int, aggregate: str = "vote",
                seed: int = 0, transforms: Sequence[dict[str, Any]] | None = None,
                batch_size: int | None = None, progress: Callable[[int], None] | None = None) -> np.ndarray:
    """Aggregated TTA outputs (activated; keypoints normalized to [-1, 1] of the model frame).

    `images`: N x H x W x C uint8 at the checkpoint's image size (or a DecodedSplit).
    `transforms`: None -> the recipe's TTA transforms; [] -> none (one pass = plain inference).
    `progress(n)` is called after each pass over n images."""
    import torch

    check_options(passes, aggregate)
    array = getattr(images, "images", images)
    task, meta = loaded.task, loaded.meta
    pipeline = build_pipeline(tta_transforms(loaded.recipe) if transforms is None else transforms, "tta.transforms")
    device = model_device(loaded)
    normalize = Normalize(meta.mean, meta.std, meta.image_size).to(device)
    batch_size = batch_size or eval_batch_size(loaded.recipe.data)
    augment = task.augment_with(image_only=_augment_images, with_points=_augment_points)
    threshold = default_threshold(loaded)
    loaded.model.eval()
    chunks = []
    with torch.random.fork_rng(devices=[]), torch.no_grad():
        for start in range(0, len(array), batch_size):
            batch = torch.from_numpy(np.array(array[start:start + batch_size])).permute(0, 3, 1, 2).contiguous()
            stack = []
            for p in range(passes):
                x, affines = batch, None
                if pipeline is not None:
                    seeds = [sample_seed(seed, p, start + i) for i in range(len(batch))]  # a pass seeds like an epoch
                    x, affines = augment(pipeline, batch, seeds, device)
                logits = loaded(normalize(x.to(device))).cpu().numpy()
                out = task.activate(logits)
                if affines is not None:
                    out = restore_points(out, affines, x.shape[-1], batch.shape[-1], meta.flip_pairs or [])
                stack.append(out)
                if progress is not None:
                    progress(len(batch))
            chunks.append(task.aggregate(np.stack(stack), aggregate, threshold).astype(np.float32))
    return np.concatenate(chunks) if chunks else np.zeros((0, meta.num_outputs), np.float32)


def compare_tta(target: str | Path, split: str = "test", passes: int | None = None, aggregate: str | None = None,
                seed: int = 0, which: str = "best", data_root: str | Path | None = None,
                no_transforms: bool = False, progress: bool = False) -> TTAComparison:
    """`cvtool tta`: plain and TTA metrics of a checkpoint on one labelled split."""

    check_split(split)
    loaded = load_model(target, which, select_device("auto"))
    passes = passes if passes is not None else loaded.recipe.tta.passes
    aggregate = aggregate or loaded.recipe.tta.aggregate
    check_options(passes, aggregate)
    bundle = load_splits(loaded, (split,), data_root, progress)
    require_split(bundle, split)
    start = time.perf_counter()
    plain = evaluate_split(loaded, split, bundle=bundle)
    middle = time.perf_counter()
    decoded = bundle.splits[split]
    outputs = _with_bar(progress, passes * len(decoded), f"TTA x{passes}", lambda advance: tta_outputs(
        loaded, decoded, passes, aggregate, seed, [] if no_transforms else None, progress=advance))
    seconds = (middle - start, time.perf_counter() - middle)
    metrics = loaded.task.metrics(plain.targets, outputs, plain.threshold, plain.sizes)
    # an improvement is a positive gain whichever way the metric points (rmse falling is a gain)
    gain = {k: (metrics[k] - plain.metrics[k]) * (1.0 if higher_is_better(k) else -1.0)
            for k in metrics if k in plain.metrics}
    return TTAComparison(split, passes, aggregate, plain.metrics, metrics, gain, outputs, seconds)


def _with_bar(show: bool, total: int, label: str, work: Callable[[Callable[[int], None] | None], Any]) -> Any:
    if not show:
        return work(None)
    from rich.progress import Progress

    with Progress(transient=True) as bar:
        task = bar.add_task(label, total=total)
        return work(lambda n: bar.advance(task, n))
