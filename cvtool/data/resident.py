"""The training split kept on the training device (`data.on_device`), each batch gathered there.

The decoded uint8 split and its targets are copied to the device once. A batch is then a gather
on the device by the indices of the same sampler the loader would use (uniform or balanced, a
fold's split, this rank's shard), seeded as there; its flips/affines are drawn on the CPU from the
per-sample seeds as the loader draws them (`BatchAugment.draw`, no pixels touched; in
`data.num_workers` loader processes when there are any) and applied by the step (`Step.inputs`).
No host copy of pixels per batch: airbench's CIFAR-10 record keeps its data on the GPU the same
way. On the CPU the batches equal the loader's exactly.
"""

from __future__ import annotations

from collections.abc import Iterator, Sequence
from typing import TYPE_CHECKING, Any

import numpy as np
import torch

from cvtool.data.batch_augment import to_device
from cvtool.data.device import DeviceFeeder
from cvtool.data.loaders import Batch, EpochSampler, SampleDataset, make_loader, sample_seed
from cvtool.errors import CvtoolError

if TYPE_CHECKING:
    from cvtool.data.cache import DecodedSplit

# auto: the split may take at most this share of the device's free memory. The rest holds the
# model, its gradients and optimizer state, the activations of a batch (several times the weights
# for a CNN at a large batch), cuDNN's workspaces, validation and the caching allocator's slack;
# a quarter leaves those room on any GPU, and a split too big for it gains least (the loader
# already keeps up with the larger images such a split holds).
RESIDENT_SHARE = 0.25
UPLOAD_BYTES = 256 * 2**20  # per copy to the device: a memory-mapped cache is never read whole into RAM


def training_loader(dataset: SampleDataset, batch_size: int, sampler: EpochSampler, workers: int,
                    device: torch.device, on_device: str | bool, drop_last: bool = False) -> Any:
    """The training batches: from the split kept on the device when `data.on_device` says so
    (`ResidentLoader`), else the DataLoader fed through DeviceFeeder."""
    if keep_on_device(on_device, dataset, device):
        return ResidentLoader(DeviceSplit(dataset, device), batch_size, sampler, workers, drop_last)
    return DeviceFeeder(make_loader(dataset, batch_size, sampler, workers, device, drop_last=drop_last), device)


def is_resident(loader: Any) -> bool:
    """Whether `training_loader` gave the device-resident batches."""
    return isinstance(loader, ResidentLoader)


def keep_on_device(on_device: str | bool, dataset: SampleDataset, device: torch.device) -> bool:
    """`data.on_device`: false; true (or one line saying why it cannot); auto: on CUDA when the split
    fits in RESIDENT_SHARE of the free device memory (the CPU and MPS keep the loader)."""
    if on_device is False:
        return False
    reason = _unbatchable(dataset)
    if on_device is True:
        if reason is not None:
            raise CvtoolError(f"data.on_device: true, but {reason}; set it to auto or false")
        if device.type == "cuda":  # GPU only
            needed, free = resident_bytes(dataset), torch.cuda.mem_get_info(device)[0]
            if needed > free:
                raise CvtoolError(f"data.on_device: true, but the training split ({needed / 1e9:.2f} GB) does not "
                                  f"fit in the device's free memory ({free / 1e9:.2f} GB); set it to auto or false")
        return True
    if reason is not None or device.type != "cuda":
        return False
    return resident_bytes(dataset) <= RESIDENT_SHARE * torch.cuda.mem_get_info(device)[0]  # GPU only


def resident_bytes(dataset: SampleDataset) -> int:
    """Device memory the split takes when kept there: its uint8 images and encoded targets."""
    return int(dataset.split.nbytes) + int(dataset.targets.nbytes)


def _unbatchable(dataset: SampleDataset) -> str | None:
    """Why the split cannot be drawn on the device, or None."""
    if dataset.pipeline is not None and dataset.batched is None:
        return ("the augment pipeline augments each image in the loader (a transform other than flips and "
                "RandomAffine, e.g. ColorJitter, or keypoint targets, which move with their image)")
    return None


class ResidentLoader:
    """Batches gathered on the device from a `DeviceSplit`. Which rows, and each image's drawn
    flips/affines, come from a DataLoader over `PlanDraws` (no pixels): in `workers` processes when
    there are any, so the training thread only gathers, and drawing 256 plans in Python no longer
    sits in an 11 ms step (docs/benchmarks.md, H200). `loader`: that DataLoader (its sampler and
    batch size are the epoch's, as `engine.loop.batch_sizes` reads them)."""

    def __init__(self, split: DeviceSplit, batch_size: int, sampler: EpochSampler, workers: int,
                 drop_last: bool = False) -> None:
        self.dataset = split
        self.loader = torch.utils.data.DataLoader(
            PlanDraws(split.dataset, split.images.shape[-2:]), batch_size=batch_size, sampler=sampler,
            collate_fn=_as_is, num_workers=workers, drop_last=drop_last, persistent_workers=workers > 0,
            prefetch_factor=4 if workers > 0 else None)

    def __len__(self) -> int:
        return len(self.loader)

    def __iter__(self) -> Iterator[Batch]:
        for indices, plan in self.loader:
            yield self.dataset.gather(indices, plan)


class PlanDraws(torch.utils.data.Dataset):
    """For (epoch, index) keys, the batch's indices and its drawn plan (`BatchAugment.draw` from the
    per-sample seeds, as the loader draws them): small, cheap to send from a worker."""

    def __init__(self, dataset: SampleDataset, shape: Sequence[int]) -> None:
        self.count, self.seed, self.batched = len(dataset), dataset.seed, dataset.batched
        self.height, self.width = int(shape[0]), int(shape[1])

    def __len__(self) -> int:
        return self.count

    def __getitems__(self, keys: Sequence[tuple[int, int] | int]) -> tuple[torch.Tensor, Any]:
        pairs = [key if isinstance(key, tuple) else (0, key) for key in keys]
        indices = torch.tensor([index for _, index in pairs], dtype=torch.int64)
        plan = None
        if self.batched is not None:
            plan = self.batched.draw([sample_seed(self.seed, epoch, index) for epoch, index in pairs],
                                     self.height, self.width)
        return indices, plan


class DeviceSplit:
    """`SampleDataset`'s split and targets, copied to `device` once; `gather` gives the loader's
    batch for the same indices and drawn plan."""

    def __init__(self, dataset: SampleDataset, device: torch.device) -> None:
        assert dataset.batched is None or dataset.defer_augment, "the step applies the drawn plans"
        self.dataset, self.device = dataset, device
        self.images = upload(dataset.split, device)
        self.targets = torch.from_numpy(np.ascontiguousarray(dataset.targets)).to(device)

    def __len__(self) -> int:
        return len(self.dataset)

    def gather(self, indices: torch.Tensor, plan: Any) -> Batch:
        rows = to_device(indices, self.device)  # queued, not waited for
        # the indices stay on the host, as the loader's do (the training meter reads them there)
        return Batch((self.images.index_select(0, rows), self.targets.index_select(0, rows), indices), plan)


def upload(split: DecodedSplit, device: torch.device) -> torch.Tensor:
    """A decoded split (in memory or a memory-mapped cache entry; decoded first where it is not yet)
    -> N x C x H x W uint8 on `device`, contiguous like the loader's batches, a block at a time."""
    count, height, width, channels = split.shape
    out = torch.empty((count, channels, height, width), dtype=torch.uint8, device=device)
    split.complete()  # on the thread pool, all at once
    step = max(1, UPLOAD_BYTES // max(1, height * width * channels))
    for start in range(0, count, step):
        block = torch.from_numpy(np.ascontiguousarray(split.gather(np.arange(start, min(count, start + step)))))
        out[start:start + len(block)].copy_(block.to(device).permute(0, 3, 1, 2))
    return out


def _as_is(batch: Any) -> Any:
    return batch
