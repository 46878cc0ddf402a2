"""`cvtool evaluate RUN --checkpoint all`: one table of every kept checkpoint, equal to evaluating each."""

from __future__ import annotations

import csv
import json
from collections.abc import Callable
from pathlib import Path
from typing import Any

from typer.testing import CliRunner

from cvtool.cli.main import app


def invoke(*args: object):
    return CliRunner().invoke(app, [str(a) for a in args])


def test_checkpoint_all_prints_and_writes_every_checkpoint(tmp_path: Path, synthetic: Callable[..., dict[str, Any]],
                                                           make_recipe: Callable[..., Path]) -> None:
    recipe = make_recipe(tmp_path, synthetic("multiclass", n=80), train={"epochs": 3, "save_every": 1},
                         optim={"name": "adam", "lr": 0.01})
    run = tmp_path / "run"
    assert invoke("train", recipe, "--out", run, "--quiet").exit_code == 0
    result = invoke("evaluate", run, "--checkpoint", "all", "--split", "test", "--quiet")
    assert result.exit_code == 0, result.output
    folder = run / "eval" / "test-all"
    with (folder / "checkpoints.csv").open(newline="") as handle:
        rows = list(csv.DictReader(handle))
    assert [row["checkpoint"] for row in rows] == ["best", "last", "epoch_001", "epoch_002", "epoch_003"]
    assert [row["epoch"] for row in rows[2:]] == ["1", "2", "3"] and rows[1]["epoch"] == "3"
    assert set(rows[0]) == {"checkpoint", "epoch", "images", "loss", "accuracy", "f1_macro"}
    stored = json.loads((folder / "checkpoints.json").read_text())
    assert [r["checkpoint"] for r in stored["checkpoints"]] == [row["checkpoint"] for row in rows]
    for row in rows:  # each row is what evaluating that checkpoint alone gives
        assert row["checkpoint"] in result.output
        single = invoke("evaluate", run, "--checkpoint", row["checkpoint"], "--out", tmp_path / row["checkpoint"])
        assert single.exit_code == 0, single.output
        metrics = json.loads((tmp_path / row["checkpoint"] / "metrics.json").read_text())
        assert float(row["accuracy"]) == metrics["metrics"]["accuracy"]
    assert f"{float(rows[0]['accuracy']):.4f}" in result.output


def test_checkpoint_all_needs_a_run_directory(tmp_path: Path) -> None:
    result = invoke("evaluate", tmp_path, "--checkpoint", "all")
    assert result.exit_code == 2 and "--checkpoint all needs a run directory" in result.output
