"""`cvtool evaluate`: metrics equal an independent sklearn computation on --save-predictions,
reports and plots per task, threshold tuning stored in the checkpoint, one-line errors."""

from __future__ import annotations

import csv
import json
import re
import shutil
from pathlib import Path

import numpy as np
import pytest
from conftest import write_recipe
from sklearn.metrics import (
    accuracy_score,
    f1_score,
    mean_squared_error,
    precision_recall_fscore_support,
    roc_auc_score,
)
from typer.testing import CliRunner

from cvtool.cli.main import app
from cvtool.evaluation.thresholds import score, tune_thresholds

RUNS = {  # task -> (recipe sections, dataset size)
    "multiclass": ({"train": {"epochs": 2}, "optim": {"name": "adam", "lr": 0.01}}, 80),
    "multilabel": ({"train": {"epochs": 2}, "optim": {"name": "adam", "lr": 0.01}}, 120),
    "keypoints": ({"train": {"epochs": 2}, "optim": {"name": "adam", "lr": 0.01}}, 80),
}


@pytest.fixture(scope="module")
def runs(tmp_path_factory, synthetic) -> dict[str, Path]:
    """One tiny trained run per task (simplenet, 16 px, 2 epochs)."""
    import torch

    threads = torch.get_num_threads()
    torch.set_num_threads(1)  # the machine is shared: one thread is faster under load
    out = tmp_path_factory.mktemp("eval-runs")
    result = {}
    for task, (sections, n) in RUNS.items():
        recipe = write_recipe(out, synthetic(task, n=n), name=task, **sections)
        run = CliRunner().invoke(app, ["train", str(recipe), "--out", str(out / task), "--quiet"])
        assert run.exit_code == 0, run.output
        result[task] = out / task
    yield result
    torch.set_num_threads(threads)


def invoke(*args: str):
    return CliRunner().invoke(app, [str(a) for a in args])


def read_csv(path: Path) -> tuple[list[str], np.ndarray, list[str]]:
    with path.open(newline="") as handle:
        rows = list(csv.reader(handle))
    return rows[0], np.asarray([[float(v) for v in row[1:]] for row in rows[1:]]), [r[0] for r in rows[1:]]


def read_labelled_csv(path: Path) -> tuple[list[str], list[tuple[str, str]], np.ndarray, list[str]]:
    """header, (target, predicted) labels, probabilities, image paths."""
    with path.open(newline="") as handle:
        rows = list(csv.reader(handle))
    return (rows[0], [(r[1], r[2]) for r in rows[1:]], np.asarray([[float(v) for v in r[3:]] for r in rows[1:]]),
            [r[0] for r in rows[1:]])


def printed(output: str, name: str) -> float:
    """The value of a metric row in a printed rich table."""
    match = re.search(rf"│ {re.escape(name)}\s+│\s+(-?[0-9.]+)", output)
    assert match, output
    return float(match.group(1))


def test_multiclass_metrics_match_sklearn_on_saved_predictions(runs, tmp_path):
    preds = tmp_path / "preds.csv"
    result = invoke("evaluate", runs["multiclass"], "--save-predictions", preds)
    assert result.exit_code == 0, result.output
    folder = runs["multiclass"] / "eval" / "test-best"
    written = json.loads((folder / "metrics.json").read_text())
    header, labels, values, paths = read_labelled_csv(preds)
    classes = [name.removeprefix("prob_") for name in header[3:]]
    assert header[:3] == ["image", "target", "predicted"] and {t for t, _ in labels} <= set(classes)
    truth, probs = np.asarray([classes.index(t) for t, _ in labels]), values
    assert len(paths) == written["images"] and all(Path(p).is_file() for p in paths)
    assert all(Path(p).parent.name == t for p, (t, _) in zip(paths, labels, strict=True))  # folder = class
    predicted = probs.argmax(axis=1)
    assert [classes[i] for i in predicted] == [p for _, p in labels]
    expected = {"accuracy": accuracy_score(truth, predicted),
                "f1_macro": f1_score(truth, predicted, average="macro", labels=range(probs.shape[1]), zero_division=0)}
    for name, value in expected.items():
        assert written["metrics"][name] == pytest.approx(value, abs=1e-12)
        assert printed(result.output, name) == pytest.approx(value, abs=5e-5)
    precision, recall, f1, support = precision_recall_fscore_support(
        truth, predicted, labels=range(probs.shape[1]), zero_division=0)
    with (folder / "per_class.csv").open() as handle:
        table = list(csv.DictReader(handle))
    assert [float(r["precision"]) for r in table] == pytest.approx(precision)
    assert [float(r["recall"]) for r in table] == pytest.approx(recall)
    assert [float(r["f1"]) for r in table] == pytest.approx(f1)
    assert [int(r["support"]) for r in table] == list(support)
    for png in ("confusion.png", "confusion_normalized.png"):
        assert (folder / png).stat().st_size > 1000


def test_keypoint_metrics_per_point_table_and_worst_grid(runs, tmp_path):
    preds = tmp_path / "kp.csv"
    out = tmp_path / "report"
    result = invoke("evaluate", runs["keypoints"], "--split", "val", "--out", out, "--save-predictions", preds)
    assert result.exit_code == 0, result.output
    header, values, _ = read_csv(preds)
    columns = (len(header) - 1) // 2
    assert header[1].startswith("true_") and header[1 + columns].startswith("pred_")
    truth, predicted = values[:, :columns], values[:, columns:]
    written = json.loads((out / "metrics.json").read_text())
    assert written["metrics"]["rmse"] == pytest.approx(np.sqrt(mean_squared_error(truth, predicted)), rel=1e-9)
    assert printed(result.output, "rmse") == pytest.approx(written["metrics"]["rmse"], abs=5e-5)
    points = written["per_class"]
    assert [p["point"] for p in points] == ["Point_M0", "Point_M1", "Point_M2"]
    first = np.linalg.norm(truth[:, :2] - predicted[:, :2], axis=1).mean()
    assert points[0]["mean_distance_px"] == pytest.approx(first)
    assert points[0]["rmse_y_px"] == pytest.approx(np.sqrt(np.mean((truth[:, 1] - predicted[:, 1]) ** 2)))
    assert (out / "worst_keypoints.png").stat().st_size > 1000
    assert not (out / "confusion.png").exists()


def test_tuned_thresholds_raise_val_f1_and_are_stored(runs, tmp_path):
    import torch

    from cvtool.runs.model import load_model

    run = tmp_path / "ml"
    shutil.copytree(runs["multilabel"], run)  # tuning rewrites best.pt
    preds = tmp_path / "val.csv"
    result = invoke("evaluate", run, "--tune-thresholds", "--split", "val", "--save-predictions", preds)
    assert result.exit_code == 0, result.output
    written = json.loads((run / "eval" / "val-best" / "metrics.json").read_text())
    tuning = written["tuning"]
    stored = torch.load(run / "checkpoints" / "best.pt", weights_only=True)["meta"]["thresholds"]
    assert stored == pytest.approx(tuning["per_class_thresholds"])
    assert load_model(run).meta.labels().thresholds == pytest.approx(stored)
    header, labels, probs, _ = read_labelled_csv(preds)
    tags = [name.removeprefix("prob_") for name in header[3:]]
    k = len(tags)
    truth = np.asarray([[tag in target.split() for tag in tags] for target, _ in labels], dtype=int)
    predicted_tags = [[t for t, v, cut in zip(tags, row, stored, strict=True) if v > cut] for row in probs]
    assert [p.split() for _, p in labels] == predicted_tags
    baseline = f1_score(truth, (probs > 0.5).astype(int), average="macro", zero_division=0)
    tuned = f1_score(truth, (probs > np.asarray(stored)).astype(int), average="macro", zero_division=0)
    assert tuned > baseline
    assert tuning["val"]["default"] == pytest.approx(baseline)
    assert tuning["val"]["per_class"] == pytest.approx(tuned)
    assert written["metrics"]["f1_macro"] == pytest.approx(tuned)
    assert tuning["test"] is not None and set(tuning["test"]) == {"default", "global", "per_class"}
    aucs = [roc_auc_score(truth[:, c], probs[:, c]) if len(set(truth[:, c])) == 2 else None for c in range(k)]
    for row, auc in zip(written["per_class"], aucs, strict=True):
        assert auc is None or row["auc"] == pytest.approx(auc)
    assert (run / "eval" / "val-best" / "roc.png").is_file()
    later = invoke("evaluate", run, "--split", "val", "--out", tmp_path / "again")  # uses stored thresholds
    again = json.loads((tmp_path / "again" / "metrics.json").read_text())
    assert later.exit_code == 0 and again["thresholds"] == pytest.approx(stored)
    assert again["metrics"]["f1_macro"] == pytest.approx(tuned)


def test_threshold_search_per_class_never_worse_than_global():
    rng = np.random.default_rng(0)
    truth = (rng.random((60, 3)) < [0.5, 0.2, 0.08]).astype(int)
    scores = np.clip(truth * 0.3 + rng.random((60, 3)) * 0.6, 0, 1)
    for metric in ("f1_macro", "f2"):
        tuned = tune_thresholds(truth, scores, metric)
        assert tuned.at_per_class >= tuned.at_global >= tuned.at_default
        assert tuned.at_per_class == pytest.approx(score(metric, truth, scores, tuned.per_class))


def test_data_option_reads_another_root(runs, tmp_path, synthetic):
    copy = tmp_path / "copy"
    shutil.copytree(synthetic("multiclass", n=80)["root"], copy)
    base = invoke("evaluate", runs["multiclass"], "--split", "val", "--out", tmp_path / "a")
    moved = invoke("evaluate", runs["multiclass"], "--split", "val", "--data", copy, "--out", tmp_path / "b")
    assert base.exit_code == 0 and moved.exit_code == 0, moved.output
    first, second = (json.loads((tmp_path / d / "metrics.json").read_text()) for d in ("a", "b"))
    assert first["metrics"] == second["metrics"]


@pytest.mark.parametrize(("args", "message"), [
    (["--split", "valid"], "unknown split 'valid'"),
    (["--checkpoint", "epoch_099"], "no checkpoint 'epoch_099'"),
    (["--tune-thresholds"], "has no decision thresholds"),
])
def test_user_errors_are_one_line_exit_2(runs, args, message):
    result = invoke("evaluate", runs["multiclass"], *args)
    assert result.exit_code == 2
    assert message in result.output and len(result.output.strip().splitlines()) == 1, result.output


def test_missing_run_is_one_line(tmp_path):
    result = invoke("evaluate", tmp_path / "nowhere")
    assert result.exit_code == 2 and len(result.output.strip().splitlines()) == 1


def test_predicted_and_target_labels_per_task():
    from cvtool.tasks import get_task

    names = ["cat", "dog"]
    binary, multiclass, multilabel = get_task("binary"), get_task("multiclass"), get_task("multilabel")
    assert binary.predicted_labels(np.array([[0.2], [0.9]]), names, 0.5) == ["cat", "dog"]
    assert binary.predicted_labels(np.array([[0.2], [0.9]]), names, np.array([0.95])) == ["cat", "cat"]
    assert binary.target_labels(np.array([1, 0]), names) == ["dog", "cat"]
    assert multiclass.predicted_labels(np.array([[0.3, 0.7], [0.8, 0.2]]), names) == ["dog", "cat"]
    assert multiclass.target_labels(np.array([0, 1]), names) == ["cat", "dog"]
    outputs = np.array([[0.6, 0.7], [0.1, 0.2]])
    assert multilabel.predicted_labels(outputs, names, np.array([0.5, 0.8])) == ["cat", ""]
    assert multilabel.target_labels(np.array([[1, 1], [0, 1]]), names) == ["cat dog", "dog"]
    assert get_task("keypoints").predicted_labels(outputs, []) is None


def test_data_root_without_a_test_split_evaluates_val(runs: dict[str, Path], synthetic, tmp_path: Path) -> None:
    root = tmp_path / "data"
    shutil.copytree(synthetic("multiclass", n=80)["root"], root)
    shutil.rmtree(root / "test")
    preds = tmp_path / "val.csv"
    result = invoke("evaluate", runs["multiclass"], "--data", root, "--split", "val", "--save-predictions", preds)
    assert result.exit_code == 0, result.output
    header, labels, probs, paths = read_labelled_csv(preds)
    assert len(paths) == sum(p.is_file() for p in (root / "val").rglob("*")) and all(str(root / "val") in p for p in paths)
    truth = [t for t, _ in labels]
    assert printed(result.output, "accuracy") == pytest.approx(accuracy_score(truth, [p for _, p in labels]), abs=1e-4)
    result = invoke("evaluate", runs["multiclass"], "--data", root, "--split", "test")
    assert result.exit_code == 2 and "data.test" in result.output  # the split asked for is still required
