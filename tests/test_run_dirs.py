"""What a run directory's lifecycle promises: --overwrite removes only what cvtool wrote (its
marker file), never the current folder, the recipe's or the data's folder; an old run is
replaced only once the new one has started; a run that fails before it starts leaves nothing
behind; a non-finite validation output stops like a non-finite loss; sweeps resume past it."""

from __future__ import annotations

import json
import os
from pathlib import Path

import numpy as np
import pytest
from conftest import one_line_error, snapshot, stop_line
from typer.testing import CliRunner

from cvtool.cli.main import app
from cvtool.engine import inference
from cvtool.engine.checkpoint import load_checkpoint
from cvtool.engine.state import TrainState
from cvtool.runs.layout import MARKER

runner = CliRunner()
FAST = {"epochs": 1, "device": "cpu", "max_batches": 1}


def invoke(*args: object):
    return runner.invoke(app, [str(a) for a in args])


def test_overwrite_refuses_a_folder_of_the_users_files(synthetic, make_recipe, tmp_path) -> None:
    recipe = make_recipe(tmp_path, synthetic("multiclass", n=40, size=16), train=FAST)
    mine = tmp_path / "mine"
    mine.mkdir()
    (mine / "thesis.tex").write_text("years of work")
    for extra in ([], ["--overwrite"]):
        line = one_line_error(invoke("train", recipe, "--out", mine, "--quiet", *extra))
        assert f"{mine}: holds files that are not a cvtool run" in line
    assert snapshot(mine) == {"thesis.tex": b"years of work"}


def test_out_dot_never_deletes_anything(synthetic, make_recipe, tmp_path, monkeypatch) -> None:
    work = tmp_path / "project"
    work.mkdir()
    recipe = make_recipe(work, synthetic("multiclass", n=40, size=16), train=FAST)
    (work / "notes.txt").write_text("keep")
    before = snapshot(work)
    monkeypatch.chdir(work)
    for extra in ([], ["--overwrite"]):
        one_line_error(invoke("train", recipe.name, "--out", ".", "--quiet", *extra))
    assert snapshot(work) == before
    (work / MARKER).write_text("cvtool run\n")  # even a folder that looks like a run
    line = one_line_error(invoke("train", recipe.name, "--out", ".", "--quiet", "--overwrite"))
    assert "refused to replace it: it is the current folder" in line
    assert snapshot(work) == {**before, MARKER: b"cvtool run\n"}


def test_overwrite_never_removes_the_recipes_or_the_datas_folder(synthetic, make_recipe, tmp_path) -> None:
    data = synthetic("multiclass", n=40, size=16)
    holder = tmp_path / "holder"
    holder.mkdir()
    (holder / MARKER).write_text("cvtool run\n")
    (holder / "metrics.csv").write_text("epoch\n1\n")
    recipe = make_recipe(holder, data, train=FAST)
    before = snapshot(holder)
    line = one_line_error(invoke("train", recipe, "--out", holder, "--overwrite", "--quiet"))
    assert f"{holder}: refused to replace it: it is a parent of {recipe}" in line
    data_parent = Path(data["root"]).parent
    (data_parent / MARKER).write_text("cvtool run\n")
    try:
        other = make_recipe(tmp_path, data, train=FAST)
        line = one_line_error(invoke("train", other, "--out", data_parent, "--overwrite", "--quiet"))
        assert f"--out {data_parent}: holds the data root" in line and str(data["root"]) in line
    finally:
        (data_parent / MARKER).unlink()
    assert snapshot(holder) == before


def test_overwrite_replaces_a_run_only_after_the_new_one_started(synthetic, make_recipe, tmp_path) -> None:
    recipe = make_recipe(tmp_path, synthetic("multiclass", n=40, size=16), train=FAST)
    run = tmp_path / "run"
    assert invoke("train", recipe, "--out", run, "--quiet").exit_code == 0
    assert (run / MARKER).is_file()
    old = snapshot(run)
    line = one_line_error(invoke("train", recipe, "--out", run, "--quiet", "--overwrite",
                                 "--set", f"data.root={tmp_path / 'missing'}"))
    assert str(tmp_path / "missing") in line
    assert snapshot(run) == old  # the data failed: the old run is untouched
    assert sorted(p.name for p in tmp_path.iterdir()) == ["run", "test.yaml"]  # no staging folder left
    again = invoke("train", recipe, "--out", run, "--quiet", "--overwrite", "--set", "seed=1")
    assert again.exit_code == 0, again.output
    assert "seed: 1" in (run / "recipe.yaml").read_text() and (run / MARKER).is_file()
    assert sorted(p.name for p in tmp_path.iterdir()) == ["run", "test.yaml"]


def test_a_run_failing_before_its_first_epoch_does_not_block_a_rerun(synthetic, make_recipe, tmp_path) -> None:
    data = synthetic("multiclass", n=40, size=16)
    run = tmp_path / "run"
    broken = make_recipe(tmp_path, data, name="broken", train=FAST, data={"root": str(tmp_path / "missing")})
    one_line_error(invoke("train", broken, "--out", run, "--quiet"))
    assert not run.exists() and sorted(p.name for p in tmp_path.iterdir()) == ["broken.yaml"]
    nan = make_recipe(tmp_path, data, name="nan", optim={"name": "sgd", "lr": 1.0e12}, train={"epochs": 2, "device": "cpu"})
    assert "epoch 1, batch" in one_line_error(invoke("train", nan, "--out", run, "--quiet"))
    assert load_checkpoint(run / "checkpoints" / "last.pt")["epoch"] == 0  # the last good one is kept
    good = make_recipe(tmp_path, data, name="good", train=FAST)
    result = invoke("train", good, "--out", run, "--quiet")  # no epoch had finished: no --overwrite needed
    assert result.exit_code == 0, result.output
    assert json.loads((run / "summary.json").read_text())["name"] == "good"


@pytest.fixture
def nan_at_validation(monkeypatch):
    """Validation outputs become NaN at the given call of run_inference (counting from 1)."""
    real = inference.run_inference
    calls = {"n": 0, "at": set()}

    def fake(*args, **kwargs):
        logits, targets, indices, loss = real(*args, **kwargs)
        calls["n"] += 1
        if calls["n"] in calls["at"]:
            logits = np.full_like(logits, np.nan)
            loss = float("nan")
        return logits, targets, indices, loss

    monkeypatch.setattr(inference, "run_inference", fake)
    return calls


def test_non_finite_validation_outputs_stop_the_run_naming_the_epoch(nan_at_validation, synthetic, make_recipe,
                                                                     tmp_path) -> None:
    recipe = make_recipe(tmp_path, synthetic("binary", n=40, size=16), train={**FAST, "epochs": 3})
    nan_at_validation["at"] = {2}
    line = stop_line(invoke("train", recipe, "--out", tmp_path / "run", "--quiet"))
    assert "val outputs are NaN or infinite at epoch 2" in line and "last good checkpoint" in line
    assert load_checkpoint(tmp_path / "run" / "checkpoints" / "last.pt")["epoch"] == 1


def test_sweep_resume_moves_past_a_point_that_went_non_finite(nan_at_validation, synthetic, make_recipe,
                                                              tmp_path) -> None:
    recipe = make_recipe(tmp_path, synthetic("binary", n=40, size=16), train={**FAST, "epochs": 2},
                         sweep={"optim.lr": [0.05, 0.01]})
    sweep = tmp_path / "sweep"
    nan_at_validation["at"] = {2}  # the first point's second epoch
    line = stop_line(invoke("train", recipe, "--out", sweep, "--quiet"))
    assert "epoch 2" in line
    nan_at_validation["at"] = set()
    result = invoke("train", "--resume", sweep, "--quiet")
    assert result.exit_code == 0, result.output
    ranked = json.loads((sweep / "sweep.json").read_text())["runs"]
    assert [r["failed"] is not None for r in ranked] == [False, True]
    assert "epoch 2" in ranked[1]["failed"] and ranked[1]["best_value"] is None
    assert "failed" in result.output and ranked[1]["run"] in result.output
    assert (sweep / ranked[0]["run"] / "summary.json").is_file()


def test_ties_in_the_monitored_metric_go_to_the_lower_val_loss() -> None:
    state = TrainState(epoch=1, best_value=1.0, best_epoch=1,
                       history=[{"epoch": 1, "val/auc": 1.0, "val/loss": 0.6}])
    assert state.improved(1.0, True, 0.0, ("val/loss", 0.4, False))
    assert not state.improved(1.0, True, 0.0, ("val/loss", 0.7, False))
    assert not state.improved(1.0, True, 0.0, None)  # monitor_tiebreak: null keeps the first
    assert not state.improved(1.0, True, 0.0, ("val/loss", float("nan"), False))
    assert state.improved(1.01, True, 0.0, ("val/loss", 0.9, False))


def test_tiebreak_is_a_recipe_key_defaulting_to_val_loss(synthetic, make_recipe, tmp_path) -> None:
    recipe = make_recipe(tmp_path, synthetic("multiclass", n=40, size=16), train=FAST)
    shown = invoke("recipe", "show", recipe)
    assert shown.exit_code == 0 and "monitor_tiebreak: val/loss" in shown.output
    line = one_line_error(invoke("train", recipe, "--set", "train.monitor_tiebreak=val/nope", "--out",
                                 tmp_path / "run", "--quiet"))
    assert "train.monitor_tiebreak: val/nope is not reported" in line


def test_log_output_has_no_blank_lines_and_unwrapped_titles(synthetic, make_recipe, tmp_path) -> None:
    name = "a_recipe_with_a_name_long_enough_to_push_the_summary_title_past_eighty_columns"
    recipe = make_recipe(tmp_path, synthetic("multiclass", n=40, size=16), name=name,
                         train={**FAST, "epochs": 3})
    result = invoke("train", recipe, "--out", tmp_path / "run")  # CliRunner: not a terminal
    assert result.exit_code == 0, result.output
    lines = result.output.splitlines()
    epochs = [i for i, line in enumerate(lines) if line.startswith("epoch ")]
    assert len(epochs) == 3 and epochs == list(range(epochs[0], epochs[0] + 3))
    assert "" not in lines[:epochs[-1]]
    title = next(line for line in lines if line.startswith(name))
    assert len(title) > 80 and title.rstrip().endswith(")") and "(smoothed" in title


@pytest.mark.skipif(os.name != "posix", reason="POSIX paths")
def test_overwrite_refuses_the_home_folder_and_root(synthetic, make_recipe, tmp_path) -> None:
    recipe = make_recipe(tmp_path, synthetic("multiclass", n=40, size=16), train=FAST)
    for folder in (Path.home(), Path("/")):
        line = one_line_error(invoke("train", recipe, "--out", folder, "--overwrite", "--quiet"))
        assert str(folder) in line
