"""`cvtool tta`: one pass without transforms is plain evaluation exactly; keypoints come back to
the original frame (flip pairs swapped back); vote vs mean; determinism; one-line errors."""

from __future__ import annotations

import re
from pathlib import Path

import numpy as np
import pytest
import torch
from conftest import write_recipe
from typer.testing import CliRunner

from cvtool.cli.main import app
from cvtool.evaluation.evaluate import evaluate_split, load_splits
from cvtool.evaluation.tta import tta_outputs
from cvtool.model_card import ModelMeta
from cvtool.recipe.load import recipe_from_dict
from cvtool.recipe.schema import TTAConfig
from cvtool.runs.model import LoadedModel, load_model
from cvtool.tasks import Multiclass, get_task

FLIP = {"RandomHorizontalFlip": {"p": 0.5}}


@pytest.fixture(scope="module")
def runs(tmp_path_factory, synthetic) -> dict[str, Path]:
    """Tiny one-epoch runs trained with horizontal flips (keypoints: with flip_pairs)."""
    threads = torch.get_num_threads()
    torch.set_num_threads(1)  # shared machine
    out = tmp_path_factory.mktemp("tta-runs")
    extra = {"multiclass": {}, "keypoints": {"data": {"flip_pairs": [[0, 1]]}}}
    result = {}
    for task, sections in extra.items():
        recipe = write_recipe(out, synthetic(task, n=80), name=task, augment=[FLIP], **sections)
        run = CliRunner().invoke(app, ["train", str(recipe), "--out", str(out / task), "--quiet"])
        assert run.exit_code == 0, run.output
        result[task] = out / task
    yield result
    torch.set_num_threads(threads)


@pytest.mark.parametrize("task", ["multiclass", "keypoints"])
def test_one_pass_without_transforms_equals_plain_exactly(runs, task):
    loaded = load_model(runs[task])
    bundle = load_splits(loaded, ("test",))
    plain = evaluate_split(loaded, "test", bundle=bundle)
    for aggregate in ("vote", "mean"):
        outputs = tta_outputs(loaded, bundle.splits["test"], 1, aggregate, seed=5, transforms=[])
        assert outputs.dtype == plain.outputs.dtype and np.array_equal(outputs, plain.outputs)
    loaded.recipe = loaded.recipe.model_copy(update={"tta": TTAConfig(transforms=[])})  # `tta.transforms: []`
    assert np.array_equal(tta_outputs(loaded, bundle.splits["test"], 1), plain.outputs)


def test_cli_plain_vs_tta_side_by_side(runs):
    same = CliRunner().invoke(app, ["tta", str(runs["multiclass"]), "--passes", "1", "--no-transforms"])
    assert same.exit_code == 0, same.output
    row = re.search(r"│ accuracy\s+│\s+([0-9.]+) │\s+([0-9.]+) │\s+(-?[0-9.]+) │", same.output)
    assert row and row.group(1) == row.group(2) and float(row.group(3)) == 0.0, same.output
    result = CliRunner().invoke(app, ["tta", str(runs["keypoints"]), "--passes", "3", "--aggregate", "mean",
                                      "--seed", "1"])
    assert result.exit_code == 0, result.output
    assert "TTA x3 (mean)" in result.output and "gain" in result.output and "rmse" in result.output


def test_deterministic_for_a_seed_whatever_the_batch_size(runs):
    loaded = load_model(runs["multiclass"])
    images = load_splits(loaded, ("test",)).splits["test"].images
    first = tta_outputs(loaded, images, 4, "mean", seed=3)
    assert np.array_equal(first, tta_outputs(loaded, images, 4, "mean", seed=3))
    np.testing.assert_allclose(first, tta_outputs(loaded, images, 4, "mean", seed=3, batch_size=5), rtol=1e-5)
    assert not np.array_equal(first, tta_outputs(loaded, images, 4, "mean", seed=4))


class BrightestPoints(torch.nn.Module):
    """Point c = the centre of the brightest pixel of channel c, normalized to [-1, 1]."""

    def __init__(self, points: int = 2) -> None:
        super().__init__()
        self.points = points
        self.unused = torch.nn.Parameter(torch.zeros(1))

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        n, _, h, w = x.shape
        coords = []
        for c in range(self.points):
            flat = x[:, c].reshape(n, -1).argmax(dim=1)
            coords += [((flat % w).float() + 0.5) / w * 2 - 1, ((flat // w).float() + 0.5) / h * 2 - 1]
        return torch.stack(coords, dim=1)


def stub(tmp_path: Path, model: torch.nn.Module, task: str, transforms: list, flip_pairs=None,
         outputs: int = 4, names=()) -> LoadedModel:
    recipe = recipe_from_dict({"name": "stub", "task": task, "tta": {"transforms": transforms},
                               "data": {"root": str(tmp_path), "image_size": 16, "batch_size": 4}})
    targets = [f"P{i // 2}_{'XY'[i % 2]}" for i in range(outputs)] if task == "keypoints" else []
    meta = ModelMeta(task, list(names), targets, [0.0] * 3, [1.0] * 3, 16, 3, outputs, None, flip_pairs)
    return LoadedModel(model.eval(), recipe, get_task(task), meta, tmp_path / "stub.pt", 0)


def dots(count: int = 3) -> tuple[np.ndarray, np.ndarray]:
    """Images with a red dot at pixel (3, 5) and a green one at (10, 12); their normalized centres."""
    images = np.zeros((count, 16, 16, 3), np.uint8)
    images[:, 5, 3, 0] = 255
    images[:, 12, 10, 1] = 255
    red, green = np.array([3.5, 5.5]) / 16 * 2 - 1, np.array([10.5, 12.5]) / 16 * 2 - 1
    return images, np.concatenate([red, green])


@pytest.mark.parametrize(("flip_pairs", "order"), [(None, [0, 1, 2, 3]), ([[0, 1]], [2, 3, 0, 1])])
def test_keypoint_flip_returns_original_frame_and_swaps_pairs(tmp_path, flip_pairs, order):
    images, expected = dots()
    plain = tta_outputs(stub(tmp_path, BrightestPoints(), "keypoints", []), images, 1)
    np.testing.assert_allclose(plain, np.tile(expected, (3, 1)), atol=1e-6)
    flip = [{"RandomHorizontalFlip": {"p": 1.0}}]
    loaded = stub(tmp_path, BrightestPoints(), "keypoints", flip, flip_pairs)
    mirrored = loaded.model(torch.from_numpy(images).permute(0, 3, 1, 2).flip(-1).float())
    assert mirrored[0, 0].item() == pytest.approx(12.5 / 16 * 2 - 1)  # what the model sees
    for aggregate in ("vote", "mean"):
        outputs = tta_outputs(loaded, images, 3, aggregate)
        np.testing.assert_allclose(outputs, np.tile(expected[order], (3, 1)), atol=1e-5)


def test_keypoints_mapped_back_through_each_pass_affine(tmp_path):
    images, expected = dots()
    shift = [{"RandomAffine": {"degrees": 0, "translate": [0.2, 0.2]}}]
    loaded = stub(tmp_path, BrightestPoints(), "keypoints", shift)
    outputs = tta_outputs(loaded, images, 4, "mean", seed=2)
    np.testing.assert_allclose(outputs, np.tile(expected, (3, 1)), atol=1e-5)


class SideClassifier(torch.nn.Module):
    """Class 0 with p=0.55 when the marker is in the left half, class 1 with p=0.99 when mirrored."""

    def __init__(self) -> None:
        super().__init__()
        self.unused = torch.nn.Parameter(torch.zeros(1))

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        left = x[:, 0, :, :8].sum(dim=(1, 2)) > x[:, 0, :, 8:].sum(dim=(1, 2))
        probs = torch.where(left[:, None], torch.tensor([0.55, 0.45]), torch.tensor([0.01, 0.99]))
        return probs.log()


class Recording(Multiclass):
    def __init__(self) -> None:
        self.stacks: list[np.ndarray] = []

    def aggregate(self, stack, mode, threshold=0.5):
        self.stacks.append(stack)
        return super().aggregate(stack, mode, threshold)


def test_vote_is_the_majority_of_passes_and_mean_the_mean_probability(tmp_path):
    images = np.zeros((40, 16, 16, 3), np.uint8)
    images[np.arange(40), np.arange(40) % 16, 2, 0] = 255
    results = {}
    for aggregate in ("vote", "mean"):
        loaded = stub(tmp_path, SideClassifier(), "multiclass", [FLIP], outputs=2, names=("left", "right"))
        loaded.task = Recording()
        outputs = tta_outputs(loaded, images, 5, aggregate, seed=7)
        stack = np.concatenate(loaded.task.stacks, axis=1)
        results[aggregate] = (outputs, stack)
    (vote, stack), (mean, same_stack) = results["vote"], results["mean"]
    assert np.array_equal(stack, same_stack)
    majority = (stack.argmax(axis=2) == 1).sum(axis=0) >= 3
    assert np.array_equal(vote.argmax(axis=1), majority.astype(int))
    np.testing.assert_allclose(mean, stack.mean(axis=0), rtol=1e-6)
    assert (vote.argmax(axis=1) != mean.argmax(axis=1)).any()  # a weak majority loses the mean


@pytest.mark.parametrize(("args", "message"), [
    (["--aggregate", "median"], "unknown mode 'median'"),
    (["--passes", "0"], "at least 1 pass"),
    (["--split", "holdout"], "unknown split 'holdout'"),
    (["--checkpoint", "epoch_007"], "no checkpoint 'epoch_007'"),
])
def test_user_errors_are_one_line_exit_2(runs, args, message):
    result = CliRunner().invoke(app, ["tta", str(runs["multiclass"]), *args])
    assert result.exit_code == 2
    assert message in result.output and len(result.output.strip().splitlines()) == 1, result.output
