"""TTA with pixel transforms, not only flips and affines: seed 002's step 16 ran its 10 TTA passes
with the step's whole training pipeline, Gaussian blur included; every pixel transform a recipe's
`augment` can hold runs in `tta.transforms` too, per image under the pass's seed."""

from __future__ import annotations

from pathlib import Path

import numpy as np
import pytest
import torch
from test_tta import BrightestPoints, dots, stub
from torchvision.transforms.v2 import functional as F

from cvtool.data.loaders import sample_seed
from cvtool.data.transforms import build_pipeline, geometric_part
from cvtool.evaluation.tta import tta_outputs, tta_transforms
from cvtool.runs.recipes import load_recipe

RECIPES = Path(__file__).resolve().parent.parent / "recipes"


class Recorder(torch.nn.Module):
    """Keeps every batch it sees (the normalized TTA inputs); two constant logits."""

    def __init__(self) -> None:
        super().__init__()
        self.unused = torch.nn.Parameter(torch.zeros(1))
        self.seen: list[torch.Tensor] = []

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        self.seen.append(x.clone())
        return torch.zeros(len(x), 2)


def textured(count: int = 6, size: int = 16) -> np.ndarray:
    """Random pixels: a 3 x 3 blur changes every image (a constant image is blur-invariant)."""
    return np.random.default_rng(0).integers(0, 256, (count, size, size, 3), dtype=np.uint8)


def recorded_passes(transforms: list | None, images: np.ndarray, passes: int, tmp_path: Path,
                    recipe_tta: list | None = None) -> list[torch.Tensor]:
    loaded = stub(tmp_path, Recorder(), "multiclass", recipe_tta if recipe_tta is not None else [], outputs=2,
                  names=("a", "b"))
    tta_outputs(loaded, images, passes, "vote", seed=3, transforms=transforms)
    # mean 0, std 1: the model sees pixels / 255
    return [(batch * 255).round().to(torch.uint8) for batch in loaded.model.seen]


def test_step16_tta_passes_blur_on_top_of_the_geometric_ones(tmp_path: Path) -> None:
    recipe = load_recipe(RECIPES / "002_small_images" / "16_40_epochs.yaml")
    transforms = tta_transforms(recipe)
    assert recipe.tta.passes == 10 and transforms == list(recipe.augment)
    images = textured()
    full = recorded_passes(transforms, images, recipe.tta.passes, tmp_path)
    geometric = recorded_passes(geometric_part(recipe.augment), images, recipe.tta.passes, tmp_path)
    assert len(full) == len(geometric) == recipe.tta.passes
    blurred = plain = 0
    for with_blur, without in zip(full, geometric, strict=True):
        for image, base in zip(with_blur, without, strict=True):  # the blur is drawn after the geometry
            if torch.equal(image, base):
                plain += 1
            else:
                assert torch.equal(image, F.gaussian_blur(base, [3, 3], [0.6, 0.6]))
                blurred += 1
    assert blurred + plain == 60 and 8 <= blurred <= 30  # p 0.3 of 60


def test_step17_tta_follows_its_augment_without_blur() -> None:
    recipe = load_recipe(RECIPES / "002_small_images" / "17_dropout07.yaml")
    assert recipe.tta.transforms is None and tta_transforms(recipe) == list(recipe.augment)
    assert "GaussianBlur" not in str(recipe.augment)


PIXEL_TRANSFORMS = [
    {"GaussianBlur": {"kernel_size": 3, "sigma": [0.1, 2.0]}},
    {"ColorJitter": {"brightness": 0.4, "contrast": 0.4, "saturation": 0.4, "hue": 0.1}},
    {"RandomSolarize": {"threshold": 102, "p": 0.5}},
    {"RandomAutocontrast": {"p": 0.5}},
    {"RandomEqualize": {"p": 0.5}},
    {"RandomPosterize": {"bits": 3, "p": 0.5}},
    {"RandomAdjustSharpness": {"sharpness_factor": 2.0, "p": 0.5}},
    {"RandomInvert": {"p": 0.5}},
    {"RandomGrayscale": {"p": 0.5}},
    {"CLAHE": {"clip_limit": 4.0, "tile_grid_size": [4, 4], "p": 0.5}},
]


@pytest.mark.parametrize("spec", PIXEL_TRANSFORMS, ids=lambda spec: next(iter(spec)))
def test_any_pixel_transform_runs_per_image_under_the_pass_seed(spec: dict, tmp_path: Path) -> None:
    transforms = [{"RandomHorizontalFlip": {"p": 0.5}}, spec]
    images = textured(4)
    seen = recorded_passes(None, images, 3, tmp_path, recipe_tta=transforms)  # from the recipe's tta.transforms
    pipeline = build_pipeline(transforms)
    changed = 0
    for p, batch in enumerate(seen):
        for i, image in enumerate(batch):
            torch.manual_seed(sample_seed(3, p, i))
            expected = pipeline(torch.from_numpy(images[i]).permute(2, 0, 1).contiguous())
            assert torch.equal(image, expected), (p, i)
            changed += not torch.equal(image, torch.from_numpy(images[i]).permute(2, 0, 1))
    assert changed > 0


def test_keypoints_stay_in_place_under_pixel_transforms(tmp_path: Path) -> None:
    images, expected = dots()
    transforms = [{"GaussianBlur": {"kernel_size": 3, "sigma": 0.6}}, {"ColorJitter": {"brightness": 0.3}},
                  {"CLAHE": {"p": 1.0}}]
    outputs = tta_outputs(stub(tmp_path, BrightestPoints(), "keypoints", transforms), images, 4, "mean", seed=1)
    np.testing.assert_allclose(outputs, np.tile(expected, (len(images), 1)), atol=1e-5)
