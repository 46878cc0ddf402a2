"""cvtool's `CLAHE` transform (seed 004's albu.CLAHE): OpenCV's equalization bit for bit on real
photographs, the colour path next to albumentations' cv2 pipeline, per-sample seeding, keypoints
passing through, and its name in recipes (per-sample path, not batched)."""

from __future__ import annotations

from pathlib import Path

import matplotlib
import numpy as np
import pytest
import torch
from PIL import Image

from cvtool.data.batch_augment import BatchAugment
from cvtool.data.cache import DecodedSplit
from cvtool.data.clahe import CLAHE, equalize, equalize_image, equalize_rgb, lightness_levels
from cvtool.data.decoding import DECODED, Decoded
from cvtool.data.formats import Split
from cvtool.data.loaders import SampleDataset, sample_seed
from cvtool.data.transforms import apply_with_points, build_pipeline, build_transform, transform_names
from cvtool.errors import CvtoolError
from cvtool.tasks import get_task

# real photographs shipped with matplotlib (a dependency): a portrait, a product shot, a logo
PHOTOS = ("grace_hopper.jpg", "Minduka_Present_Blue_Pack.png", "logo2.png")


def photo(name: str, mode: str = "RGB", size: tuple[int, int] | None = None) -> np.ndarray:
    image = Image.open(Path(matplotlib.get_data_path()) / "sample_data" / name).convert(mode)
    return np.asarray(image.resize(size, Image.BILINEAR) if size else image)


def test_equalize_is_opencv_clahe_exactly_on_photographs() -> None:
    cv2 = pytest.importorskip("cv2")
    checked = 0
    for name in PHOTOS:
        for size in (None, (64, 64), (77, 61), (224, 224)):  # (77, 61): tiles do not divide it
            grey = photo(name, "L", size)
            for clip in (0.0, 1.0, 2.7, 4.0, 40.0):
                for grid in ((8, 8), (3, 5)):
                    expected = cv2.createCLAHE(clipLimit=clip, tileGridSize=grid).apply(grey)
                    assert np.array_equal(equalize(grey, clip, grid), expected), (name, size, clip, grid)
                    checked += 1
    assert checked == 3 * 4 * 5 * 2


def test_lightness_within_one_level_of_opencv_lab() -> None:
    cv2 = pytest.importorskip("cv2")
    for name in PHOTOS:
        image = photo(name)
        difference = lightness_levels(image).astype(int) - cv2.cvtColor(image, cv2.COLOR_RGB2LAB)[..., 0]
        assert np.abs(difference).max() <= 1, name


def test_colour_clahe_close_to_albumentations_pipeline() -> None:
    """albumentations: RGB -> 8-bit Lab, CLAHE on L, back (all cv2). Its 8-bit Lab tables land within
    a level of the exact L* (above) and its round trip alone moves pixels by up to 7 levels; measured
    here, the mean difference is at most 14 % of the mean change CLAHE makes."""
    cv2 = pytest.importorskip("cv2")
    for name in PHOTOS:
        image = photo(name)
        for clip in (1.0, 4.0):
            lab = cv2.cvtColor(image, cv2.COLOR_RGB2LAB)
            lab[..., 0] = cv2.createCLAHE(clipLimit=clip, tileGridSize=(8, 8)).apply(lab[..., 0])
            reference = cv2.cvtColor(lab, cv2.COLOR_LAB2RGB).astype(int)
            effect = np.abs(image - reference).mean()
            assert effect > 3.0, (name, clip)  # CLAHE visibly changes every photo
            assert np.abs(equalize_rgb(image, clip) - reference).mean() < 0.2 * effect, (name, clip)


def test_neutral_colours_stay_neutral() -> None:
    grey = np.repeat(photo("grace_hopper.jpg", "L", (96, 80))[..., None], 3, axis=2)
    out = equalize_rgb(grey, 4.0).astype(int)
    assert np.abs(out - grey).mean() > 3.0
    assert np.abs(out[..., 0] - out[..., 1]).max() <= 1 and np.abs(out[..., 1] - out[..., 2]).max() <= 1


def test_transform_draws_p_and_clip_limit_from_torch() -> None:
    image = torch.from_numpy(photo("Minduka_Present_Blue_Pack.png", size=(48, 40)).copy()).permute(2, 0, 1)
    always = CLAHE(clip_limit=[1.0, 4.0], p=1.0)
    for seed in range(3):
        torch.manual_seed(seed)
        out = always(image)
        torch.manual_seed(seed)
        torch.rand(1)  # the p draw
        clip = float(torch.empty(1).uniform_(1.0, 4.0))
        assert np.array_equal(out.numpy(), equalize_image(image.numpy(), clip, (8, 8)))
    torch.manual_seed(0)
    assert torch.equal(CLAHE(p=0.0)(image), image)
    half = CLAHE(clip_limit=3.0, p=0.5)  # albumentations' form: a number c means [1, c]
    outcomes = []
    for seed in range(20):
        torch.manual_seed(seed)
        outcomes.append(torch.equal(half(image), image))
    assert 3 <= sum(outcomes) <= 17
    grey = image[:1]
    torch.manual_seed(0)
    assert CLAHE(p=1.0)(grey).shape == grey.shape


def test_keypoints_pass_through_unchanged() -> None:
    image = torch.from_numpy(photo("grace_hopper.jpg", size=(32, 32)).copy()).permute(2, 0, 1)
    points = np.array([[3.5, 7.25], [20.0, 11.5]], np.float32)
    pipeline = build_pipeline([{"CLAHE": {"p": 1.0}}])
    torch.manual_seed(0)
    out, moved, affine = apply_with_points(pipeline, image, points, 32)
    np.testing.assert_allclose(moved, points, atol=1e-6)
    np.testing.assert_allclose(affine, [[1, 0, 0], [0, 1, 0]], atol=1e-6)
    assert not torch.equal(out, image)


def test_recipe_name_runs_per_sample_under_the_sample_seed() -> None:
    assert "CLAHE" in transform_names()
    specs = [{"RandomHorizontalFlip": {"p": 0.5}},
             {"RandomApply": {"transforms": [{"CLAHE": {"clip_limit": 4.0, "tile_grid_size": [4, 4]}}], "p": 0.9}}]
    pipeline = build_pipeline(specs)
    assert not BatchAugment.supports(pipeline)  # per sample, with its seed
    images = np.stack([photo(name, size=(24, 24)) for name in PHOTOS])
    decoded = Decoded(Split("train", [Path(name) for name in PHOTOS], np.array([0, 1, 2])), "clahe", images, None,
                      24, 3, "squash")
    decoded.sizes[:], decoded.state[:] = 24, DECODED  # decoded already: the photos above
    split = DecodedSplit("train", decoded, None, np.array([0, 1, 2]))
    dataset = SampleDataset(split, get_task("multiclass"), pipeline, seed=5)
    batch, _, _ = dataset.__getitems__([(2, 0), (2, 1), (2, 2)])
    for index in range(3):
        alone, _, _ = dataset[(2, index)]
        torch.manual_seed(sample_seed(5, 2, index))
        direct = pipeline(torch.from_numpy(images[index].copy()).permute(2, 0, 1))
        assert torch.equal(batch[index], alone) and torch.equal(alone, direct)
    changed = [not torch.equal(dataset[(epoch, 0)][0], torch.from_numpy(images[0].copy()).permute(2, 0, 1))
               for epoch in range(8)]
    assert any(changed)


@pytest.mark.parametrize(("spec", "message"), [
    ({"CLAHE": {"clip": 2}}, "augment[0].CLAHE.clip: unknown argument"),
    ({"CLAHE": {"clip_limit": 0.5}}, "clip_limit must be a number >= 1"),
    ({"CLAHE": {"tile_grid_size": [8]}}, "tile_grid_size must be two positive tile counts"),
    ({"CLAHE": {"p": 1.5}}, "p must be in [0, 1]"),
    ({"CLAH": {}}, "did you mean CLAHE"),
])
def test_recipe_mistakes_are_one_line(spec: dict, message: str) -> None:
    with pytest.raises(CvtoolError) as error:
        build_transform(spec, "augment[0]")
    assert message in str(error.value)


def test_float_images_are_refused() -> None:
    with pytest.raises(TypeError, match="uint8"):
        torch.manual_seed(0)
        CLAHE(p=1.0)(torch.rand(3, 16, 16))
