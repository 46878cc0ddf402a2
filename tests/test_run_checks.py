"""Numbers that mean what they say (thresholds, losses, TTA gain), resume rules, and settings that
cannot work refused with the reason."""

from __future__ import annotations

import csv
import json
import re
from pathlib import Path

import numpy as np
import pytest
import torch
from typer.testing import CliRunner

from cvtool.cli.launch import run_recipe
from cvtool.cli.main import app
from cvtool.engine.checkpoint import update_meta
from cvtool.errors import CvtoolError
from cvtool.evaluation.thresholds import tune_thresholds
from cvtool.runs.recipes import load_recipe

ANSI = re.compile(r"\x1b\[[0-9;]*m")


def cli(*args: object) -> object:
    return CliRunner().invoke(app, [str(a) for a in args])


def text(result: object) -> str:
    return ANSI.sub("", result.output).replace("\n", " ")


def strict_json(path: Path) -> dict:
    def refuse(name: str) -> None:
        raise ValueError(f"{path}: {name} is not JSON")

    return json.loads(path.read_text(), parse_constant=refuse)


def test_a_class_without_positives_keeps_the_default_threshold() -> None:
    rng = np.random.default_rng(0)
    targets = (rng.random((60, 3)) < 0.4).astype(np.float32)
    targets[:, 2] = 0  # never positive in the tuning split
    outputs = (0.01 + targets * 0.05 + rng.random((60, 3)) * 0.01).astype(np.float32)  # an under-confident model
    outputs[:, 2] = rng.random(60) * 0.1
    for metric in ("f1_macro", "f2"):
        tuned = tune_thresholds(targets, outputs, metric, default=0.5)
        assert tuned.global_threshold < 0.06  # it used to be inherited by the class without positives
        assert tuned.per_class[2] == pytest.approx(0.5)
        assert tuned.at_per_class >= tuned.at_global


def test_val_loss_of_summary_equals_evaluate_with_auto_pos_weight(synthetic, make_recipe, tmp_path) -> None:
    info = synthetic("binary")
    recipe = make_recipe(tmp_path, info, loss={"pos_weight": "auto"}, train={"epochs": 1, "device": "cpu"})
    run_recipe(load_recipe(recipe), tmp_path / "run", quiet=True)
    summary = strict_json(tmp_path / "run" / "summary.json")
    result = cli("evaluate", tmp_path / "run", "--split", "val", "--out", tmp_path / "eval")
    assert result.exit_code == 0, result.output
    metrics = strict_json(tmp_path / "eval" / "metrics.json")
    assert metrics["loss"] == pytest.approx(summary["val"]["loss"], rel=1e-5)
    meta = torch.load(tmp_path / "run" / "checkpoints" / "best.pt", weights_only=True)["meta"]
    assert meta["pos_weight"] > 0  # the training criterion's n_neg / n_pos, kept for evaluate


@pytest.fixture(scope="module")
def keypoint_run(tmp_path_factory, synthetic) -> Path:
    from conftest import write_recipe

    folder = tmp_path_factory.mktemp("kp")
    recipe = write_recipe(folder, synthetic("keypoints"), augment=[{"RandomHorizontalFlip": {"p": 0.5}}],
                          data={"flip_pairs": [[0, 1]]}, train={"epochs": 1, "device": "cpu", "max_batches": 2})
    run_recipe(load_recipe(recipe), folder / "run", quiet=True)
    return folder / "run"


@pytest.mark.parametrize(("pairs", "task", "message"), [
    ([[0, 3]], "keypoints", "data.flip_pairs: point 3 does not exist: the data has 3 points (indices 0 to 2)"),
    ([[0, 1], [1, 2]], "keypoints", "data.flip_pairs: point 1 is in more than one pair"),
    ([[0, 1]], "multiclass", "data.flip_pairs: task multiclass has no points to swap"),
])
def test_flip_pairs_are_checked_against_the_data(pairs, task, message, synthetic, make_recipe, tmp_path) -> None:
    from conftest import one_line_error

    recipe = make_recipe(tmp_path, synthetic(task), augment=[{"RandomHorizontalFlip": {"p": 1.0}}],
                         data={"flip_pairs": pairs}, train={"epochs": 1, "device": "cpu", "max_batches": 2})
    line = one_line_error(CliRunner().invoke(app, ["train", str(recipe), "--out", str(tmp_path / "run"), "--quiet"]))
    assert line.startswith(f"cvtool: {message}"), line
    assert not (tmp_path / "run").exists()


def test_tta_gain_is_positive_when_a_lower_is_better_metric_falls(keypoint_run) -> None:
    from cvtool.evaluation.tta import compare_tta

    result = compare_tta(keypoint_run, "test", 3, "mean", 0, "best", None, False)
    for name in ("rmse", "mse", "mae"):
        assert result.gain[name] == pytest.approx(result.plain[name] - result.tta[name])


@pytest.mark.slow
def test_resume_with_more_epochs_needs_extend_and_keeps_tuned_thresholds(synthetic, make_recipe, tmp_path) -> None:
    info = synthetic("binary")
    recipe = make_recipe(tmp_path, info, train={"epochs": 2, "device": "cpu", "max_batches": 1},
                         schedule={"name": "onecycle"})
    run = tmp_path / "run"
    assert cli("train", recipe, "--out", run, "--quiet").exit_code == 0
    update_meta(run / "checkpoints" / "best.pt", thresholds=[0.3])  # as evaluate --tune-thresholds does
    before = (run / "recipe.yaml").read_text()
    refused = cli("train", "--resume", run, "--set", "train.epochs=4", "--quiet")
    assert refused.exit_code == 2
    assert (f"--resume {run}: train.epochs is 4, the run was planned for 2 (finished); pass --extend"
            in text(refused))
    assert (run / "recipe.yaml").read_text() == before
    tuned_on = torch.load(run / "checkpoints" / "best.pt", weights_only=True)["epoch"]
    extended = cli("train", "--resume", run, "--set", "train.epochs=4", "--extend", "--quiet")
    assert extended.exit_code == 0, extended.output
    assert f"tuned on epoch {tuned_on}'s weights" in text(extended)  # said once, at the resume
    with (run / "metrics.csv").open() as handle:
        assert [row["epoch"] for row in csv.DictReader(handle)] == ["1", "2", "3", "4"]
    for name in ("best", "last"):
        payload = torch.load(run / "checkpoints" / f"{name}.pt", weights_only=True)
        assert payload["meta"]["thresholds"] == pytest.approx([0.3])
        # kept, marked with the epoch they were tuned on: stale for any other epoch's weights
        assert payload["meta"].get("thresholds_epoch", payload["epoch"]) == tuned_on
    stale = cli("evaluate", run, "--checkpoint", "last", "--split", "val")
    assert stale.exit_code == 0 and f"thresholds tuned on epoch {tuned_on}'s" in text(stale), text(stale)
    assert cli("evaluate", run, "--checkpoint", "last", "--split", "val", "--tune-thresholds").exit_code == 0
    retuned = cli("evaluate", run, "--checkpoint", "last", "--split", "val")
    assert "stale" not in text(retuned)
    fewer = cli("train", "--resume", run, "--set", "train.epochs=3", "--extend", "--quiet")
    assert fewer.exit_code == 2 and "adds no epoch to the 4" in text(fewer)


@pytest.mark.slow
def test_a_finished_sweep_extends_every_point_or_refuses(synthetic, make_recipe, tmp_path) -> None:
    recipe = make_recipe(tmp_path, synthetic("multiclass"), sweep={"optim.lr": [0.01, 0.1]},
                         train={"epochs": 1, "device": "cpu", "max_batches": 1})
    run = tmp_path / "sweep"
    assert cli("train", recipe, "--out", run, "--quiet").exit_code == 0
    before = (run / "recipe.yaml").read_bytes()
    refused = cli("train", "--resume", run, "--set", "train.epochs=2", "--quiet")
    assert refused.exit_code == 2 and "pass --extend" in text(refused)  # was: exit 0, nothing trained
    assert (run / "recipe.yaml").read_bytes() == before
    assert cli("train", "--resume", run, "--set", "train.epochs=2", "--extend", "--quiet").exit_code == 0
    points = [p for p in run.iterdir() if (p / "metrics.csv").is_file()]
    assert len(points) == 2
    for point in points:
        with (point / "metrics.csv").open() as handle:
            assert [row["epoch"] for row in csv.DictReader(handle)] == ["1", "2"]


def test_resnet_below_32_px_is_refused_with_the_size_it_needs() -> None:
    from cvtool.models import build_model
    from cvtool.recipe.model_config import ModelConfig

    with pytest.raises(CvtoolError, match=r"data.image_size 16 does not fit resnet18 .*needs at least 32 px"):
        build_model(ModelConfig(arch="resnet18"), 3, 3, 16)
    build_model(ModelConfig(arch="resnet18"), 3, 3, 32)
    build_model(ModelConfig(arch="resnet18", small_input={"remove_maxpool": True}), 3, 3, 16)  # a smaller stem


def test_batch_larger_than_the_training_split_warns_that_it_is_clipped(synthetic, make_recipe, tmp_path) -> None:
    info = synthetic("multiclass")
    recipe = make_recipe(tmp_path, info, data={"batch_size": 500}, train={"epochs": 1, "device": "cpu"})
    result = cli("train", recipe, "--out", tmp_path / "run", "--quiet")
    assert result.exit_code == 0, result.output
    images = info["splits"]["train"]
    assert (f"data.batch_size 500 is larger than the training split ({images} images): each epoch is one batch "
            f"of {images}") in text(result)


def test_export_size_a_flatten_head_cannot_take_is_refused(synthetic, make_recipe, tmp_path) -> None:
    recipe = make_recipe(tmp_path, synthetic("multiclass"), model={"pool": "flatten"},
                         train={"epochs": 1, "device": "cpu", "max_batches": 1})
    run_recipe(load_recipe(recipe), tmp_path / "run", quiet=True)
    result = cli("export", tmp_path / "run", "--onnx", tmp_path / "m.onnx", "--image-size", "24")
    assert result.exit_code == 2
    assert ("--image-size 24: this model's head flattens the feature map, which fixes its input at the 16 px"
            in text(result))
    assert not (tmp_path / "m.onnx").exists()


def test_report_of_runs_of_two_tasks_names_the_groups(keypoint_run, synthetic, make_recipe, tmp_path) -> None:
    recipe = make_recipe(tmp_path, synthetic("binary"), train={"epochs": 1, "device": "cpu", "max_batches": 1})
    run_recipe(load_recipe(recipe), tmp_path / "binary", quiet=True)
    result = cli("report", tmp_path / "binary", keypoint_run, "--out", tmp_path / "r.md")
    assert result.exit_code == 2
    assert "the runs are of 2 tasks, which share no metric to rank by" in text(result)
    assert f"binary: {tmp_path / 'binary'}" in text(result) and f"keypoints: {keypoint_run}" in text(result)
    assert not (tmp_path / "r.md").exists()
