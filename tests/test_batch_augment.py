"""The batched augmentation the loader and TTA use equals the per-image v2 pipeline exactly,
and falls back to it for what it cannot batch or for an untested torchvision."""

from __future__ import annotations

from pathlib import Path

import numpy as np
import pytest
import torch

from cvtool.data import batch_augment
from cvtool.data.batch_augment import BatchAugment
from cvtool.data.loaders import sample_seed
from cvtool.data.transforms import build_pipeline

FLIP_AFFINE = [{"RandomHorizontalFlip": {"p": 0.5}},
               {"RandomAffine": {"degrees": 10, "translate": [0.1, 0.1], "scale": [0.9, 1.1]}}]


@pytest.mark.parametrize("spec", [
    FLIP_AFFINE,
    [{"RandomVerticalFlip": {"p": 0.3}},
     {"RandomApply": {"p": 0.6, "transforms": [{"RandomAffine": {"degrees": 0, "translate": [0.125, 0.125]}}]}},
     {"RandomAffine": {"degrees": 20, "shear": [-5, 5, -5, 5], "interpolation": "bilinear", "fill": [9, 0, 3],
                       "center": [3, 5]}}],
])
def test_batched_augmentation_equals_the_per_image_pipeline(spec) -> None:
    pipeline = build_pipeline(spec)
    assert BatchAugment.supports(pipeline)
    images = torch.from_numpy(np.random.default_rng(0).integers(0, 256, (24, 20, 20, 3), np.uint8)).permute(0, 3, 1, 2)
    seeds = [sample_seed(5, 2, i) for i in range(24)]
    expected = []
    for image, seed in zip(images, seeds, strict=True):
        torch.default_generator.manual_seed(seed)
        expected.append(pipeline(image))
    batched = BatchAugment(pipeline)
    state = torch.get_rng_state()
    assert torch.equal(batched(images, seeds), torch.stack(expected))
    assert torch.equal(batched(images[5:11], seeds[5:11]), torch.stack(expected[5:11]))  # batch-independent
    assert torch.equal(torch.get_rng_state(), state)  # the global generator is left alone


@pytest.mark.parametrize("task, augment", [("multiclass", FLIP_AFFINE), ("multiclass", []),
                                           ("multiclass", [{"ColorJitter": {"brightness": 0.3}}]),
                                           ("keypoints", FLIP_AFFINE)])
def test_a_batch_fetch_equals_fetching_each_sample(task, augment, synthetic, make_recipe, tmp_path: Path) -> None:
    from cvtool.data.pipeline import prepare_data, train_dataset
    from cvtool.runs.recipes import load_recipe
    from cvtool.tasks import get_task

    recipe = load_recipe(make_recipe(tmp_path, synthetic(task, n=60, size=16), augment=augment))
    train_set = train_dataset(prepare_data(recipe.data, get_task(task), recipe.seed, ("train",), progress=False), get_task(task),
                              recipe.augment, recipe.seed)
    keys = [(2, 7), (2, 0), (2, 3), (5, 7)]
    batch = train_set.__getitems__(keys)
    expected = torch.utils.data.default_collate([train_set[key] for key in keys])
    assert len(batch) == 3
    for got, want in zip(batch, expected, strict=True):
        assert got.dtype == want.dtype and torch.equal(got, want)


def test_unsupported_pipelines_fall_back_to_per_image() -> None:
    assert not BatchAugment.supports(build_pipeline([{"ColorJitter": {"brightness": 0.2}}]))
    assert not BatchAugment.supports(build_pipeline(
        [{"RandomApply": {"transforms": [{"GaussianBlur": {"kernel_size": 3}}]}}]))


def test_an_untested_torchvision_uses_the_per_image_path(monkeypatch: pytest.MonkeyPatch) -> None:
    import torchvision

    pipeline = build_pipeline(FLIP_AFFINE)
    assert BatchAugment.supports(pipeline)
    batch_augment._private_kernels.cache_clear()
    monkeypatch.setattr(torchvision, "__version__", "0.99.0")
    try:
        assert not BatchAugment.supports(pipeline)
    finally:
        batch_augment._private_kernels.cache_clear()


def test_the_installed_torchvision_is_in_the_tested_range() -> None:
    import torchvision

    version = tuple(int(v) for v in torchvision.__version__.split("+")[0].split(".")[:2])
    low, high = batch_augment.TESTED_TORCHVISION
    assert low <= version <= high


def _device_constructions(monkeypatch: pytest.MonkeyPatch) -> list[object]:
    """Records every `torch.tensor(data, device=...)`: on CUDA each one waits for the device."""
    made: list[object] = []
    plain = torch.tensor

    def recorded(*args, **kwargs):
        if kwargs.get("device") is not None:
            made.append(kwargs["device"])
        return plain(*args, **kwargs)

    monkeypatch.setattr(torch, "tensor", recorded)
    return made


def test_applying_a_plan_builds_no_tensor_on_the_device_from_host_data(monkeypatch: pytest.MonkeyPatch) -> None:
    spec = [FLIP_AFFINE[0], {"RandomAffine": {**FLIP_AFFINE[1]["RandomAffine"], "interpolation": "nearest"}}]
    augment = BatchAugment(build_pipeline(spec))
    images = torch.from_numpy(np.random.default_rng(0).integers(0, 256, (16, 3, 12, 12), np.uint8))
    plan = augment.draw([sample_seed(1, 2, i) for i in range(16)], 12, 12)
    assert 0 < sum(params[0] is not None for params in plan.drawn) < 16  # some rows flipped, not all
    expected = augment.apply(images, plan)
    made = _device_constructions(monkeypatch)
    assert torch.equal(augment.apply(images, plan), expected)
    assert made == []  # row indices and affine matrices: built on the host, copied with non_blocking


@pytest.mark.parametrize("mode", ["nearest", "bilinear"])
@pytest.mark.parametrize("fill", [None, 0, [9.0, 0.0, 3.0]])
def test_the_device_grid_transform_equals_torchvisions(mode: str, fill, monkeypatch: pytest.MonkeyPatch) -> None:
    _, _, apply_grid_transform, _, _ = batch_augment._private_kernels()
    images = torch.from_numpy(np.random.default_rng(1).integers(0, 256, (5, 3, 10, 10), np.uint8))
    grid = torch.rand(5, 10, 10, 2, generator=torch.Generator().manual_seed(0)) * 2.4 - 1.2  # partly outside
    expected = apply_grid_transform(images, grid, mode, fill)
    made = _device_constructions(monkeypatch)
    assert torch.equal(batch_augment.grid_transform(images, grid, mode, fill), expected)
    assert made == []
