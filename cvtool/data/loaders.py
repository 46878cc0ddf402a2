"""Torch datasets and loaders over decoded splits.

Augmentation is seeded per (seed, epoch, sample): a sample looks the same whatever the
number of workers or ranks, and a resumed run repeats an uninterrupted one exactly.
Images leave the loader as uint8; `Normalize` turns them into model inputs on the device
(resized to the model's size when the cache holds another, `data.decode_size`).

A batch is fetched at once (`__getitems__`); flips and affines augment it in one pass
(`data.batch_augment.BatchAugment`), each image exactly as the per-image v2 pipeline would.
With `defer_augment` the loader only draws each image's parameters (on the CPU, from its
per-sample seed) and the pixel work runs on the training device (`engine.loop.Stepper.inputs`).
"""

from __future__ import annotations

from collections.abc import Iterator, Sequence
from typing import Any

import numpy as np
import torch

from cvtool.data.batch_augment import BatchAugment
from cvtool.data.cache import DecodedSplit
from cvtool.data.transforms import apply_with_points, mirrored, swap_pairs
from cvtool.errors import BadImageError
from cvtool.tasks import Task


def sample_seed(seed: int, epoch: int, index: int) -> int:
    """The seed of one sample's augmentation in one epoch."""
    return (seed * 1_000_003 + epoch * 10_007 + index) % (2**63)


def resize(images: torch.Tensor, size: int) -> torch.Tensor:
    """Float N x C x H x W -> size x size: bilinear, antialiased (like PIL when shrinking). The one
    resize of training, evaluation, TTA and the --raw-input ONNX graph."""
    return torch.nn.functional.interpolate(images, size=(size, size), mode="bilinear", align_corners=False,
                                           antialias=True)


class Normalize(torch.nn.Module):
    """uint8 N x C x H x W -> float, resized to `size` x `size` when given and different,
    scaled to [0, 1], standardized per channel."""

    def __init__(self, mean: Sequence[float], std: Sequence[float], size: int | None = None) -> None:
        super().__init__()
        self.size = size
        self.register_buffer("mean", torch.tensor(mean, dtype=torch.float32).view(1, -1, 1, 1))
        self.register_buffer("scale", 1.0 / (255.0 * torch.tensor(std, dtype=torch.float32).view(1, -1, 1, 1)))

    def forward(self, images: torch.Tensor) -> torch.Tensor:
        x = images.float()
        if self.size is not None and (x.shape[-2] != self.size or x.shape[-1] != self.size):
            x = resize(x, self.size)
        return self.standardize(x)

    def standardize(self, x: torch.Tensor) -> torch.Tensor:
        """Float pixels (0-255) -> standardized model input."""
        return (x - 255.0 * self.mean) * self.scale


class EpochSampler(torch.utils.data.Sampler):
    """Yields (epoch, index) pairs: a seeded permutation per epoch (or the plain order),
    sharded over `world_size` ranks. `pad=False` gives uneven shards without duplicates."""

    def __init__(self, size: int, seed: int, shuffle: bool, rank: int = 0, world_size: int = 1,
                 pad: bool = True) -> None:
        self.size, self.seed, self.shuffle = size, seed, shuffle
        self.rank, self.world_size, self.pad = rank, world_size, pad
        self.epoch = 0

    def set_epoch(self, epoch: int) -> None:
        self.epoch = epoch

    def indices(self) -> list[int]:
        if self.shuffle:
            gen = torch.Generator().manual_seed(self.seed * 100_003 + self.epoch)
            order = torch.randperm(self.size, generator=gen).tolist()
        else:
            order = list(range(self.size))
        if self.world_size > 1 and self.pad:
            total = -(-self.size // self.world_size) * self.world_size
            order += order[: total - len(order)]
        return order[self.rank :: self.world_size]

    def __iter__(self) -> Iterator[tuple[int, int]]:
        return iter([(self.epoch, i) for i in self.indices()])

    def __len__(self) -> int:
        return len(self.indices())


class SampleDataset(torch.utils.data.Dataset):
    """(uint8 image C x H x W, target, index) for (epoch, index) keys."""

    def __init__(self, split: DecodedSplit, task: Task, pipeline: Any | None, seed: int,
                 flip_pairs: Sequence[tuple[int, int]] = (), defer_augment: bool = False) -> None:
        self.split, self.task, self.pipeline, self.seed = split, task, pipeline, seed
        self.flip_pairs = list(flip_pairs)
        self.size = split.shape[1]
        batchable = pipeline is not None and BatchAugment.supports(pipeline)  # moves pixels only
        self.batched = task.augment_with(image_only=BatchAugment(pipeline), with_points=None) if batchable else None
        self.defer_augment = defer_augment and self.batched is not None
        if split.targets is None:
            self.targets = np.zeros((len(split), 1), np.float32)
        else:
            self.targets = task.encode_targets(split.targets, split.frames)

    def __len__(self) -> int:
        return len(self.split)

    def __getitem__(self, key: tuple[int, int] | int) -> tuple[torch.Tensor, torch.Tensor, int]:
        epoch, index = key if isinstance(key, tuple) else (0, key)
        image = torch.from_numpy(self.split.gather(index)[0]).permute(2, 0, 1).contiguous()
        target = self.targets[index]
        if self.pipeline is not None:
            # the CPU generator only (torch.manual_seed would also queue CUDA/XPU seeding, ~0.1 ms)
            torch.default_generator.manual_seed(sample_seed(self.seed, epoch, index))
            image, target = self.task.augment_with(image_only=self._image_only, with_points=self._with_points)(
                image, target)
        return image.contiguous(), torch.as_tensor(target), index

    def __getitems__(self, keys: Sequence[tuple[int, int] | int]) -> Batch:
        """A whole batch, collated (the DataLoader of `make_loader` calls this): one gather from the
        cache (decoding the images read for the first time) and one `BatchAugment` pass; sample by
        sample when the pipeline cannot be batched. An unreadable image comes back as a batch that
        raises its BadImageError where it is unpacked (`Batch.error`)."""
        try:
            return self._batch(keys)
        except BadImageError as exc:
            return Batch((), error=(exc.path, exc.reason))

    def _batch(self, keys: Sequence[tuple[int, int] | int]) -> Batch:
        if self.pipeline is not None and self.batched is None:
            return Batch(torch.utils.data.default_collate([self[key] for key in keys]))
        pairs = [key if isinstance(key, tuple) else (0, key) for key in keys]
        indices = np.asarray([index for _, index in pairs], np.int64)
        # contiguous C x H x W first: the grid transform runs ~8x faster than on the HWC-strided view
        images = torch.from_numpy(self.split.gather(indices)).permute(0, 3, 1, 2).contiguous()
        plan = None
        if self.batched is not None:
            seeds = [sample_seed(self.seed, epoch, index) for epoch, index in pairs]
            if self.defer_augment:
                plan = self.batched.draw(seeds, *images.shape[-2:])
            else:
                images = self.batched(images, seeds).contiguous()
        return Batch((images, torch.from_numpy(self.targets[indices]), torch.from_numpy(indices)), plan)

    def _image_only(self, image: torch.Tensor, target: np.ndarray) -> tuple[torch.Tensor, np.ndarray]:
        return self.pipeline(image), target

    def _with_points(self, image: torch.Tensor, target: np.ndarray) -> tuple[torch.Tensor, np.ndarray]:
        points = (target.reshape(-1, 2) + 1.0) / 2.0 * self.size
        image, moved, affine = apply_with_points(self.pipeline, image, points, self.size)
        if mirrored(affine) and self.flip_pairs:
            moved = swap_pairs(moved, self.flip_pairs)
        return image, (moved / self.size * 2.0 - 1.0).reshape(-1).astype(np.float32)


class Batch:
    """(uint8 images N x C x H x W, targets, indices), collated by `SampleDataset.__getitems__`; it
    unpacks and indexes like that 3-tuple. `augment` is the drawn augmentation still to apply (a
    `batch_augment.Plan`), or None. `error`: (path, reason) of an unreadable image that stopped
    the batch, raised as BadImageError where the batch is unpacked, in the training process (a
    loader worker's own exception would come back as a RuntimeError carrying a traceback).

    Not a tuple subclass on purpose: torch's `pin_memory` rebuilds a tuple item by item (losing
    `augment`) in the torch versions that test for tuples before they look for a `pin_memory`
    method; any other type reaches `Batch.pin_memory` in all of them."""

    def __init__(self, items: Sequence[Any], augment: Any = None, error: tuple[str, str] | None = None) -> None:
        self.items = tuple(items)
        self.augment = augment
        self.error = error

    def __iter__(self) -> Iterator[Any]:
        return iter(self._checked())

    def __len__(self) -> int:
        return len(self._checked())

    def __getitem__(self, index: int | slice) -> Any:
        return self._checked()[index]

    def _checked(self) -> tuple[Any, ...]:
        if self.error is not None:
            raise BadImageError(*self.error)
        return self.items

    def pin_memory(self) -> Batch:
        """The batch with its images and targets in pinned host memory and its plan kept. The
        DataLoader's pin thread calls this (`pin_memory=True`), so the training thread only queues
        the non_blocking copy (`data.device.DeviceFeeder`); the indices never leave the host."""
        if self.error is not None:
            return self
        images, targets, indices = self.items
        return Batch((images.pin_memory(), targets.pin_memory(), indices), self.augment)


def _collated(batch: Batch) -> Batch:
    return batch


def make_loader(dataset: SampleDataset, batch_size: int, sampler: EpochSampler, workers: int,
                device: torch.device, drop_last: bool = False) -> torch.utils.data.DataLoader:
    """Batches through `SampleDataset.__getitems__`. On two CPU cores, workers=0 measured best:
    a worker process or a prefetch thread competes with torch's two compute threads."""
    return torch.utils.data.DataLoader(
        dataset,
        batch_size=batch_size,
        sampler=sampler,
        collate_fn=_collated,
        num_workers=workers,
        # pinned by the pin thread (Batch.pin_memory keeps a deferred plan), off the training thread
        pin_memory=device.type == "cuda",
        drop_last=drop_last,
        persistent_workers=workers > 0,
        prefetch_factor=4 if workers > 0 else None,
    )
