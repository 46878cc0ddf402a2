"""`data.resize: squash | crop | pad`: one frame mapping (cvtool.tasks.frame) used by decoding, training
targets, metrics, predict and the raw-input ONNX graph; keypoints round-trip to original pixels."""

from __future__ import annotations

import csv
import hashlib
from collections.abc import Callable
from pathlib import Path
from typing import Any

import numpy as np
import pytest
import torch
from PIL import Image
from typer.testing import CliRunner

from cvtool.cli.main import app
from cvtool.data.generate import POINT_COLOURS
from cvtool.data.images import decode
from cvtool.data.pipeline import eval_dataset, prepare_data
from cvtool.runs.recipes import load_recipe
from cvtool.tasks import get_task
from cvtool.tasks.frame import frame_box, frame_boxes, from_frame, outside_frame, to_frame

MODES = ("squash", "crop", "pad")
SIZE = 32


def test_frames_of_a_landscape_image() -> None:
    assert frame_box(40, 30, "squash") == (0, 0, 40, 30)
    assert frame_box(40, 30, "crop") == (5, 0, 30, 30)
    assert frame_box(40, 30, "pad") == (0, -5, 40, 40)
    assert frame_box(31, 40, "crop") == (0, 4, 31, 31) and frame_box(31, 40, "pad") == (-4, 0, 40, 40)


@pytest.mark.parametrize("mode", MODES)
def test_points_map_both_ways_exactly(mode: str) -> None:
    rng = np.random.default_rng(0)
    sizes = rng.integers(10, 90, (50, 2))
    points = rng.uniform(0, 1, (50, 6)) * np.tile(sizes, 3)
    frames = frame_boxes(sizes, mode)
    assert np.array_equal(frames, [frame_box(int(w), int(h), mode) for w, h in sizes])
    assert np.abs(from_frame(to_frame(points, frames), frames) - points).max() < 1e-9
    corners = to_frame(np.concatenate([frames[:, :2], frames[:, :2] + frames[:, 2:]], axis=1), frames)
    assert np.allclose(corners, np.tile([-1.0, -1.0, 1.0, 1.0], (50, 1)))


@pytest.mark.parametrize("mode", MODES)
def test_decode_renders_the_frame(mode: str, tmp_path: Path) -> None:
    pixels = np.random.default_rng(1).integers(1, 256, (30, 40, 3), dtype=np.uint8)  # no zero pixel
    Image.fromarray(pixels).save(tmp_path / "a.png")
    image, original = decode(tmp_path / "a.png", 3, 20, mode)
    assert original == (40, 30) and image.shape == (20, 20, 3)
    box = {"squash": (0, 0, 40, 30), "crop": (5, 0, 35, 30), "pad": (0, -5, 40, 35)}[mode]
    expected = np.asarray(Image.fromarray(pixels).crop(box).resize((20, 20), Image.BILINEAR))
    assert np.array_equal(image, expected)
    if mode == "pad":  # 5 of 40 rows above and below are zeros: 2.5 of 20 output rows
        assert (image[:2] == 0).all() and (image[-2:] == 0).all() and (image[3:-3] > 0).any(axis=-1).all()


def mark_centres(image: np.ndarray) -> np.ndarray:
    """K x 2 centroids (continuous pixel coordinates) of the generated point marks: each colour's
    own channel stands out from the others by more than the background ever does (noise 0-69)."""
    img = image.astype(np.float64)
    centres = []
    for k in range(len(POINT_COLOURS)):
        others = np.delete(img, k, axis=2).max(axis=2)
        weight = np.clip(img[:, :, k] - others - 80.0, 0, None)
        ys, xs = np.mgrid[: img.shape[0], : img.shape[1]]
        total = weight.sum()
        centres.append([(weight * (xs + 0.5)).sum() / total, (weight * (ys + 0.5)).sum() / total] if total
                       else [np.nan, np.nan])
    return np.asarray(centres)


def recipe_for(tmp_path: Path, make_recipe: Callable[..., Path], data: dict[str, Any], mode: str) -> Path:
    return make_recipe(tmp_path, data, name=f"kp-{mode}", data={"image_size": SIZE, "resize": mode},
                       optim={"name": "adam", "lr": 1e-3}, train={"max_batches": 2})


@pytest.mark.parametrize("mode", MODES)
def test_training_targets_sit_on_the_marks_the_model_sees(mode: str, tmp_path: Path, make_recipe,
                                                          synthetic: Callable[..., dict[str, Any]]) -> None:
    data = synthetic("keypoints", n=40, size=SIZE)
    recipe = load_recipe(recipe_for(tmp_path, make_recipe, data, mode))
    bundle = prepare_data(recipe.data, get_task("keypoints"), recipe.seed, ("train",), progress=False)
    dataset = eval_dataset(bundle, "train", get_task("keypoints"))
    split = bundle.splits["train"]
    assert len({tuple(s) for s in split.sizes}) > 5 and len({round(w / h, 2) for w, h in split.sizes}) > 5
    frames, checked = split.frames, 0
    for i in range(len(split)):
        seen = mark_centres(np.asarray(split.images[i]))  # model pixels
        truth = split.targets[i].reshape(-1, 2)
        inside = ~outside_frame(dataset.targets[i:i + 1])[0]
        scale = frames[i, 2:] / SIZE  # original pixels per model pixel
        radius = min(split.sizes[i]) // 12 + 1
        whole = inside & (np.abs(dataset.targets[i].reshape(-1, 2)) < 1 - 2 * radius / frames[i, 2:]).all(axis=1)
        target_model = (dataset.targets[i].reshape(-1, 2) + 1) / 2 * SIZE
        assert np.abs(seen[whole] - target_model[whole]).max(initial=0) * scale.max() < 0.5
        back = from_frame(seen[whole][None].reshape(1, -1) / SIZE * 2 - 1, frames[i:i + 1]).reshape(-1, 2)
        assert np.abs(back - truth[whole]).max(initial=0) < 0.5  # in original pixels
        checked += int(whole.sum())
    assert checked >= 2 * len(split)
    if mode == "crop":  # the generated aspect ratios push some marks out of the centred square
        assert outside_frame(dataset.targets).sum() > 0


@pytest.fixture(scope="module")
def runs(tmp_path_factory: pytest.TempPathFactory, synthetic: Callable[..., dict[str, Any]]) -> dict[str, Path]:
    from conftest import write_recipe

    out = tmp_path_factory.mktemp("resize-runs")
    result = {}
    for mode in MODES:
        recipe = write_recipe(out, synthetic("keypoints", n=40, size=SIZE), name=f"kp-{mode}",
                              data={"image_size": SIZE, "resize": mode}, optim={"name": "adam", "lr": 1e-3},
                              train={"max_batches": 2})
        run = CliRunner().invoke(app, ["train", str(recipe), "--out", str(out / mode), "--quiet"])
        assert run.exit_code == 0, run.output
        result[mode] = out / mode
    return result


@pytest.mark.parametrize("mode", MODES)
def test_predict_returns_the_true_targets_in_original_pixels(mode: str, runs: dict[str, Path], tmp_path: Path,
                                                             monkeypatch: pytest.MonkeyPatch) -> None:
    """A model that outputs each image's true targets as training encodes them: predict must write
    the CSV's own original-pixel targets back (cut-off points included, and reported)."""
    from cvtool.inference.predict import CheckpointPredictor
    from cvtool.runs.model import load_model

    loaded = load_model(runs[mode])
    bundle = prepare_data(loaded.recipe.data, loaded.task, loaded.recipe.seed, ("test",), progress=False,
                          normalization=(loaded.meta.mean, loaded.meta.std))
    dataset = eval_dataset(bundle, "test", loaded.task)
    split = bundle.splits["test"]
    encoded = {hashlib.sha1(np.asarray(split.images[i]).tobytes()).hexdigest(): dataset.targets[i]
               for i in range(len(split))}

    def oracle(self: Any, images: np.ndarray) -> np.ndarray:
        return np.stack([encoded[hashlib.sha1(image.tobytes()).hexdigest()] for image in images])

    monkeypatch.setattr(CheckpointPredictor, "__call__", oracle)
    root = Path(loaded.recipe.data.root)
    out = tmp_path / "submission.csv"
    result = CliRunner().invoke(app, ["predict", str(runs[mode]), str(root / "test.csv"), "--out", str(out),
                                      "--images-dir", str(root / "images")])
    assert result.exit_code == 0, result.output
    with (root / "test.csv").open(newline="") as handle:
        truth = {row["image"]: [float(v) for k, v in row.items() if k != "image"] for row in csv.DictReader(handle)}
    with out.open(newline="") as handle:
        predicted = {row["image"]: [float(v) for k, v in row.items() if k != "image"] for row in csv.DictReader(handle)}
    assert predicted.keys() == truth.keys()
    assert max(abs(a - b) for key in truth for a, b in zip(truth[key], predicted[key], strict=True)) < 0.5
    cut = int(outside_frame(dataset.targets).sum())
    assert (cut > 0) == (mode == "crop")
    assert (f"{cut} predicted keypoints lie outside the model frame" in result.output) == bool(cut)


@pytest.mark.parametrize("mode", MODES)
def test_raw_input_onnx_matches_the_checkpoint_path(mode: str, runs: dict[str, Path], tmp_path: Path) -> None:
    from cvtool.inference.export import export_onnx
    from cvtool.inference.onnx_runtime import create_session
    from cvtool.inference.predict import CheckpointPredictor

    report = export_onnx(runs[mode], tmp_path / "raw.onnx", raw_input=True)
    assert report.card.resize == mode and report.card.raw_input
    session, checkpoint = create_session(tmp_path / "raw.onnx"), CheckpointPredictor(runs[mode])
    paths = list(load_recipe(runs[mode] / "recipe.yaml").data.root.glob("images/*.png"))[:12]
    worst = 0.0
    for path in paths:  # native sizes and aspect ratios: the graph crops / pads and resizes itself
        native, original = decode(path, 3, None)
        (raw,) = session.run(["logits"], {"images": native[None]})
        with torch.inference_mode():
            want = checkpoint(decode(path, 3, SIZE, mode)[0][None])
        frames = frame_boxes(np.asarray([original]), mode)
        worst = max(worst, float(np.abs(from_frame(raw, frames) - from_frame(want, frames)).max()))
    assert worst < 0.5  # original pixels; PIL's uint8 resize vs the graph's float resize
