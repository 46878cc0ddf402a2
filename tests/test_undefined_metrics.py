"""Metrics a split cannot define (AUC of a split with one class): null in JSON, one warning, and the
run, evaluate and doctor finish; every task's metrics on a split of a single class."""

from __future__ import annotations

import csv
import json
import math
import shutil
import warnings
from pathlib import Path

import numpy as np
import pytest
from typer.testing import CliRunner

from cvtool.cli.main import app
from cvtool.engine.state import TrainState
from cvtool.tasks import get_task

runner = CliRunner()


def test_binary_run_whose_val_split_has_no_positive_finishes(synthetic, make_recipe, tmp_path: Path) -> None:
    root = tmp_path / "data"
    shutil.copytree(synthetic("binary", n=80)["root"], root)
    positive = sorted(p.name for p in (root / "val").iterdir())[-1]
    for image in (root / "val" / positive).iterdir():
        image.unlink()
    recipe = make_recipe(tmp_path, {"task": "binary", "data": {"root": str(root), "test": "test"}},
                         optim={"name": "adam", "lr": 0.01}, train={"epochs": 3, "device": "cpu"})
    result = runner.invoke(app, ["train", str(recipe), "--out", str(tmp_path / "run")])
    assert result.exit_code == 0, result.output
    assert result.output.count("val/auc is undefined") == 1  # one warning, not one per epoch
    summary = json.loads((tmp_path / "run" / "summary.json").read_text())
    assert summary["val"]["auc"] is None and summary["best_value"] is None
    assert summary["test"]["auc"] is not None  # the test split has both classes
    with (tmp_path / "run" / "metrics.csv").open(newline="") as handle:
        rows = list(csv.DictReader(handle))
    losses = [float(row["val/loss"]) for row in rows]
    assert summary["best_epoch"] == 1 + int(np.argmin(losses))  # an undefined monitor: chosen by val/loss
    result = runner.invoke(app, ["evaluate", str(tmp_path / "run"), "--split", "val"])
    assert result.exit_code == 0, result.output
    metrics = json.loads((tmp_path / "run" / "eval" / "val-best" / "metrics.json").read_text())
    assert metrics["metrics"]["auc"] is None and metrics["metrics"]["accuracy"] is not None


def test_an_undefined_monitor_never_beats_a_defined_one() -> None:
    state = TrainState()
    assert state.improved(float("nan"), True, fallback=("val/loss", 0.5, False))
    state.best_value, state.best_epoch = float("nan"), 1
    state.history = [{"epoch": 1, "val/loss": 0.5}]
    assert not state.improved(float("nan"), True, fallback=("val/loss", 0.6, False))
    assert state.improved(float("nan"), True, fallback=("val/loss", 0.4, False))
    assert state.improved(0.1, True, fallback=("val/loss", 9.0, False))  # defined beats undefined
    state.best_value = 0.1
    assert not state.improved(float("nan"), True, fallback=("val/loss", 0.0, False))


SINGLE_CLASS = {  # task -> (targets of one class, outputs)
    "multiclass": (np.zeros(6, np.int64), np.full((6, 4), 0.25, np.float32)),
    "binary": (np.ones(6, np.int64), np.linspace(0, 1, 6, dtype=np.float32).reshape(-1, 1)),
    "multilabel": (np.tile(np.asarray([1, 0, 0], np.float32), (6, 1)), np.full((6, 3), 0.6, np.float32)),
    "keypoints": (np.zeros((1, 4), np.float32), np.full((1, 4), 0.5, np.float32)),
}


@pytest.mark.parametrize("task", list(SINGLE_CLASS))
def test_every_metric_of_every_task_on_a_split_of_one_class(task: str) -> None:
    targets, outputs = SINGLE_CLASS[task]
    rules = get_task(task)
    with warnings.catch_warnings():
        warnings.simplefilter("error")  # no sklearn "only one class" warning either
        metrics = rules.metrics(targets, outputs, 0.5, np.full((len(targets), 2), 16))
    undefined = {key for key, value in metrics.items() if not math.isfinite(value)}
    assert undefined == ({"auc"} if task == "binary" else set()), metrics
    if rules.check_calibration() is None:
        assert all(math.isfinite(v) for v in rules.calibration_scores(targets, outputs).values())


def test_label_issues_with_a_tag_on_every_image() -> None:
    pytest.importorskip("cleanlab")
    rng = np.random.default_rng(0)
    tags = np.zeros((40, 3), np.float32)
    tags[:, 0] = 1  # on every image: cleanlab has no second class for it
    tags[::2, 1] = 1
    tags[::3, 2] = 1
    probs = np.clip(tags * 0.8 + rng.random(tags.shape) * 0.2, 0, 1)
    probs[0, 1] = 0.01  # image 0 is tagged 1 against a confident model
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")  # cleanlab's small-class notes
        scores, flagged = get_task("multilabel").label_issues(tags, probs)
        assert int(np.argmin(scores)) == 0 and flagged[0]
        tags[:, 2] = 0  # one varied tag left
        scores, _ = get_task("multilabel").label_issues(tags, probs)
    assert int(np.argmin(scores)) == 0
