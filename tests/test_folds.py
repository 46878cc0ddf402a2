"""K-fold cross-validation (`cvtool train --fold`), out-of-fold predictions, ensembles of runs,
checkpoints, .onnx files and fold sets, the fold set's one-file ONNX export, and resume."""

from __future__ import annotations

import csv
import json
import shutil
from collections import Counter
from collections.abc import Callable
from pathlib import Path

import numpy as np
import pytest
from typer.testing import CliRunner

from cvtool.cli.main import app
from cvtool.data.folds import assign_folds
from cvtool.data.formats import read_dataset
from cvtool.engine.loop import StopRequested
from cvtool.folds.run import relative_name, run_folds
from cvtool.inference.predict import open_predictor
from cvtool.recipe.schema import DataConfig
from cvtool.runs.recipes import load_recipe
from cvtool.tasks import get_task

TASKS = ("multiclass", "multilabel", "keypoints")
K = 3
runner = CliRunner()
_FOLD_SETS: dict[str, Path] = {}


def invoke(*args: object) -> str:
    result = runner.invoke(app, [str(a) for a in args])
    assert result.exit_code == 0, result.output
    return result.output


def read_rows(path: Path) -> list[dict[str, str]]:
    with path.open(newline="", encoding="utf-8") as handle:
        return list(csv.DictReader(handle))


def data_of(synthetic: Callable[..., dict], task: str) -> dict:
    return synthetic(task, n=60, size=16)


def fold_recipe(tmp: Path, synthetic, make_recipe, task: str, **train) -> Path:
    data = data_of(synthetic, task)
    return make_recipe(tmp, data, data={"folds": {"k": K}}, name=f"{task}-folds",
                       train={"epochs": 1, "device": "cpu", "max_batches": 2, **train})


def fold_set(task: str, tmp_path_factory, synthetic, make_recipe) -> Path:
    """A trained k=3 fold set of `task`, made once per test session."""
    if task not in _FOLD_SETS:
        tmp = tmp_path_factory.mktemp(f"folds-{task}")
        recipe = fold_recipe(tmp, synthetic, make_recipe, task)
        invoke("train", recipe, "--fold", "all", "--out", tmp / "run", "--quiet")
        _FOLD_SETS[task] = tmp / "run"
    return _FOLD_SETS[task]


def train_split(synthetic, task: str, folds: dict | None = None):
    info = data_of(synthetic, task)
    cfg = DataConfig(**{**info["data"], "folds": folds or {"k": K}})
    return cfg, read_dataset(cfg, task, 0).splits["train"]


def images_of(synthetic, task: str, count: int = 9) -> np.ndarray:
    """The test split's first images as uint8 N x 16 x 16 x 3, as predict decodes them."""
    from cvtool.data.images import decode

    cfg = DataConfig(**data_of(synthetic, task)["data"])
    paths = read_dataset(cfg, task, 0).splits["test"].paths[:count]
    return np.stack([decode(p, 3, 16)[0] for p in paths])


@pytest.mark.slow
@pytest.mark.parametrize("task", TASKS)
def test_fold_all_writes_fold_runs_folds_json_and_an_oof_of_every_training_image(
        task: str, tmp_path_factory, synthetic, make_recipe) -> None:
    run = fold_set(task, tmp_path_factory, synthetic, make_recipe)
    assert all((run / f"fold_{i}" / "summary.json").is_file() for i in range(K))
    assert not (run / f"fold_{K}").exists()
    summary = json.loads((run / "folds.json").read_text())
    assert [r["fold"] for r in summary["runs"]] == [0, 1, 2] and summary["complete"]
    monitor = summary["monitor"]
    values = [r["best_value"] for r in summary["runs"]]
    assert summary["mean"][monitor] == pytest.approx(np.mean(values))
    assert summary["std"][monitor] == pytest.approx(np.std(values, ddof=1))
    cfg, train = train_split(synthetic, task)
    expected = [relative_name(p, cfg.root) for p in train.paths]
    oof = read_rows(run / "oof.csv")
    assert Counter(r["image"] for r in oof) == Counter(expected) and len(oof) == len(expected)
    folds = {r["image"]: r["fold"] for r in read_rows(run / "folds.csv")}
    assert {r["image"]: r["fold"] for r in oof} == folds
    # each fold's held-out images are exactly that fold's val split
    for i in range(K):
        assert json.loads((run / f"fold_{i}" / "summary.json").read_text())["train_images"] == \
            sum(1 for f in folds.values() if f != str(i))
    out = invoke("evaluate", run, "--oof")
    assert "out-of-fold" in out and "all folds" in out


@pytest.mark.parametrize("task", ["multiclass", "multilabel"])
def test_stratified_folds_keep_each_class_share_within_one_image(task: str, synthetic) -> None:
    cfg, train = train_split(synthetic, task)
    fold_of = assign_folds(train, cfg, task, 0)
    truth = np.eye(int(train.targets.max()) + 1)[train.targets] if train.targets.ndim == 1 else train.targets
    share = truth.mean(axis=0)
    for fold in range(K):
        rows = fold_of == fold
        assert np.abs(truth[rows].sum(axis=0) - share * rows.sum()).max() <= 1.0, (fold, truth[rows].sum(0))
    assert np.array_equal(fold_of, assign_folds(train, cfg, task, 0))  # fixed for a seed
    assert not np.array_equal(fold_of, assign_folds(train, cfg.model_copy(update={"folds": cfg.folds.model_copy(
        update={"seed": 7})}), task, 0))


def test_keypoints_use_kfold_or_groups_and_multilabel_falls_back_without_the_package(
        synthetic, tmp_path: Path, monkeypatch, capsys) -> None:
    cfg, train = train_split(synthetic, "keypoints")
    sizes = np.bincount(assign_folds(train, cfg, "keypoints", 0))
    assert len(sizes) == K and sizes.max() - sizes.min() <= 1
    root = tmp_path / "kp"
    shutil.copytree(cfg.root, root)
    rows = read_rows(root / "train.csv")
    with (root / "train.csv").open("w", newline="") as handle:  # 2 images per subject
        writer = csv.DictWriter(handle, [*rows[0], "subject"])
        writer.writeheader()
        writer.writerows({**row, "subject": f"s{i // 2}"} for i, row in enumerate(rows))
    grouped = cfg.model_copy(update={"root": root, "folds": cfg.folds.model_copy(update={"group_column": "subject"})})
    split = read_dataset(grouped, "keypoints", 0).splits["train"]
    fold_of = assign_folds(split, grouped, "keypoints", 0)
    subject = {Path(r["image"]).name: r["subject"] for r in read_rows(root / "train.csv")}
    by_subject: dict[str, set[int]] = {}
    for path, fold in zip(split.paths, fold_of, strict=True):
        by_subject.setdefault(subject[path.name], set()).add(int(fold))
    assert all(len(folds) == 1 for folds in by_subject.values()) and set(fold_of) == {0, 1, 2}
    for name in ("iterstrat", "iterstrat.ml_stratifiers"):
        monkeypatch.setitem(__import__("sys").modules, name, None)
    cfg, train = train_split(synthetic, "multilabel")
    assert set(assign_folds(train, cfg, "multilabel", 0)) == {0, 1, 2}
    assert "using plain KFold" in capsys.readouterr().err


@pytest.mark.slow
@pytest.mark.parametrize("task", TASKS)
def test_ensemble_predictions_are_the_mean_of_the_members(task: str, tmp_path_factory, synthetic,
                                                          make_recipe) -> None:
    run = fold_set(task, tmp_path_factory, synthetic, make_recipe)
    images, activate = images_of(synthetic, task), get_task(task).activate
    members = [activate(open_predictor(run / f"fold_{i}")(images)) for i in range(K)]
    for weights in (None, [3.0, 1.0, 0.0]):
        ensemble = activate(open_predictor(run, weights=weights)(images))
        share = np.full(K, 1 / K) if weights is None else np.asarray(weights) / 4.0
        expected = np.einsum("m,m...->...", share, np.stack(members).astype(np.float64))
        assert np.abs(ensemble - expected).max() < 1e-6
    listed = activate(open_predictor([run / f"fold_{i}" / "checkpoints" / "best.pt" for i in range(K)])(images))
    assert np.abs(listed - np.mean(members, axis=0)).max() < 1e-6
    tta = [open_predictor(run / f"fold_{i}").tta(images, 2, 0, 4, None) for i in range(K)]
    assert np.abs(open_predictor(run).tta(images, 2, 0, 4, None) - np.mean(tta, axis=0)).max() < 1e-6


@pytest.mark.slow
def test_onnx_members_and_the_fold_set_export_agree_with_the_checkpoint_ensemble(
        tmp_path: Path, tmp_path_factory, synthetic, make_recipe) -> None:
    run = fold_set("multiclass", tmp_path_factory, synthetic, make_recipe)
    files = [tmp_path / f"fold_{i}.onnx" for i in range(2)]
    for i, file in enumerate(files):
        invoke("export", run / f"fold_{i}", "--onnx", file)
    images, activate = images_of(synthetic, "multiclass"), get_task("multiclass").activate
    members = [activate(open_predictor(f)(images)) for f in files]
    for weights, share in ((None, [0.5, 0.5]), ([1, 3], [0.25, 0.75])):
        ensemble = activate(open_predictor(files, weights=weights)(images))
        expected = np.einsum("m,m...->...", np.asarray(share), np.stack(members).astype(np.float64))
        assert np.abs(ensemble - expected).max() < 1e-6
    out = invoke("export", run, "--onnx", tmp_path / "folds.onnx")
    diffs = [float(line.split("│")[3]) for line in out.splitlines() if line.count("│") == 5 and "✓" in line]
    assert len(diffs) == 2 and max(diffs) <= 1e-4
    test_dir = Path(data_of(synthetic, "multiclass")["root"]) / "test"
    invoke("predict", tmp_path / "folds.onnx", test_dir, "--out", tmp_path / "onnx.csv")
    invoke("predict", run, test_dir, "--out", tmp_path / "ckpt.csv")
    assert (tmp_path / "onnx.csv").read_bytes() == (tmp_path / "ckpt.csv").read_bytes()


@pytest.mark.slow
def test_multilabel_fold_set_export_and_oof_thresholds(tmp_path: Path, tmp_path_factory, synthetic,
                                                        make_recipe) -> None:
    source = fold_set("multilabel", tmp_path_factory, synthetic, make_recipe)
    run = tmp_path / "run"
    shutil.copytree(source, run)
    out = " ".join(invoke("evaluate", run, "--oof", "--tune-thresholds").split())
    assert "stored in folds.json" in out
    stored = json.loads((run / "folds.json").read_text())["thresholds"]
    assert len(stored) == len(data_of(synthetic, "multilabel")["classes"])
    assert open_predictor(run).card.thresholds == stored
    invoke("export", run, "--onnx", tmp_path / "ml.onnx")
    assert open_predictor(tmp_path / "ml.onnx").card.thresholds == pytest.approx(stored)
    test_csv = Path(data_of(synthetic, "multilabel")["root"]) / "test.csv"
    invoke("predict", tmp_path / "ml.onnx", test_csv, "--out", tmp_path / "onnx.csv")
    invoke("predict", run, test_csv, "--out", tmp_path / "ckpt.csv")
    assert (tmp_path / "onnx.csv").read_bytes() == (tmp_path / "ckpt.csv").read_bytes()


@pytest.mark.slow
def test_members_must_agree_and_evaluate_shows_members_beside_the_ensemble(
        tmp_path: Path, tmp_path_factory, synthetic, make_recipe) -> None:
    from cvtool.ensembles.evaluate import evaluate_ensemble
    from cvtool.evaluation.evaluate import evaluate_split
    from cvtool.runs.model import load_model

    mc = fold_set("multiclass", tmp_path_factory, synthetic, make_recipe)
    ml = fold_set("multilabel", tmp_path_factory, synthetic, make_recipe)
    result = runner.invoke(app, ["predict", str(mc / "fold_0"), str(ml / "fold_0"), str(tmp_path), "--out",
                                 str(tmp_path / "x.csv")])
    assert result.exit_code == 2 and "differs from" in result.output and "in task" in result.output
    out = invoke("evaluate", mc, "--split", "test")
    assert all(name in out for name in ("fold_0", "fold_1", "fold_2", "ensemble"))
    report = evaluate_ensemble([mc], "test")
    members = []
    for i in range(K):
        loaded = load_model(mc / f"fold_{i}")
        loaded.recipe = load_recipe(mc / "recipe.yaml")
        members.append(evaluate_split(loaded, "test").outputs)
    assert np.abs(report.outputs - np.mean(members, axis=0)).max() < 1e-6
    targets = evaluate_split(loaded, "test").targets
    assert report.columns["ensemble"]["accuracy"] == pytest.approx(np.mean(report.outputs.argmax(1) == targets))
    md = tmp_path / "report.md"
    invoke("report", mc, "--out", md)
    row = next(line for line in md.read_text().splitlines() if "(3 folds)" in line and line.startswith("|"))
    assert "±" in row


@pytest.mark.slow
def test_resume_of_an_interrupted_fold_all_continues_at_the_interrupted_fold(
        tmp_path: Path, synthetic, make_recipe) -> None:
    recipe = load_recipe(fold_recipe(tmp_path, synthetic, make_recipe, "multiclass", epochs=2, max_batches=1))
    run_folds(recipe, tmp_path / "whole", quiet=True)
    cut = tmp_path / "cut"

    def stop_in_fold_1_epoch_2() -> bool:  # asked before every batch
        return (cut / "fold_1" / "metrics.csv").is_file() and len(read_rows(cut / "fold_1" / "metrics.csv")) == 1

    with pytest.raises(StopRequested):
        run_folds(recipe, cut, quiet=True, stop=stop_in_fold_1_epoch_2)
    assert (cut / "fold_0" / "summary.json").is_file() and not (cut / "fold_1" / "summary.json").is_file()
    assert len(read_rows(cut / "fold_1" / "metrics.csv")) == 1 and not (cut / "fold_2").exists()
    fold_0 = {p: p.stat().st_mtime_ns for p in (cut / "fold_0").rglob("*") if p.is_file()}
    invoke("train", "--resume", cut, "--quiet")
    assert {p: p.stat().st_mtime_ns for p in (cut / "fold_0").rglob("*") if p.is_file()} == fold_0
    for i in range(K):
        strip = lambda rows: [{k: v for k, v in r.items() if k != "seconds"} for r in rows]  # noqa: E731
        assert strip(read_rows(cut / f"fold_{i}" / "metrics.csv")) == \
            strip(read_rows(tmp_path / "whole" / f"fold_{i}" / "metrics.csv"))
    assert (cut / "oof.csv").read_bytes() == (tmp_path / "whole" / "oof.csv").read_bytes()
    assert (cut / "folds.csv").read_bytes() == (tmp_path / "whole" / "folds.csv").read_bytes()


def test_fold_mistakes_are_one_line(tmp_path: Path, synthetic, make_recipe) -> None:
    plain = make_recipe(tmp_path, data_of(synthetic, "multiclass"))
    result = runner.invoke(app, ["train", str(plain), "--fold", "all", "--out", str(tmp_path / "r")])
    assert result.exit_code == 2 and "no data.folds" in result.output
    folded = fold_recipe(tmp_path, synthetic, make_recipe, "multiclass")
    result = runner.invoke(app, ["train", str(folded), "--fold", "5", "--out", str(tmp_path / "r")])
    assert result.exit_code == 2 and "fold index 0 to 2" in result.output
    result = runner.invoke(app, ["train", str(folded), "--set", "data.fold=3", "--out", str(tmp_path / "r")])
    assert result.exit_code == 2 and "data.fold" in result.output
    result = runner.invoke(app, ["evaluate", str(tmp_path), "--oof"])
    assert result.exit_code == 2 and "not a fold set" in result.output


@pytest.mark.slow
def test_oof_writes_class_names_like_save_predictions_and_reads_the_old_indices(tmp_path: Path,
                                                                                tmp_path_factory) -> None:
    from conftest import flipped_fold_set

    from cvtool.folds.oof import read_oof

    folds = flipped_fold_set(tmp_path_factory)
    new = tmp_path / "new"
    shutil.copytree(folds["run"], new)
    rows = read_rows(new / "oof.csv")
    outputs = [c for c in rows[0] if c.startswith("output:")]
    names = [c.removeprefix("output:") for c in outputs]
    assert list(rows[0])[:6] == ["image", "fold", "width", "height", "target", "predicted"]
    assert {r["target"] for r in rows} <= set(names) and {r["predicted"] for r in rows} <= set(names)
    assert all(r["predicted"] == names[int(np.argmax([float(r[c]) for c in outputs]))] for r in rows)
    labels = {Path(r["image"]).name: r["label"] for r in read_rows(folds["root"] / "train.csv")}
    assert [r["target"] for r in rows] == [labels[Path(r["image"]).name] for r in rows]  # the training labels
    old = tmp_path / "old"  # the oof.csv of an earlier version: class indices, no predicted column
    shutil.copytree(folds["run"], old)
    index = {name: str(i) for i, name in enumerate(names)}
    header = [c for c in rows[0] if c != "predicted"]
    with (old / "oof.csv").open("w", newline="") as handle:
        writer = csv.writer(handle, lineterminator="\n")
        writer.writerow(header)
        writer.writerows([[index[r[c]] if c == "target" else r[c] for c in header] for r in rows])
    a, b = read_oof(new / "oof.csv"), read_oof(old / "oof.csv")
    assert np.array_equal(a.targets, b.targets) and np.array_equal(a.outputs, b.outputs)
    assert invoke("evaluate", new, "--oof") == invoke("evaluate", old, "--oof").replace(str(old), str(new))
    for run, out in ((new, tmp_path / "doctor-new"), (old, tmp_path / "doctor-old")):
        invoke("doctor", folds["root"], "--oof", run, "-o", out)
    ranking = [json.loads((tmp_path / f"doctor-{v}" / "doctor.json").read_text())["labels"]["ranking"]
               for v in ("new", "old")]
    assert ranking[0] == ranking[1] and ranking[0][0]["given"] in names


@pytest.mark.slow
def test_oof_thresholds_are_marked_stale_when_an_extended_fold_set_changes_its_oof(
        tmp_path: Path, tmp_path_factory, synthetic, make_recipe) -> None:
    run = tmp_path / "run"
    shutil.copytree(fold_set("multilabel", tmp_path_factory, synthetic, make_recipe), run)
    invoke("evaluate", run, "--oof", "--tune-thresholds")
    tuned = json.loads((run / "folds.json").read_text())["thresholds"]
    before, recipe = (run / "oof.csv").read_bytes(), (run / "recipe.yaml").read_bytes()
    refused = runner.invoke(app, ["train", "--resume", str(run), "--set", "train.epochs=4", "--quiet"])
    assert refused.exit_code == 2 and "pass --extend" in refused.output  # not a silent no-op
    assert (run / "recipe.yaml").read_bytes() == recipe
    result = runner.invoke(app, ["train", "--resume", str(run), "--set", "train.epochs=4", "--set", "optim.lr=0.05",
                                 "--extend", "--quiet"])
    assert result.exit_code == 0, result.output
    summary = json.loads((run / "folds.json").read_text())
    assert all(len(read_rows(run / f"fold_{i}" / "metrics.csv")) == 4 for i in range(K))  # trained on
    assert (run / "oof.csv").read_bytes() != before  # some fold found a new best epoch
    assert summary["thresholds"] == tuned and summary["thresholds_stale"] is True
    assert result.output.count("marked stale") == 1
    images = Path(data_of(synthetic, "multilabel")["root"]) / "images"
    warned = runner.invoke(app, ["predict", str(run), str(images), "--out", str(tmp_path / "a.csv")])
    assert warned.exit_code == 0 and "(stale)" in warned.output
    invoke("evaluate", run, "--oof", "--tune-thresholds")
    assert "thresholds_stale" not in json.loads((run / "folds.json").read_text())
