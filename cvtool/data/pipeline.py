"""From a recipe's data section to decoded splits and torch datasets."""

from __future__ import annotations

from collections.abc import Iterable
from dataclasses import dataclass

from cvtool.data.cache import DecodedSplit, decode_split
from cvtool.data.formats import DatasetInfo, read_dataset
from cvtool.data.loaders import SampleDataset
from cvtool.data.stats import resolve_normalization
from cvtool.data.transforms import build_pipeline
from cvtool.recipe.schema import DataConfig, Recipe
from cvtool.tasks import Task


@dataclass
class DataBundle:
    info: DatasetInfo
    splits: dict[str, DecodedSplit]
    mean: list[float]
    std: list[float]


def prepare_data(recipe: Recipe, splits: Iterable[str] = ("train", "val", "test"), progress: bool = True,
                 normalization: tuple[list[float], list[float]] | None = None) -> DataBundle:
    """Read the sample tables, resolve normalization and decode the requested splits."""
    cfg = recipe.data
    info = read_dataset(cfg, recipe.task, recipe.seed)
    wanted = [s for s in splits if s in info.splits]
    if normalization is None:
        normalization = resolve_normalization(cfg, recipe.task, recipe.seed)
    mean, std = normalization
    decoded = {name: _decode(info.splits[name], cfg, progress) for name in wanted}
    for split in decoded.values():
        if split.skipped:
            import sys

            print(f"cvtool: {split.name}: skipped {len(split.skipped)} unreadable images "
                  f"(data.on_bad_image: skip), e.g. {split.skipped[0][0]}: {split.skipped[0][1]}", file=sys.stderr)
    return DataBundle(info, decoded, list(mean), list(std))


def skipped_counts(bundle: DataBundle) -> dict[str, int]:
    return {name: len(split.skipped) for name, split in bundle.splits.items()}


def _decode(split, cfg: DataConfig, progress: bool) -> DecodedSplit:
    from rich.console import Console

    if not progress or not Console().is_terminal:  # a transient bar leaves an empty line in a log
        return decode_split(split, cfg.image_size, cfg.channels, root=cfg.root, mode=cfg.cache,
                            max_gb=cfg.cache_max_gb, on_bad_image=cfg.on_bad_image)
    from rich.progress import Progress

    with Progress(transient=True) as bar:
        task = bar.add_task(f"decoding {split.name}", total=len(split))
        return decode_split(split, cfg.image_size, cfg.channels, root=cfg.root, mode=cfg.cache,
                            max_gb=cfg.cache_max_gb, on_bad_image=cfg.on_bad_image,
                            progress=lambda n: bar.advance(task, n))


def train_dataset(bundle: DataBundle, recipe: Recipe, task: Task) -> SampleDataset:
    pipeline = build_pipeline(recipe.augment, "augment")
    return SampleDataset(bundle.splits["train"], task, pipeline, recipe.seed, recipe.data.flip_pairs)


def eval_dataset(bundle: DataBundle, split: str, task: Task, seed: int = 0) -> SampleDataset:
    return SampleDataset(bundle.splits[split], task, None, seed)
