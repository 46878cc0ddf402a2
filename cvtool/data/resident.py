"""The training split kept on the training device (`data.on_device`), each batch gathered there.

The decoded uint8 split and its targets are copied to the device once. A batch is then a gather
on the device by the indices of the same sampler the loader would use (uniform or balanced, a
fold's split, this rank's shard), seeded as there; its flips/affines are drawn on the CPU from the
per-sample seeds as the loader draws them (`BatchAugment.draw`, no pixels touched) and applied by
the step (`Step.inputs`). No worker process, no host copy of pixels per batch: airbench's CIFAR-10
record keeps its data on the GPU the same way. On the CPU the batches equal the loader's exactly.
"""

from __future__ import annotations

from collections.abc import Sequence
from typing import Any

import numpy as np
import torch

from cvtool.data.batch_augment import to_device
from cvtool.data.device import DeviceFeeder
from cvtool.data.loaders import Batch, EpochSampler, SampleDataset, make_loader, sample_seed
from cvtool.errors import CvtoolError

# auto: the split may take at most this share of the device's free memory. The rest holds the
# model, its gradients and optimizer state, the activations of a batch (several times the weights
# for a CNN at a large batch), cuDNN's workspaces, validation and the caching allocator's slack;
# a quarter leaves those room on any GPU, and a split too big for it gains least (the loader
# already keeps up with the larger images such a split holds).
RESIDENT_SHARE = 0.25
UPLOAD_BYTES = 256 * 2**20  # per copy to the device: a memory-mapped cache is never read whole into RAM


def training_loader(dataset: SampleDataset, batch_size: int, sampler: EpochSampler, workers: int,
                    device: torch.device, on_device: str | bool, drop_last: bool = False) -> Any:
    """The training batches: from the split kept on the device when `data.on_device` says so (a
    DataLoader in this process over `DeviceSplit`), else the DataLoader fed through DeviceFeeder."""
    if keep_on_device(on_device, dataset, device):
        return torch.utils.data.DataLoader(DeviceSplit(dataset, device), batch_size=batch_size, sampler=sampler,
                                           collate_fn=_as_is, drop_last=drop_last)
    return DeviceFeeder(make_loader(dataset, batch_size, sampler, workers, device, drop_last=drop_last), device)


def is_resident(loader: Any) -> bool:
    """Whether `training_loader` gave the device-resident batches."""
    return isinstance(getattr(loader, "dataset", None), DeviceSplit)


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
    return int(dataset.split.images.nbytes) + int(dataset.targets.nbytes)


def _unbatchable(dataset: SampleDataset) -> str | None:
    """Why the split cannot be drawn on the device, or None."""
    if dataset.pipeline is not None and dataset.batched is None:
        return ("the augment pipeline augments each image in the loader (a transform other than flips and "
                "RandomAffine, e.g. ColorJitter, or keypoint targets, which move with their image)")
    return None


class DeviceSplit(torch.utils.data.Dataset):
    """`SampleDataset`'s batches (`__getitems__`), gathered from a copy of its split on `device`:
    the same images, targets and drawn plans for the same (epoch, index) keys."""

    def __init__(self, dataset: SampleDataset, device: torch.device) -> None:
        assert dataset.batched is None or dataset.defer_augment, "the step applies the drawn plans"
        self.dataset, self.device = dataset, device
        self.images = upload(dataset.split.images, device)
        self.targets = torch.from_numpy(np.ascontiguousarray(dataset.targets)).to(device)

    def __len__(self) -> int:
        return len(self.dataset)

    def __getitems__(self, keys: Sequence[tuple[int, int] | int]) -> Batch:
        pairs = [key if isinstance(key, tuple) else (0, key) for key in keys]
        indices = torch.tensor([index for _, index in pairs], dtype=torch.int64)
        rows = to_device(indices, self.device)  # queued, not waited for
        plan = None
        if self.dataset.batched is not None:
            seeds = [sample_seed(self.dataset.seed, epoch, index) for epoch, index in pairs]
            plan = self.dataset.batched.draw(seeds, *self.images.shape[-2:])
        # the indices stay on the host, as the loader's do (the training meter reads them there)
        return Batch((self.images.index_select(0, rows), self.targets.index_select(0, rows), indices), plan)


def upload(images: np.ndarray, device: torch.device) -> torch.Tensor:
    """N x H x W x C uint8 (an array or a memory-mapped cache) -> N x C x H x W on `device`, contiguous
    like the loader's batches, copied a block at a time."""
    count, height, width, channels = images.shape
    out = torch.empty((count, channels, height, width), dtype=torch.uint8, device=device)
    step = max(1, UPLOAD_BYTES // max(1, height * width * channels))
    for start in range(0, count, step):
        block = torch.from_numpy(np.ascontiguousarray(images[start:start + step])).to(device)
        out[start:start + len(block)].copy_(block.permute(0, 3, 1, 2))
    return out


def _as_is(batch: Batch) -> Batch:
    return batch
