"""After the last epoch (runs/artifacts.py finish_run, runs/plotting.py): the plots are drawn in a
process of their own beside the test evaluation and are on disk when `cvtool train` returns;
`--no-plots` draws none; best.pt is last.pt written once and linked, not written twice."""

from __future__ import annotations

import json
import os
from pathlib import Path

import numpy as np
import pytest
import torch
from typer.testing import CliRunner

from cvtool import plots
from cvtool.cli.main import app
from cvtool.engine.checkpoint import load_checkpoint
from cvtool.fileio import duplicate

runner = CliRunner()


def train(recipe: Path, out: Path, *args: str) -> None:
    result = runner.invoke(app, ["train", str(recipe), "--out", str(out), "--quiet", *args])
    assert result.exit_code == 0, result.output


def test_plots_are_drawn_by_the_run_and_none_with_no_plots(synthetic, make_recipe, tmp_path: Path) -> None:
    recipe = make_recipe(tmp_path, synthetic("multiclass", n=80), train={"epochs": 2})
    train(recipe, tmp_path / "a")
    drawn = sorted(p.name for p in (tmp_path / "a" / "plots").iterdir())
    assert drawn == ["accuracy.png", "confusion_best.png", "confusion_epoch_001.png", "f1_macro.png", "loss.png",
                     "lr.png"]
    assert all((tmp_path / "a" / "plots" / name).read_bytes()[:4] == b"\x89PNG" for name in drawn)
    # the test evaluation that ran beside the plots is the same as evaluating best.pt afterwards
    evaluated = runner.invoke(app, ["evaluate", str(tmp_path / "a"), "--split", "test", "--out",
                                    str(tmp_path / "eval"), "--quiet"])
    assert evaluated.exit_code == 0, evaluated.output
    test = json.loads((tmp_path / "a" / "summary.json").read_text())["test"]
    assert json.loads((tmp_path / "eval" / "metrics.json").read_text())["metrics"]["accuracy"] == test["accuracy"]
    train(recipe, tmp_path / "b", "--no-plots")
    assert not (tmp_path / "b" / "plots").exists() or not any((tmp_path / "b" / "plots").iterdir())
    assert (tmp_path / "b" / "summary.json").is_file()


def test_best_pt_is_last_pt_linked_and_parts_when_last_moves_on(synthetic, make_recipe, tmp_path: Path) -> None:
    recipe = make_recipe(tmp_path, synthetic("multiclass", n=80), train={"epochs": 1})
    train(recipe, tmp_path / "run")
    best, last = (tmp_path / "run" / "checkpoints" / f"{name}.pt" for name in ("best", "last"))
    assert os.path.samefile(best, last)  # the improving epoch wrote one file under two names
    (tmp_path / "copy.pt").write_bytes(best.read_bytes())
    duplicate(tmp_path / "copy.pt", last)  # a later save replaces last.pt with a new file
    assert not os.path.samefile(best, last) and best.read_bytes() == last.read_bytes()
    payload = load_checkpoint(best)
    assert payload["epoch"] == 1 and all(torch.isfinite(t).all() for t in payload["model"].values()
                                         if t.is_floating_point())


def test_duplicate_copies_where_links_fail(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    source = tmp_path / "a.bin"
    source.write_bytes(b"weights")
    monkeypatch.setattr(os, "link", lambda *args: (_ for _ in ()).throw(OSError(1, "no links here")))
    duplicate(source, tmp_path / "b.bin")
    assert (tmp_path / "b.bin").read_bytes() == b"weights" and not os.path.samefile(source, tmp_path / "b.bin")
    assert sorted(p.name for p in tmp_path.iterdir()) == ["a.bin", "b.bin"]


@pytest.mark.parametrize("classes", [1, 7])
def test_the_confusion_matrix_equals_sklearns(classes: int) -> None:
    from sklearn.metrics import confusion_matrix

    rng = np.random.default_rng(classes)
    outputs = rng.random((300, classes))
    labels = max(classes, 2)
    targets = rng.integers(0, labels, 300)
    predicted = (outputs[:, 0] > 0.4).astype(int) if classes == 1 else outputs.argmax(axis=1)
    expected = confusion_matrix(targets, predicted, labels=list(range(labels)))
    assert np.array_equal(plots.confusion_matrix(targets, outputs, labels, threshold=0.4), expected)
