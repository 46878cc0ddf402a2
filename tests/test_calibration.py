"""Temperature scaling: the Task's fit recovers a known temperature, `evaluate --calibrate` lowers
the ECE of an over-confident model and stores the temperature, the ONNX export and both predict
paths give the calibrated probabilities, and thresholds are tuned on calibrated outputs."""

from __future__ import annotations

import csv
import json
import shutil
from pathlib import Path

import numpy as np
import pytest
from conftest import one_line_error, trained_run
from typer.testing import CliRunner

from cvtool.cli.main import app
from cvtool.engine.checkpoint import load_checkpoint, save_checkpoint
from cvtool.errors import CvtoolError
from cvtool.tasks import get_task
from cvtool.tasks.base import sigmoid, softmax

runner = CliRunner()


def invoke(*args: object) -> str:
    result = runner.invoke(app, [str(a) for a in args])
    assert result.exit_code == 0, result.output
    return result.output


def test_softmax_temperature_is_recovered_and_lowers_ece() -> None:
    rng = np.random.default_rng(0)
    logits = rng.normal(size=(4000, 5)) * 2.0
    labels = np.asarray([rng.choice(5, p=p) for p in softmax(logits)])
    overconfident = softmax(logits * 3.0).astype(np.float32)  # the true temperature is 3
    task = get_task("multiclass")
    temperature = task.fit_temperature(labels, overconfident)
    assert temperature.shape == (1,) and abs(temperature[0] - 3.0) < 0.3
    calibrated = task.calibrate(overconfident, temperature)
    before, after = task.calibration_scores(labels, overconfident), task.calibration_scores(labels, calibrated)
    assert after["ece"] < before["ece"] / 2 and after["nll"] < before["nll"]


@pytest.mark.parametrize("task_name", ["multilabel", "binary"])
def test_sigmoid_temperatures_are_fitted_per_output(task_name: str) -> None:
    rng = np.random.default_rng(1)
    scales = np.asarray([0.5, 1.0, 3.0]) if task_name == "multilabel" else np.asarray([2.5])
    logits = rng.normal(size=(6000, len(scales))) * 2.0
    truth = (rng.random(logits.shape) < sigmoid(logits)).astype(np.float32)
    outputs = sigmoid(logits * scales).astype(np.float32)
    task = get_task(task_name)
    temperature = task.fit_temperature(truth, outputs)
    assert np.allclose(temperature, scales, rtol=0.15), temperature
    assert task.calibration_scores(truth, task.calibrate(outputs, temperature))["ece"] < \
        task.calibration_scores(truth, outputs)["ece"]


def test_keypoints_have_nothing_to_calibrate() -> None:
    with pytest.raises(CvtoolError, match="nothing to calibrate"):
        get_task("keypoints").fit_temperature(np.zeros((4, 2)), np.zeros((4, 2)))


def copied_run(tmp_path: Path, factory, synthetic, task: str, sharpen: float = 1.0) -> Path:
    """The session's trained run of `task`, copied; its classifier's logits multiplied by `sharpen`
    (an over-confident model of the same ranking)."""
    run = tmp_path / "run"
    shutil.copytree(trained_run(factory, synthetic, task), run)
    best = run / "checkpoints" / "best.pt"
    payload = load_checkpoint(best)
    for key in ("fc.weight", "fc.bias"):
        payload["model"][key] = payload["model"][key] * sharpen
    save_checkpoint(best, {k: v for k, v in payload.items() if k not in ("format", "cvtool_version")})
    return run


def test_calibrate_lowers_the_val_ece_of_an_overconfident_model(tmp_path: Path, tmp_path_factory, synthetic) -> None:
    run = copied_run(tmp_path, tmp_path_factory, synthetic, "multiclass", sharpen=8.0)
    output = invoke("evaluate", run, "--calibrate", "--split", "val", "--out", tmp_path / "eval")
    record = json.loads((tmp_path / "eval" / "metrics.json").read_text())["calibration"]
    val = record["scores"]["val"]
    assert val["before"]["ece"] > val["after"]["ece"] and val["before"]["nll"] > val["after"]["nll"]
    temperature = load_checkpoint(run / "checkpoints" / "best.pt")["meta"]["temperature"]
    assert temperature == record["temperature"] and len(temperature) == 1 and temperature[0] > 1.5
    assert (tmp_path / "eval" / "reliability.png").is_file() and "calibration: temperature" in output
    again = json.loads((tmp_path / "eval" / "metrics.json").read_text())
    assert again["loss"] == pytest.approx(val["after"]["nll"], rel=1e-4)  # evaluate now scores the calibrated model


def probabilities(csv_path: Path) -> np.ndarray:
    with csv_path.open(newline="") as handle:
        rows = list(csv.DictReader(handle))
    return np.asarray([[float(v) for k, v in row.items() if k not in ("image", "label")] for row in rows])


def test_export_and_predict_give_the_calibrated_probabilities(tmp_path: Path, tmp_path_factory, synthetic) -> None:
    from cvtool.data.images import decode
    from cvtool.inference.predict import open_predictor
    from cvtool.runs.model import load_model

    run = copied_run(tmp_path, tmp_path_factory, synthetic, "multiclass", sharpen=8.0)
    invoke("evaluate", run, "--calibrate", "--split", "val", "--out", tmp_path / "eval")
    invoke("export", run, "--onnx", tmp_path / "model.onnx")
    onnx_model, checkpoint = open_predictor(tmp_path / "model.onnx"), open_predictor(run)
    assert onnx_model.card.temperature == checkpoint.card.temperature and "calibrated" in onnx_model.card.output_doc
    test_dir = Path(synthetic("multiclass")["root"]) / "test"
    paths = sorted(p for p in test_dir.rglob("*") if p.is_file())
    images = np.stack([decode(p, 3, 16)[0] for p in paths])
    task = get_task("multiclass")
    raw = load_model(run, calibrated=False)
    import torch

    from cvtool.data.images import normalize_batch

    with torch.inference_mode():
        uncalibrated = task.activate(raw.model(torch.from_numpy(normalize_batch(images, raw.meta.mean, raw.meta.std))).numpy())
    expected = task.calibrate(uncalibrated, np.asarray(checkpoint.card.temperature))
    assert np.abs(task.activate(onnx_model(images)) - expected).max() <= 1e-5
    assert np.abs(task.activate(checkpoint(images)) - expected).max() <= 1e-5
    assert np.abs(uncalibrated - expected).max() > 0.05  # the temperature changes them
    for model, name in ((tmp_path / "model.onnx", "onnx.csv"), (run, "checkpoint.csv")):
        invoke("predict", model, test_dir, "--out", tmp_path / name, "--probs")
    written = {name: probabilities(tmp_path / name) for name in ("onnx.csv", "checkpoint.csv")}
    assert np.abs(written["onnx.csv"] - written["checkpoint.csv"]).max() <= 2e-6
    assert np.abs(np.sort(written["onnx.csv"], axis=0) - np.sort(expected, axis=0)).max() <= 1e-5


def test_thresholds_are_tuned_on_the_calibrated_probabilities(tmp_path: Path, tmp_path_factory, synthetic) -> None:
    from cvtool.evaluation.evaluate import evaluate_split
    from cvtool.evaluation.thresholds import tune_thresholds
    from cvtool.runs.model import load_model

    run = copied_run(tmp_path, tmp_path_factory, synthetic, "multilabel", sharpen=4.0)
    invoke("evaluate", run, "--calibrate", "--tune-thresholds", "--split", "val", "--out", tmp_path / "eval")
    meta = load_checkpoint(run / "checkpoints" / "best.pt")["meta"]
    assert len(meta["temperature"]) == meta["num_outputs"] == 4
    raw = load_model(run, calibrated=False)
    val = evaluate_split(raw, "val")
    calibrated = get_task("multilabel").calibrate(val.outputs, np.asarray(meta["temperature"]))
    expected = tune_thresholds(val.targets, calibrated, raw.recipe.evaluate.tune_metric, raw.recipe.evaluate.threshold)
    assert np.allclose(meta["thresholds"], expected.per_class, atol=1e-6)


def test_calibrate_refuses_keypoints_and_checkpoint_all(tmp_path_factory, synthetic) -> None:
    run = trained_run(tmp_path_factory, synthetic, "keypoints")
    assert "no class probabilities" in one_line_error(runner.invoke(app, ["evaluate", str(run), "--calibrate"]))
    line = one_line_error(runner.invoke(app, ["evaluate", str(run), "--calibrate", "--checkpoint", "all"]))
    assert "--calibrate needs one checkpoint" in line


@pytest.mark.slow
def test_oof_calibration_is_stored_in_every_fold_and_used_by_oof_scores(tmp_path_factory) -> None:
    from conftest import flipped_fold_set

    from cvtool.folds.evaluate import evaluate_oof
    from cvtool.folds.oof import read_oof

    run = flipped_fold_set(tmp_path_factory)["run"]
    copy = tmp_path_factory.mktemp("oof-calibration") / "run"
    shutil.copytree(run, copy)
    output = invoke("evaluate", copy, "--oof", "--calibrate")
    assert "fitted on out-of-fold" in output
    temperature = json.loads((copy / "folds.json").read_text())["temperature"]
    for fold in ("fold_0", "fold_1"):
        assert load_checkpoint(copy / fold / "checkpoints" / "best.pt")["meta"]["temperature"] == temperature
    oof = read_oof(copy / "oof.csv")
    task = get_task("multiclass")
    calibrated = task.calibrate(oof.outputs, np.asarray(temperature))
    record = json.loads((copy / "eval" / "oof-calibration" / "calibration.json").read_text())
    assert record["scores"]["out-of-fold"]["after"]["nll"] < record["scores"]["out-of-fold"]["before"]["nll"]
    assert evaluate_oof(copy).metrics == task.metrics(oof.targets, calibrated)
