"""Batched flips and affines: a v2 pipeline of RandomHorizontalFlip / RandomVerticalFlip /
RandomAffine (nested in Compose / RandomApply) applied to a whole uint8 batch in one pass,
each image exactly as the per-image pipeline would give it.

Exactness needs torchvision's own affine kernels, which are private; they are imported in
`_private_kernels` alone and only for the tested torchvision range, so another torchvision
falls back to the per-image path (`BatchAugment.supports` is False) instead of breaking.
"""

from __future__ import annotations

import functools
from collections.abc import Sequence
from typing import Any

import torch

FLIPS = {"RandomHorizontalFlip": -1, "RandomVerticalFlip": -2}  # v2 class -> flipped dim
BATCHED = {*FLIPS, "RandomAffine", "RandomApply", "Compose"}
# (major, minor) range of torchvision whose private kernels tests/test_batch_augment.py covers
TESTED_TORCHVISION = ((0, 19), (0, 29))


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
        return self.apply(images, self.draw(seeds, *images.shape[-2:]))

    def draw(self, seeds: Sequence[int], height: int, width: int) -> Plan:
        """Every image's parameters, drawn on the CPU from its own seed (cheap: no pixels touched),
        so the pixel work can run later, elsewhere (`apply` on the training device)."""
        rng = _Draws()
        drawn = []  # per image: one entry per leaf, None when the leaf is not applied
        for seed in seeds:
            rng.generator.manual_seed(seed)
            params: list[Any] = []
            _draw(self.pipeline, rng, height, width, params, applied=True)
            drawn.append(params)
        return Plan(drawn)

    def apply(self, images: torch.Tensor, plan: Plan) -> torch.Tensor:
        """The drawn flips and affines on a uint8 batch, on whatever device it lives; on the CPU
        the result is bit-identical to the per-image pipeline."""
        drawn = plan.drawn
        out = images
        for k, leaf in enumerate(self.leaves):
            chosen = [i for i, params in enumerate(drawn) if params[k] is not None]
            if not chosen:
                continue
            everyone = len(chosen) == len(drawn)
            rows = None if everyone else to_device(torch.tensor(chosen), images.device)
            picked = out if everyone else out[rows]
            name = type(leaf).__name__
            if name in FLIPS:
                moved = picked.flip(FLIPS[name])
            else:
                moved = _affine(picked, leaf, [drawn[i][k] for i in chosen])
            if everyone:
                out = moved
            else:
                out = out.clone() if out is images else out
                out[rows] = moved
        return out


def to_device(tensor: torch.Tensor, device: torch.device) -> torch.Tensor:
    """A small tensor built on the host, on `device` without waiting for it. `torch.tensor(data,
    device=cuda)` and a copy from pageable memory both block the host until every queued kernel has
    run; a copy from pinned memory with non_blocking is queued like a kernel (the caching host
    allocator keeps the pinned block until the copy is done)."""
    if device.type == "cpu":
        return tensor
    if device.type == "cuda":  # GPU only
        tensor = tensor.pin_memory()
    return tensor.to(device, non_blocking=True)


class Plan:
    """One batch's drawn augmentation parameters (per image, per leaf), small enough to travel
    from a loader worker with the uint8 batch."""

    def __init__(self, drawn: list[list[Any]]) -> None:
        self.drawn = drawn

    def __len__(self) -> int:
        return len(self.drawn)


@functools.cache
def _private_kernels() -> tuple[Any, ...] | None:
    """torchvision's private affine kernels, the one place cvtool imports them. BatchAugment
    reuses them so its images match the per-image pipeline bit for bit. They are trusted only
    in the torchvision versions the tests cover (TESTED_TORCHVISION); elsewhere, or where they
    moved, the per-image path is used instead (same images, slower)."""
    import torchvision

    major_minor = tuple(int(part) for part in torchvision.__version__.split("+")[0].split(".")[:2])
    if not TESTED_TORCHVISION[0] <= major_minor <= TESTED_TORCHVISION[1]:
        return None
    try:
        from torchvision.transforms.v2._utils import _get_fill
        from torchvision.transforms.v2.functional._geometry import (
            _affine_parse_args,
            _apply_grid_transform,
            _check_interpolation,
            _get_inverse_affine_matrix,
        )
    except ImportError:
        return None
    return _get_fill, _affine_parse_args, _apply_grid_transform, _check_interpolation, _get_inverse_affine_matrix


def _kernels_available() -> bool:
    return _private_kernels() is not None


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
    _get_fill, _affine_parse_args, _apply_grid_transform, _check_interpolation, _get_inverse_affine_matrix = (
        _private_kernels())
    interpolation = _check_interpolation(transform.interpolation)
    height, width = images.shape[-2:]
    center = [0.0, 0.0]
    if transform.center is not None:
        center = [c - s * 0.5 for c, s in zip(transform.center, (width, height), strict=True)]
    device = images.device
    base = torch.empty(1, height, width, 3, device=device)  # _affine_grid's base grid, built once
    base[..., 0].copy_(torch.linspace((1.0 - width) * 0.5, (width - 1.0) * 0.5, steps=width, device=device))
    base[..., 1].copy_(torch.linspace((1.0 - height) * 0.5, (height - 1.0) * 0.5, steps=height,
                                      device=device).unsqueeze_(-1))
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
    thetas = to_device(thetas.div_(torch.tensor([0.5 * width, 0.5 * height])), device)
    if device.type == "cpu":
        grid = torch.empty(len(params), height * width, 2)
        for i, theta in enumerate(thetas):
            torch.bmm(base, theta, out=grid[i:i + 1])
    else:  # GPU only: one batched product (the per-image loop above is for CPU bit-exactness)
        grid = torch.bmm(base.expand(len(params), -1, -1), thetas.reshape(-1, 3, 2))
    grid = grid.view(len(params), height, width, 2)
    fill = _get_fill(transform._fill, torch.Tensor)  # v2's per-type fill, as its affine uses
    zero_fill = fill is None or all(float(v) == 0.0 for v in (fill if isinstance(fill, (list, tuple)) else [fill]))
    if interpolation.value == "nearest" and not images.is_floating_point() and zero_fill:
        # What _apply_grid_transform computes, minus its fill mask and rounding: zero padding
        # already gives a zero fill, and nearest samples are whole numbers.
        sampled = torch.nn.functional.grid_sample(images.float(), grid, mode="nearest", padding_mode="zeros",
                                                  align_corners=False)
        return sampled.to(images.dtype)
    if device.type == "cpu":
        return _apply_grid_transform(images, grid, interpolation.value, fill)
    return grid_transform(images, grid, interpolation.value, fill)


def grid_transform(images: torch.Tensor, grid: torch.Tensor, mode: str, fill: Any) -> torch.Tensor:
    """torchvision's `_apply_grid_transform` for an N x C x H x W batch with one grid per image, the
    same operations in the same order, except that the fill colour is built on the host and copied
    without waiting (`to_device`): torchvision builds it with `torch.tensor(..., device=...)`, which
    would wait for the device once per augmented batch. The CPU keeps torchvision's own."""
    count, channels, height, width = images.shape
    exact = images.dtype == grid.dtype
    float_images = images if exact else images.to(grid.dtype)
    if fill is not None:  # a channel of ones marks where the grid sampled inside the image
        ones = torch.ones((count, 1, height, width), dtype=float_images.dtype, device=float_images.device)
        float_images = torch.cat((float_images, ones), dim=1)
    float_images = torch.nn.functional.grid_sample(float_images, grid, mode=mode, padding_mode="zeros",
                                                   align_corners=False)
    if fill is not None:
        float_images, mask = torch.tensor_split(float_images, indices=(-1,), dim=-3)
        mask = mask.expand_as(float_images)
        values = fill if isinstance(fill, (tuple, list)) else [float(fill)]
        colour = to_device(torch.tensor(values, dtype=float_images.dtype).view(1, -1, 1, 1), float_images.device)
        if mode == "nearest":
            float_images = torch.where(mask < 0.5, colour.expand_as(float_images), float_images)
        else:  # mask * (image - fill) + fill: the image inside, blended into the fill at the border
            float_images = float_images.sub_(colour).mul_(mask).add_(colour)
    return float_images if exact else float_images.round_().to(images.dtype)
