"""`cvtool report` on a real two-point sweep and on separate run directories."""

from __future__ import annotations

import json
import re
from collections.abc import Callable
from pathlib import Path
from typing import Any

import pytest
import yaml
from typer.testing import CliRunner

from cvtool.cli.main import app

SWEPT_KEY = "optim.lr"


def _train(tmp: Path, dataset: dict[str, Any], name: str, out: Path, **sections: Any) -> Path:
    recipe = {
        "name": name, "task": "multiclass", "seed": 0,
        "data": {**dataset["data"], "image_size": 16, "batch_size": 16, "num_workers": 0, "normalize": "none"},
        "model": {"arch": "simplenet", "blocks": [8, 16]},
        "optim": {"name": "adam", "lr": 0.003},
        "train": {"epochs": 2, "device": "cpu", "monitor": "val/accuracy"},
        **sections,
    }
    path = tmp / f"{name}.yaml"
    path.write_text(yaml.safe_dump(recipe, sort_keys=False), encoding="utf-8")
    result = CliRunner().invoke(app, ["train", str(path), "--out", str(out), "--quiet"])
    assert result.exit_code == 0, f"{result.output}\n{result.exception!r}"
    return out


@pytest.fixture(scope="module")
def runs(synthetic: Callable[..., dict[str, Any]], tmp_path_factory: pytest.TempPathFactory) -> dict[str, Path]:
    """A two-point sweep over optim.lr (2 epochs each) and one separate single run."""
    tmp = tmp_path_factory.mktemp("report-runs")
    dataset = synthetic("multiclass", "folder")
    sweep = _train(tmp, dataset, "lr-sweep", tmp / "sweep", sweep={SWEPT_KEY: [0.003, 0.0001]})
    single = _train(tmp, dataset, "wide-dropout", tmp / "single",
                    model={"arch": "simplenet", "blocks": [8, 16], "dropout": 0.3},
                    train={"epochs": 1, "device": "cpu", "monitor": "val/accuracy"})
    return {"sweep": sweep, "single": single}


def _report(args: list[str]) -> Any:
    return CliRunner().invoke(app, ["report", *args])


def _table(markdown: str) -> list[dict[str, str]]:
    """The ranked table parsed back: one dict per row, keyed by the header."""
    lines = [line for line in markdown.splitlines() if line.startswith("|")]
    header = [cell.strip() for cell in lines[0].strip("|").split(" | ")]
    rows = [[cell.strip() for cell in re.split(r"(?<!\\)\|", line.strip().strip("|"))] for line in lines[2:]]
    return [dict(zip(header, row, strict=True)) for row in rows]


def _images(markdown: str) -> list[str]:
    return re.findall(r"!\[[^\]]*\]\(([^)]+)\)", markdown)


def test_sweep_report_writes_markdown_and_html(runs: dict[str, Path], tmp_path: Path) -> None:
    out = tmp_path / "report.md"
    result = _report([str(runs["sweep"]), "--out", str(out)])
    assert result.exit_code == 0, f"{result.output}\n{result.exception!r}"
    markdown = out.read_text(encoding="utf-8")
    page = (tmp_path / "report.html").read_text(encoding="utf-8")

    images = _images(markdown)
    assert images, "the report has no figures"
    for relative in images:
        assert (tmp_path / relative).is_file(), relative
        assert relative.startswith("report_files/")
    names = " ".join(images)
    for expected in ("val_accuracy.png", "val_loss.png", "lr.png", "confusion_best.png"):
        assert expected in names, f"missing figure {expected}: {images}"
    assert names.count("confusion_best.png") == 2  # one per sweep point

    sources = re.findall(r'src="([^"]*)"', page)
    assert len(sources) == len(images)
    assert all(src.startswith("data:image/png;base64,") for src in sources)
    assert not re.search(r'(href|src)="(https?:|//)', page), "the HTML must not load external assets"


def test_table_ranks_by_the_monitored_metric(runs: dict[str, Path], tmp_path: Path) -> None:
    out = tmp_path / "r.md"
    assert _report([str(runs["sweep"]), "-o", str(out)]).exit_code == 0
    rows = _table(out.read_text(encoding="utf-8"))
    assert len(rows) == 2
    assert [row["rank"] for row in rows] == ["1", "2"]

    ranked = json.loads((runs["sweep"] / "sweep.json").read_text(encoding="utf-8"))
    values = []
    for row in rows:
        point = row["run"].split("/", 1)[1]
        summary = json.loads((runs["sweep"] / point / "summary.json").read_text(encoding="utf-8"))
        assert summary["monitor"] == "val/accuracy"
        assert float(row["best val/accuracy"]) == pytest.approx(summary["best_value"], abs=5e-5)
        assert row["best epoch"] == str(summary["best_epoch"])
        smoothed, epoch = re.fullmatch(r"(\S+) \((\d+)\)", row["smoothed best val/accuracy (epoch)"]).groups()
        assert float(smoothed) == pytest.approx(summary["smoothed_best_value"], abs=5e-5)
        assert int(epoch) == summary["smoothed_best_epoch"]
        assert float(row["test accuracy"]) == pytest.approx(summary["test"]["accuracy"], abs=5e-5)
        assert SWEPT_KEY in row["differs from the first run"]
        values.append(summary["best_value"])
    assert values == sorted(values, reverse=True)  # accuracy: higher first
    assert sorted(values, reverse=True) == [run["best_value"] for run in ranked["runs"]]


def test_differs_names_the_swept_key(runs: dict[str, Path], tmp_path: Path) -> None:
    out = tmp_path / "r.md"
    assert _report([str(runs["sweep"]), "-o", str(out)]).exit_code == 0
    rows = {row["run"].split("/", 1)[1]: row["differs from the first run"]
            for row in _table(out.read_text(encoding="utf-8"))}
    assert rows["lr=0.003"] == "reference (optim.lr=0.003)"  # the first grid point
    assert rows["lr=0.0001"] == "optim.lr=0.0001"


def test_two_separate_run_dirs(runs: dict[str, Path], tmp_path: Path) -> None:
    point = runs["sweep"] / "lr=0.003"
    out = tmp_path / "two.md"
    result = _report([str(point), str(runs["single"]), "--out", str(out)])
    assert result.exit_code == 0, f"{result.output}\n{result.exception!r}"
    rows = {row["run"]: row for row in _table(out.read_text(encoding="utf-8"))}
    assert set(rows) == {"lr-sweep", "wide-dropout"}
    assert rows["lr-sweep"]["differs from the first run"].startswith("reference")
    assert "model.dropout=0.3" in rows["wide-dropout"]["differs from the first run"]
    assert "train.epochs=1" in rows["wide-dropout"]["differs from the first run"]
    for relative in _images(out.read_text(encoding="utf-8")):
        assert (tmp_path / relative).is_file()
    assert (tmp_path / "two.html").is_file()


def test_metric_option_reorders(runs: dict[str, Path], tmp_path: Path) -> None:
    out = tmp_path / "loss.md"
    assert _report([str(runs["sweep"]), "--metric", "loss", "-o", str(out)]).exit_code == 0
    rows = _table(out.read_text(encoding="utf-8"))
    losses = [float(row["best val/loss"]) for row in rows]
    assert losses == sorted(losses)  # loss: lower first


@pytest.mark.parametrize("case", ["empty", "missing", "file"])
def test_not_a_run_is_one_line_exit_2(case: str, runs: dict[str, Path], tmp_path: Path) -> None:
    target = {"empty": tmp_path, "missing": tmp_path / "nope", "file": tmp_path / "x.txt"}[case]
    if case == "file":
        target.write_text("x", encoding="utf-8")
    result = _report([str(runs["single"]), str(target), "-o", str(tmp_path / "r.md")])
    assert result.exit_code == 2
    assert str(target) in result.output and len(result.output.strip().splitlines()) == 1
    assert not (tmp_path / "r.md").exists()


def test_unknown_metric_is_one_line_exit_2(runs: dict[str, Path], tmp_path: Path) -> None:
    result = _report([str(runs["single"]), "--metric", "val/acuracy", "-o", str(tmp_path / "r.md")])
    assert result.exit_code == 2
    assert "val/accuracy" in result.output and len(result.output.strip().splitlines()) == 1


def _fold_set(tmp: Path, dataset: dict[str, Any], task: str) -> Path:
    recipe = {"name": f"{task}-folds", "task": task, "seed": 0,
              "data": {**dataset["data"], "image_size": 16, "batch_size": 16, "num_workers": 0, "normalize": "none",
                       "folds": {"k": 2}},
              "model": {"arch": "simplenet", "blocks": [8]}, "train": {"epochs": 1, "device": "cpu", "max_batches": 1}}
    path = tmp / f"{task}.yaml"
    path.write_text(yaml.safe_dump(recipe, sort_keys=False), encoding="utf-8")
    result = CliRunner().invoke(app, ["train", str(path), "--fold", "all", "--out", str(tmp / task), "--quiet"])
    assert result.exit_code == 0, result.output
    return tmp / task


@pytest.mark.slow
def test_fold_sets_report_with_their_task(runs: dict[str, Path], synthetic: Callable[..., dict[str, Any]],
                                          tmp_path: Path) -> None:
    multiclass = _fold_set(tmp_path, synthetic("multiclass", "folder"), "multiclass")
    multilabel = _fold_set(tmp_path, synthetic("multilabel", n=60), "multilabel")
    result = _report([str(multiclass), str(runs["single"]), "--out", str(tmp_path / "one.md")])
    assert result.exit_code == 0, result.output  # one task: the fold set's task is read, not "?"
    assert len(_table((tmp_path / "one.md").read_text())) == 2
    result = _report([str(multiclass), str(multilabel), "--out", str(tmp_path / "two.md")])
    assert result.exit_code == 2 and "2 tasks" in result.output and "multilabel:" in result.output, result.output
    assert not (tmp_path / "two.md").exists()
