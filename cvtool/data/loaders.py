"""Torch datasets and loaders over decoded splits.

Augmentation is seeded per (seed, epoch, sample): a sample looks the same whatever the
number of workers or ranks, and a resumed run repeats an uninterrupted one exactly.
Images leave the loader as uint8; `Normalize` turns them into model inputs on the device.

A batch is fetched at once (`__getitems__`); flips and affines augment it in one pass
(`BatchAugment`), each image exactly as the per-image v2 pipeline would.
"""

from __future__ import annotations

from collections.abc import Iterator, Sequence
from typing import Any

import numpy as np
import torch

from cvtool.data.cache import DecodedSplit
from cvtool.data.transforms import apply_with_points, mirrored, swap_pairs
from cvtool.tasks import Task

FLIPS = {"RandomHorizontalFlip": -1, "RandomVerticalFlip": -2}  # v2 class -> flipped dim
BATCHED = {*FLIPS, "RandomAffine", "RandomApply", "Compose"}


def sample_seed(seed: int, epoch: int, index: int) -> int:
    """The seed of one sample's augmentation in one epoch."""
    return (seed * 1_000_003 + epoch * 10_007 + index) % (2**63)


class Normalize(torch.nn.Module):
    """uint8 N x C x H x W -> float, scaled to [0, 1], standardized per channel."""

    def __init__(self, mean: Sequence[float], std: Sequence[float]) -> None:
        super().__init__()
        self.register_buffer("mean", torch.tensor(mean, dtype=torch.float32).view(1, -1, 1, 1))
        self.register_buffer("scale", 1.0 / (255.0 * torch.tensor(std, dtype=torch.float32).view(1, -1, 1, 1)))

    def forward(self, images: torch.Tensor) -> torch.Tensor:
        return (images.float() - 255.0 * self.mean) * self.scale


class BatchAugment:
    """A v2 pipeline of flips and RandomAffine (nested in Compose / RandomApply) on a uint8
    N x C x H x W batch in one pass. Image i draws its parameters from its own generator seeded
    with seeds[i], in the order and with the calls the per-image pipeline makes, and goes through
    the same kernels (torchvision's affine grid and grid transform), so its result equals
    `pipeline(image)` after seeding, whatever else is in the batch. The caller's RNG is untouched."""

    def __init__(self, pipeline: Any) -> None:
        self.pipeline = pipeline
        self.leaves: list[Any] = []
        _collect_leaves(pipeline, self.leaves)

    @staticmethod
    def supports(pipeline: Any) -> bool:
        if not _kernels_available():
            return False  # another torchvision: the per-image path gives the same images
        name = type(pipeline).__name__
        if name not in BATCHED or type(pipeline).__module__.split(".")[:3] != ["torchvision", "transforms", "v2"]:
            return False
        return all(BatchAugment.supports(t) for t in getattr(pipeline, "transforms", []))

    def __call__(self, images: torch.Tensor, seeds: Sequence[int]) -> torch.Tensor:
        height, width = images.shape[-2:]
        rng = _Draws()
        drawn = []  # per image: one entry per leaf, None when the leaf is not applied
        for seed in seeds:
            rng.generator.manual_seed(seed)
            params: list[Any] = []
            _draw(self.pipeline, rng, height, width, params, applied=True)
            drawn.append(params)
        out = images
        for k, leaf in enumerate(self.leaves):
            chosen = [i for i, params in enumerate(drawn) if params[k] is not None]
            if not chosen:
                continue
            everyone = len(chosen) == len(drawn)
            picked = out if everyone else out[torch.tensor(chosen)]
            name = type(leaf).__name__
            if name in FLIPS:
                moved = picked.flip(FLIPS[name])
            else:
                moved = _affine(picked, leaf, [drawn[i][k] for i in chosen])
            if everyone:
                out = moved
            else:
                out = out.clone() if out is images else out
                out[torch.tensor(chosen)] = moved
        return out


def _kernels_available() -> bool:
    """BatchAugment reuses torchvision's own (private) affine kernels so its images match the
    per-image pipeline bit for bit; where they moved, the per-image path is used instead."""
    try:
        from torchvision.transforms.v2._utils import _get_fill  # noqa: F401
        from torchvision.transforms.v2.functional._geometry import (  # noqa: F401
            _affine_parse_args,
            _apply_grid_transform,
            _check_interpolation,
            _get_inverse_affine_matrix,
        )
    except ImportError:
        return False
    return True


def _collect_leaves(transform: Any, leaves: list[Any]) -> None:
    if type(transform).__name__ in ("Compose", "RandomApply"):
        for inner in transform.transforms:
            _collect_leaves(inner, leaves)
    else:
        leaves.append(transform)


class _Draws:
    """A private generator and a reused one-element buffer: `buffer.uniform_()` gives what
    `torch.rand(1)` and `torch.empty(1).uniform_(low, high)` give from the same state."""

    def __init__(self) -> None:
        self.generator = torch.Generator()
        self.buffer = torch.empty(1)

    def applies(self, p: float) -> bool:
        """v2's `if torch.rand(1) >= p: skip` (compared in float32, as there)."""
        return not bool(self.buffer.uniform_(generator=self.generator) >= p)

    def uniform(self, low: float, high: float) -> float:
        return self.buffer.uniform_(low, high, generator=self.generator).item()


def _draw(transform: Any, rng: _Draws, height: int, width: int, params: list[Any], applied: bool) -> None:
    """Append one image's parameters per leaf, drawing exactly what v2's forward would
    (`_RandomApplyTransform.forward`, `RandomApply.forward`, `RandomAffine.make_params`)."""
    name = type(transform).__name__
    if name in ("Compose", "RandomApply"):
        if applied and name == "RandomApply":
            applied = rng.applies(transform.p)
        for inner in transform.transforms:
            _draw(inner, rng, height, width, params, applied)
        return
    if not applied:
        params.append(None)
    elif name in FLIPS:
        params.append(True if rng.applies(transform.p) else None)
    else:
        params.append(_affine_params(transform, rng, height, width))


def _affine_params(t: Any, rng: _Draws, height: int, width: int) -> dict[str, Any]:
    angle = rng.uniform(t.degrees[0], t.degrees[1])
    translate = (0, 0)
    if t.translate is not None:
        max_dx, max_dy = float(t.translate[0] * width), float(t.translate[1] * height)
        translate = (int(round(float(rng.uniform(-max_dx, max_dx)))), int(round(float(rng.uniform(-max_dy, max_dy)))))
    scale = rng.uniform(t.scale[0], t.scale[1]) if t.scale is not None else 1.0
    shear_x = shear_y = 0.0
    if t.shear is not None:
        shear_x = float(rng.uniform(t.shear[0], t.shear[1]))
        if len(t.shear) == 4:
            shear_y = float(rng.uniform(t.shear[2], t.shear[3]))
    return {"angle": angle, "translate": translate, "scale": scale, "shear": (shear_x, shear_y)}


def _affine(images: torch.Tensor, transform: Any, params: Sequence[dict[str, Any]]) -> torch.Tensor:
    """`F.affine_image` per image, with the grids stacked into one grid transform."""
    from torchvision.transforms.v2._utils import _get_fill
    from torchvision.transforms.v2.functional._geometry import (
        _affine_parse_args,
        _apply_grid_transform,
        _check_interpolation,
        _get_inverse_affine_matrix,
    )

    interpolation = _check_interpolation(transform.interpolation)
    height, width = images.shape[-2:]
    center = [0.0, 0.0]
    if transform.center is not None:
        center = [c - s * 0.5 for c, s in zip(transform.center, (width, height), strict=True)]
    base = torch.empty(1, height, width, 3)  # _affine_grid's base grid, built once
    base[..., 0].copy_(torch.linspace((1.0 - width) * 0.5, (width - 1.0) * 0.5, steps=width))
    base[..., 1].copy_(torch.linspace((1.0 - height) * 0.5, (height - 1.0) * 0.5, steps=height).unsqueeze_(-1))
    base[..., 2].fill_(1)
    base = base.view(1, height * width, 3)
    matrices = []
    for p in params:
        angle, translate, shear, _ = _affine_parse_args(p["angle"], p["translate"], p["scale"], p["shear"],
                                                        interpolation, transform.center)
        matrices.append(_get_inverse_affine_matrix(center, angle, [float(t) for t in translate], p["scale"], shear))
    # _affine_grid's theta.transpose(1, 2).div_(halves) for every image at once (elementwise, so the
    # same values), then its bmm one image at a time, as there
    thetas = torch.tensor(matrices, dtype=torch.float32).view(-1, 1, 2, 3).transpose(2, 3)
    thetas.div_(torch.tensor([0.5 * width, 0.5 * height]))
    grid = torch.empty(len(params), height * width, 2)
    for i, theta in enumerate(thetas):
        torch.bmm(base, theta, out=grid[i:i + 1])
    grid = grid.view(len(params), height, width, 2)
    fill = _get_fill(transform._fill, torch.Tensor)
    zero_fill = fill is None or all(float(v) == 0.0 for v in (fill if isinstance(fill, (list, tuple)) else [fill]))
    if interpolation.value == "nearest" and not images.is_floating_point() and zero_fill:
        # What _apply_grid_transform computes, minus its fill mask and rounding: zero padding
        # already gives a zero fill, and nearest samples are whole numbers.
        sampled = torch.nn.functional.grid_sample(images.float(), grid, mode="nearest", padding_mode="zeros",
                                                  align_corners=False)
        return sampled.to(images.dtype)
    return _apply_grid_transform(images, grid, interpolation.value, fill)


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
                 flip_pairs: Sequence[tuple[int, int]] = ()) -> None:
        self.split, self.task, self.pipeline, self.seed = split, task, pipeline, seed
        self.flip_pairs = list(flip_pairs)
        self.size = split.images.shape[1]
        batchable = pipeline is not None and task.name != "keypoints" and BatchAugment.supports(pipeline)
        self.batched = BatchAugment(pipeline) if batchable else None
        if split.targets is None:
            self.targets = np.zeros((len(split), 1), np.float32)
        else:
            self.targets = task.encode_targets(split.targets, split.sizes)

    def __len__(self) -> int:
        return len(self.split)

    def __getitem__(self, key: tuple[int, int] | int) -> tuple[torch.Tensor, torch.Tensor, int]:
        epoch, index = key if isinstance(key, tuple) else (0, key)
        image = torch.from_numpy(np.array(self.split.images[index])).permute(2, 0, 1).contiguous()
        target = self.targets[index]
        if self.pipeline is not None:
            # the CPU generator only (torch.manual_seed would also queue CUDA/XPU seeding, ~0.1 ms)
            torch.default_generator.manual_seed(sample_seed(self.seed, epoch, index))
            if self.task.name == "keypoints":
                image, target = self._with_points(image, target)
            else:
                image = self.pipeline(image)
        return image.contiguous(), torch.as_tensor(target), index

    def __getitems__(self, keys: Sequence[tuple[int, int] | int]) -> Batch:
        """A whole batch, collated (the DataLoader of `make_loader` calls this): one gather from the
        cache and one `BatchAugment` pass; sample by sample when the pipeline cannot be batched."""
        if self.pipeline is not None and self.batched is None:
            return Batch(torch.utils.data.default_collate([self[key] for key in keys]))
        pairs = [key if isinstance(key, tuple) else (0, key) for key in keys]
        indices = np.asarray([index for _, index in pairs], np.int64)
        # contiguous C x H x W first: the grid transform runs ~8x faster than on the HWC-strided view
        images = torch.from_numpy(self.split.images[indices]).permute(0, 3, 1, 2).contiguous()
        if self.batched is not None:
            images = self.batched(images, [sample_seed(self.seed, epoch, index) for epoch, index in pairs]).contiguous()
        return Batch((images, torch.from_numpy(self.targets[indices]), torch.from_numpy(indices)))

    def _with_points(self, image: torch.Tensor, target: np.ndarray) -> tuple[torch.Tensor, np.ndarray]:
        points = (target.reshape(-1, 2) + 1.0) / 2.0 * self.size
        image, moved, affine = apply_with_points(self.pipeline, image, points, self.size)
        if mirrored(affine) and self.flip_pairs:
            moved = swap_pairs(moved, self.flip_pairs)
        return image, (moved / self.size * 2.0 - 1.0).reshape(-1).astype(np.float32)


class Batch(tuple):
    """(uint8 images N x C x H x W, targets, indices), collated by `SampleDataset.__getitems__`."""


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
        pin_memory=device.type == "cuda",
        drop_last=drop_last,
        persistent_workers=workers > 0,
        prefetch_factor=4 if workers > 0 else None,
    )
