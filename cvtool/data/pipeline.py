"""From a recipe's data section to decoded splits and torch datasets."""

from __future__ import annotations

from collections.abc import Iterable, Sequence
from dataclasses import dataclass

from cvtool.data.cache import DecodedSplit, decode_split
from cvtool.data.folds import fold_view
from cvtool.data.formats import DatasetInfo, read_dataset
from cvtool.data.loaders import SampleDataset
from cvtool.data.stats import resolve_normalization
from cvtool.data.transforms import build_pipeline
from cvtool.recipe.schema import DataConfig, TransformSpec
from cvtool.tasks import Task


@dataclass
class DataBundle:
    info: DatasetInfo
    splits: dict[str, DecodedSplit]
    mean: list[float]
    std: list[float]


def prepare_data(cfg: DataConfig, task: Task, seed: int, splits: Iterable[str] = ("train", "val", "test"),
                 progress: bool = True, normalization: tuple[list[float], list[float]] | None = None) -> DataBundle:
    """Read the sample tables, resolve normalization and decode the requested splits (`seed`:
    the recipe's, which draws a val split off the training split when asked)."""
    info = fold_view(read_dataset(cfg, task.name, seed), cfg, task.name, seed)
    wanted = [s for s in splits if s in info.splits]
    if normalization is None:
        normalization = resolve_normalization(cfg, task.name, seed)
    mean, std = normalization
    decoded = {name: _decode(info.splits[name], cfg, progress) for name in wanted}
    for split in decoded.values():
        if split.skipped:
            import sys

            print(f"cvtool: {split.name}: skipped {len(split.skipped)} unreadable images "
                  f"(data.on_bad_image: skip), e.g. {split.skipped[0][0]}: {split.skipped[0][1]}", file=sys.stderr)
    _report_cut_off(decoded.values(), task)
    return DataBundle(info, decoded, list(mean), list(std))


def _report_cut_off(splits: Iterable[DecodedSplit], task: Task) -> None:
    """Keypoints that `data.resize: crop` cuts off keep their targets (outside [-1, 1]); say how many."""
    import sys

    for split in splits:
        if split.targets is None:
            continue
        count = task.cut_off(task.encode_targets(split.targets, split.frames))
        if count:
            print(f"cvtool: {split.name}: data.resize {split.resize} cuts off {count} keypoints; their "
                  "targets lie outside the model frame ([-1, 1]) and are kept", file=sys.stderr)


def skipped_counts(bundle: DataBundle) -> dict[str, int]:
    return {name: len(split.skipped) for name, split in bundle.splits.items()}


def _decode(split, cfg: DataConfig, progress: bool) -> DecodedSplit:
    from rich.console import Console

    if not progress or not Console().is_terminal:  # a transient bar leaves an empty line in a log
        return decode_split(split, cfg.cached_size, cfg.channels, root=cfg.root, mode=cfg.cache,
                            max_gb=cfg.cache_max_gb, on_bad_image=cfg.on_bad_image, resize=cfg.resize)
    from rich.progress import Progress

    with Progress(transient=True) as bar:
        task = bar.add_task(f"decoding {split.name}", total=len(split))
        return decode_split(split, cfg.cached_size, cfg.channels, root=cfg.root, mode=cfg.cache,
                            max_gb=cfg.cache_max_gb, on_bad_image=cfg.on_bad_image,
                            progress=lambda n: bar.advance(task, n), resize=cfg.resize)


def train_dataset(bundle: DataBundle, task: Task, augment: list[TransformSpec], seed: int,
                  flip_pairs: Sequence[tuple[int, int]] = (), defer_augment: bool = False) -> SampleDataset:
    """The training split with the recipe's `augment` pipeline (seeded per sample from `seed`);
    defer_augment: batches carry drawn flip/affine parameters for the device to apply."""
    pipeline = build_pipeline(augment, "augment")
    return SampleDataset(bundle.splits["train"], task, pipeline, seed, flip_pairs, defer_augment)


def eval_dataset(bundle: DataBundle, split: str, task: Task, seed: int = 0) -> SampleDataset:
    return SampleDataset(bundle.splits[split], task, None, seed)
