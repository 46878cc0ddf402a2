"""`cvtool train`: real runs on real (digits) and generated data, checked against sklearn."""

from __future__ import annotations

import csv
import json
import sys
from pathlib import Path

import numpy as np
import pytest
from sklearn.metrics import (
    accuracy_score,
    f1_score,
    fbeta_score,
    mean_squared_error,
    roc_auc_score,
    top_k_accuracy_score,
)
from typer.testing import CliRunner

from cvtool.cli.launch import run_recipe
from cvtool.cli.main import app
from cvtool.engine.loop import StopRequested
from cvtool.runs.recipes import load_recipe

ROOT = Path(__file__).resolve().parents[1]
runner = CliRunner()


def train(*args: str) -> str:
    result = runner.invoke(app, ["train", *args, "--quiet"])
    assert result.exit_code == 0, result.output
    return result.output


def history(run: Path) -> list[dict[str, str]]:
    with (run / "metrics.csv").open() as handle:
        return [{k: v for k, v in row.items() if k != "seconds"} for row in csv.DictReader(handle)]


def sklearn_metrics(task: str, saved: Path, threshold: float = 0.5) -> dict[str, float]:
    """An independent computation from the saved predictions."""
    data = np.load(saved)
    y, p = data["targets"], data["outputs"]
    if task == "multiclass":
        result = {"accuracy": accuracy_score(y, p.argmax(1)),
                  "f1_macro": f1_score(y, p.argmax(1), average="macro", labels=range(p.shape[1]), zero_division=0)}
        if p.shape[1] > 5:
            result["top5_accuracy"] = top_k_accuracy_score(y, p, k=5, labels=range(p.shape[1]))
        return result
    if task == "binary":
        return {"auc": roc_auc_score(y, p[:, 0]), "accuracy": accuracy_score(y, p[:, 0] > threshold),
                "f1": f1_score(y, p[:, 0] > threshold, zero_division=0)}
    if task == "multilabel":
        pred = (p > threshold).astype(int)
        return {"f1_macro": f1_score(y, pred, average="macro", zero_division=0),
                "f1_micro": f1_score(y, pred, average="micro", zero_division=0),
                "f1_weighted": f1_score(y, pred, average="weighted", zero_division=0),
                "f2": fbeta_score(y, pred, beta=2, average="samples", zero_division=0)}
    scale = np.tile(data["sizes"], y.shape[1] // 2)
    mse = mean_squared_error((y + 1) / 2 * scale, (p + 1) / 2 * scale)
    return {"mse": mse, "rmse": float(np.sqrt(mse))}


def test_digits_recipe_reaches_95_percent(digits_dir: Path, tmp_path: Path) -> None:
    """The README demo recipe on the real digits data (issue 3: >= 0.95 test accuracy)."""
    run = tmp_path / "digits"
    output = train(str(ROOT / "recipes" / "digits.yaml"), "--set", f"data.root={digits_dir}", "--out", str(run))
    summary = json.loads((run / "summary.json").read_text())
    assert summary["test"]["accuracy"] >= 0.95, summary
    assert f"{summary['test']['accuracy']:.4f}" in output
    for name in ("best.pt", "last.pt", "epoch_005.pt", "epoch_010.pt"):
        assert (run / "checkpoints" / name).is_file()
    for plot in ("loss.png", "accuracy.png", "lr.png", "confusion_epoch_001.png", "confusion_best.png"):
        assert (run / "plots" / plot).stat().st_size > 1000
    assert sklearn_metrics("multiclass", run / "predictions" / "test_best.npz")["accuracy"] == pytest.approx(
        summary["test"]["accuracy"], abs=1e-12)


@pytest.mark.parametrize("task", ["multiclass", "binary", "multilabel", "keypoints"])
def test_each_task_trains_and_metrics_equal_sklearn(task: str, synthetic, make_recipe, tmp_path: Path) -> None:
    data = synthetic(task, n=80, size=16)
    extra = {"loss": {"name": "focal", "gamma": 2.0, "class_weights": "sqrt_inverse"}} if task == "multilabel" else {}
    if task == "binary":
        extra = {"loss": {"pos_weight": "auto"}}
    recipe = make_recipe(tmp_path, data, train={"epochs": 3, "device": "cpu"}, optim={"name": "adam", "lr": 0.01},
                         augment=[{"RandomHorizontalFlip": {"p": 0.5}}], **extra)
    run = tmp_path / "run"
    output = train(str(recipe), "--out", str(run))
    summary = json.loads((run / "summary.json").read_text())
    val_expected = sklearn_metrics(task, run / "predictions" / "val_best.npz")
    for key, value in val_expected.items():
        assert summary["val"][key] == pytest.approx(value, rel=1e-6, abs=1e-9), key
    if summary["test"] is not None:
        test_expected = sklearn_metrics(task, run / "predictions" / "test_best.npz")
        for key, value in test_expected.items():
            assert summary["test"][key] == pytest.approx(value, rel=1e-6, abs=1e-9), key
            assert f"{summary['test'][key]:.4f}" in output
    rows = history(run)
    assert [int(r["epoch"]) for r in rows] == [1, 2, 3]
    assert {"lr", "train/loss", "val/loss", summary["monitor"]} <= set(rows[0])


def test_keypoints_learn_better_than_the_mean(synthetic, make_recipe, tmp_path: Path) -> None:
    """RMSE in original pixels beats predicting the training mean (a real signal is learned)."""
    data = synthetic("keypoints", n=160, size=24)
    recipe = make_recipe(tmp_path, data, data={"image_size": 24}, model={"arch": "simplenet", "blocks": [16, 32], "pool": "flatten"},
                         optim={"name": "adam", "lr": 0.003}, train={"epochs": 12, "device": "cpu"})
    run = tmp_path / "kp"
    train(str(recipe), "--out", str(run))
    summary = json.loads((run / "summary.json").read_text())
    saved = np.load(run / "predictions" / "val_best.npz")
    scale = np.tile(saved["sizes"], saved["targets"].shape[1] // 2)
    truth = (saved["targets"] + 1) / 2 * scale
    baseline = np.sqrt(((truth - truth.mean(0)) ** 2).mean())
    assert summary["val"]["rmse"] < 0.8 * baseline, (summary["val"]["rmse"], baseline)


def test_same_seed_twice_and_resume_give_identical_metrics(synthetic, make_recipe, tmp_path: Path) -> None:
    data = synthetic("multiclass", n=80, size=16)
    recipe_path = make_recipe(
        tmp_path, data, train={"epochs": 4, "device": "cpu"}, optim={"name": "adam", "lr": 0.01},
        augment=[{"RandomAffine": {"degrees": 10, "translate": [0.1, 0.1]}}],
        schedule={"name": "multistep", "milestones": [2, 3], "warmup_epochs": 1},
        phases=[{"epoch": 3, "optim": {"name": "adamw", "lr": 0.002}}], model={"dropout": 0.3, "blocks": [8, 16]})
    recipe = load_recipe(recipe_path)
    run_recipe(recipe, tmp_path / "a", quiet=True)
    run_recipe(recipe, tmp_path / "b", quiet=True)
    assert history(tmp_path / "a") == history(tmp_path / "b")
    calls = {"n": 0}

    def stop_in_epoch_3() -> bool:
        calls["n"] += 1
        return calls["n"] > 2 * 4 + 2  # 4 batches an epoch: stop in the middle of epoch 3

    with pytest.raises(StopRequested):
        run_recipe(recipe, tmp_path / "c", quiet=True, stop=stop_in_epoch_3)
    assert len(history(tmp_path / "c")) == 2
    train("--resume", str(tmp_path / "c"))
    assert history(tmp_path / "a") == history(tmp_path / "c")


def test_fit_builds_the_val_loader_once_per_run(synthetic, make_recipe, tmp_path: Path,
                                               monkeypatch: pytest.MonkeyPatch) -> None:
    """Rebuilt every epoch, the val loader's persistent workers were forked anew each time (from a
    CUDA parent on a GPU). With EMA the raw weights are validated on the same loader too."""
    from cvtool.data import loaders

    built: list[str] = []
    plain = loaders.make_loader

    def counted(dataset, *args, **kwargs):
        built.append(dataset.split.name)
        return plain(dataset, *args, **kwargs)

    for module in [m for name, m in sys.modules.items() if name.startswith("cvtool.")]:
        if getattr(module, "make_loader", None) is plain:  # every module that imported it
            monkeypatch.setattr(module, "make_loader", counted)
    recipe = make_recipe(tmp_path, synthetic("multiclass", n=80, size=16), train={"epochs": 3, "ema": {"decay": 0.9}})
    summary = run_recipe(load_recipe(recipe), tmp_path / "run", quiet=True)
    assert summary["epochs_run"] == 3 and len(history(tmp_path / "run")) == 3
    assert built.count("val") == 1 and built.count("train") == 1


def test_schedules_warmup_and_phases_drive_the_lr(synthetic, make_recipe, tmp_path: Path) -> None:
    data = synthetic("multiclass", n=80, size=16)
    recipe = make_recipe(tmp_path, data, train={"epochs": 6, "device": "cpu", "max_batches": 1},
                         optim={"name": "sgd", "lr": 0.1}, schedule={"name": "step", "step_size": 2, "gamma": 0.5,
                                                                      "warmup_epochs": 1},
                         phases=[{"epoch": 5, "optim": {"name": "adam", "lr": 0.01}}])
    run = tmp_path / "lr"
    train(str(recipe), "--out", str(run))
    lrs = [float(r["lr"]) for r in history(run)]
    # warm-up 0.05, then step schedule 0.1, 0.1, 0.05; the phase at epoch 5 restarts at 0.01
    assert lrs == pytest.approx([0.05, 0.1, 0.1, 0.05, 0.01, 0.01])


@pytest.mark.parametrize("schedule", ["none", "cosine", "multistep", "step", "plateau", "exponential", "onecycle"])
def test_every_schedule_runs(schedule: str, synthetic, make_recipe, tmp_path: Path) -> None:
    data = synthetic("multiclass", n=80, size=16)
    extra = {"milestones": [1]} if schedule == "multistep" else {}
    recipe = make_recipe(tmp_path, data, train={"epochs": 2, "device": "cpu", "max_batches": 2},
                         schedule={"name": schedule, **extra})
    train(str(recipe), "--out", str(tmp_path / schedule))
    lrs = [float(r["lr"]) for r in history(tmp_path / schedule)]
    assert all(lr > 0 for lr in lrs)


def test_sweep_runs_each_point_and_ranks(synthetic, make_recipe, tmp_path: Path) -> None:
    data = synthetic("binary", n=80, size=16)
    recipe = make_recipe(tmp_path, data, train={"epochs": 2, "device": "cpu"},
                         sweep={"optim.lr": [0.1, 0.001]})
    output = train(str(recipe), "--out", str(tmp_path / "sweep"))
    ranked = json.loads((tmp_path / "sweep" / "sweep.json").read_text())
    assert [r["run"] for r in ranked["runs"]] and len(ranked["runs"]) == 2
    values = [r["best_value"] for r in ranked["runs"]]
    assert values == sorted(values, reverse=True)
    for row in ranked["runs"]:
        assert (tmp_path / "sweep" / row["run"] / "summary.json").is_file()
        assert row["run"] in output


def test_existing_run_needs_overwrite_or_resume(synthetic, make_recipe, tmp_path: Path) -> None:
    data = synthetic("multiclass", n=80, size=16)
    recipe = make_recipe(tmp_path, data, train={"epochs": 1, "device": "cpu", "max_batches": 1})
    run = tmp_path / "run"
    train(str(recipe), "--out", str(run))
    again = runner.invoke(app, ["train", str(recipe), "--out", str(run), "--quiet"])
    assert again.exit_code == 2
    assert "--overwrite" in again.output and "Traceback" not in again.output
    train(str(recipe), "--out", str(run), "--overwrite")
