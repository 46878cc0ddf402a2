"""From a recipe's data section to decoded splits and torch datasets."""

from __future__ import annotations

from collections.abc import Callable, Iterable, Sequence
from dataclasses import dataclass

from cvtool.data.cache import DecodedSplit, decode_splits
from cvtool.data.filler import Filler
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
    on_bad_image: str = "fail"

    def fill_behind(self) -> Filler:
        """Decode what no batch has read yet behind the training (val and test first); `stop` it."""
        rank = {"val": 0, "test": 1, "train": 2}  # validation needs val first; the loader reads train anyway
        order = sorted(self.splits.values(), key=lambda split: rank.get(split.name, 3))
        decodes = list({id(split.decoded): split.decoded for split in order}.values())
        return Filler(decodes, raise_unreadable=self.on_bad_image == "fail").start()


def prepare_data(cfg: DataConfig, task: Task, seed: int, splits: Iterable[str] = ("train", "val", "test"),
                 progress: bool = True, normalization: tuple[list[float], list[float]] | None = None) -> DataBundle:
    """Read the sample tables, resolve normalization and decode the requested splits (`seed`:
    the recipe's, which draws a val split off the training split when asked)."""
    info = fold_view(read_dataset(cfg, task.name, seed), cfg, task.name, seed)
    wanted = [s for s in splits if s in info.splits]
    if normalization is None:
        normalization = resolve_normalization(cfg, task.name, seed)
    mean, std = normalization
    decoded = decode_splits({name: info.splits[name] for name in wanted}, cfg.cached_size, cfg.channels,
                            mode=cfg.cache, max_gb=cfg.cache_max_gb, on_bad_image=cfg.on_bad_image,
                            resize=cfg.resize, progress=_bar if progress else None)
    for split in decoded.values():
        if split.skipped:
            import sys

            print(f"cvtool: {split.name}: skipped {len(split.skipped)} unreadable images "
                  f"(data.on_bad_image: skip), e.g. {split.skipped[0][0]}: {split.skipped[0][1]}", file=sys.stderr)
    _report_cut_off(decoded.values(), task)
    return DataBundle(info, decoded, list(mean), list(std), cfg.on_bad_image)


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


def _bar(name: str, total: int) -> Callable[[int], None] | None:
    """A transient progress bar for decoding a split whole (data.on_bad_image: skip); None where
    the console is not a terminal (in a log a transient bar leaves an empty line)."""
    from rich.console import Console

    if not Console(stderr=True).is_terminal:
        return None
    from rich.progress import Progress

    bar = Progress(transient=True, console=Console(stderr=True))
    task = bar.add_task(f"decoding {name}", total=total)
    bar.start()
    done = [0]

    def advance(count: int) -> None:
        done[0] += count
        bar.advance(task, count)
        if done[0] >= total:
            bar.stop()

    return advance


def train_dataset(bundle: DataBundle, task: Task, augment: list[TransformSpec], seed: int,
                  flip_pairs: Sequence[tuple[int, int]] = (), defer_augment: bool = False) -> SampleDataset:
    """The training split with the recipe's `augment` pipeline (seeded per sample from `seed`);
    defer_augment: batches carry drawn flip/affine parameters for the device to apply."""
    pipeline = build_pipeline(augment, "augment")
    return SampleDataset(bundle.splits["train"], task, pipeline, seed, flip_pairs, defer_augment)


def eval_dataset(bundle: DataBundle, split: str, task: Task, seed: int = 0) -> SampleDataset:
    return SampleDataset(bundle.splits[split], task, None, seed)
