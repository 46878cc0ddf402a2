"""`cvtool evaluate --calibrate`: temperature scaling, fitted on the validation split of a run or on
the out-of-fold predictions of a fold set, and stored where every later command finds it.

The Task decides the form (one temperature for softmax, one per output for sigmoid) and the
scores (ECE and NLL). A run's temperature goes into its checkpoint's metadata (as tuned
thresholds do), where `load_model` wraps the network with it: evaluate, tta, predict and the
exported ONNX graph then give calibrated probabilities. A fold set's temperature goes into every
fold's best.pt (the checkpoints that produced the out-of-fold predictions) and into folds.json,
so later `--oof` scores and threshold tuning see calibrated probabilities too.
"""

from __future__ import annotations

import json
from pathlib import Path

import numpy as np

from cvtool import plots
from cvtool.engine.checkpoint import update_meta
from cvtool.errors import CvtoolError
from cvtool.evaluation.results import Calibration, EvalResult
from cvtool.fileio import write_json
from cvtool.runs.layout import CALIBRATION, RunDir
from cvtool.runs.model import LoadedModel, set_temperature
from cvtool.tasks import Task

DIAGRAM = "reliability.png"
RECORD = CALIBRATION


def check_calibratable(task: Task) -> None:
    reason = task.check_calibration()
    if reason is not None:
        raise CvtoolError(f"--calibrate: {reason}")


def fit(task: Task, fit_on: tuple[np.ndarray, np.ndarray], scored: dict[str, tuple[np.ndarray, np.ndarray]],
        folder: Path, title: str) -> tuple[np.ndarray, dict[str, dict[str, dict[str, float]]], Path]:
    """(temperature, before/after scores per split, reliability diagram) for (targets, outputs) pairs."""
    targets, outputs = fit_on
    if len(targets) < 2:
        raise CvtoolError("--calibrate: needs at least 2 labelled images to fit a temperature")
    temperature = task.fit_temperature(targets, outputs)
    scores, curves = {}, {}
    for name, (truth, raw) in scored.items():
        calibrated = task.calibrate(raw, temperature)
        scores[name] = {"before": task.calibration_scores(truth, raw), "after": task.calibration_scores(truth, calibrated)}
        for when, values in (("before", raw), ("after", calibrated)):
            curves[f"{name} {when} (ECE {scores[name][when]['ece']:.4f})"] = _bins(task, truth, values)
    diagram = plots.reliability(curves, task.reliability_axes, title, folder / DIAGRAM)
    return temperature, scores, diagram


def _bins(task: Task, targets: np.ndarray, outputs: np.ndarray) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    from cvtool.tasks.calibration import reliability

    return reliability(*task.confidence(targets, outputs))


def calibrate_run(loaded: LoadedModel, results: dict[str, EvalResult], folder: Path) -> Calibration:
    """Fit on results["val"] (outputs of the uncalibrated model), score every labelled split given,
    store the temperature in the checkpoint and calibrate `loaded` in place."""
    check_calibratable(loaded.task)
    labelled = {name: (r.targets, r.outputs) for name, r in results.items() if r.targets is not None}
    if "val" not in labelled:
        raise CvtoolError("--calibrate: the validation split has no labels to fit a temperature on")
    temperature, scores, diagram = fit(loaded.task, labelled["val"], labelled, folder,
                                       f"reliability, temperature fitted on val ({loaded.path.name})")
    values = [float(t) for t in temperature]
    update_meta(loaded.path, temperature=values)
    set_temperature(loaded, values)
    return Calibration(values, "val", len(labelled["val"][0]), scores, diagram, [loaded.path])


def calibrate_oof(run: RunDir, task: Task, targets: np.ndarray, outputs: np.ndarray) -> Calibration:
    """Fit on a fold set's out-of-fold predictions; store in folds.json and every fold's best.pt."""
    check_calibratable(task)
    folder = run.eval_dir("oof", "calibration")
    temperature, scores, diagram = fit(task, (targets, outputs), {"out-of-fold": (targets, outputs)}, folder,
                                       f"reliability, temperature fitted on the out-of-fold predictions ({run.path.name})")
    values = [float(t) for t in temperature]
    stored = [RunDir(fold).checkpoint("best") for fold in run.fold_runs()]
    for checkpoint in stored:
        update_meta(checkpoint, temperature=values)
    summary = json.loads(run.folds.read_text(encoding="utf-8"))
    summary["temperature"] = values
    write_json(run.folds, summary)
    stored.append(run.folds)
    calibration = Calibration(values, "out-of-fold", len(targets), scores, diagram, stored)
    write_json(folder / RECORD, calibration.record())
    return calibration


def stored_oof_temperature(run: RunDir) -> list[float] | None:
    """The temperature `--oof --calibrate` stored in folds.json (None before that)."""
    try:
        return json.loads(run.folds.read_text(encoding="utf-8")).get("temperature")
    except (OSError, json.JSONDecodeError):
        return None
