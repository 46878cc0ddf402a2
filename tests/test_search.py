"""`search:` with Optuna: trials as run dirs, median pruning, resume, workers on one journal."""

from __future__ import annotations

import json
import os
import subprocess
import sys
from pathlib import Path

import pytest
from typer.testing import CliRunner

from cvtool.cli.launch import run_recipe
from cvtool.cli.main import app
from cvtool.engine.loop import StopRequested
from cvtool.errors import CvtoolError
from cvtool.runs.recipes import load_recipe
from cvtool.search.run import claim_trial, counted
from cvtool.search.table import load_search

optuna = pytest.importorskip("optuna", reason="the optuna extra is not installed")
runner = CliRunner()
TINY = {"image_size": 8, "channels": 1, "batch_size": 32}


def search_recipe(make_recipe, tmp_path: Path, digits_dir: Path, epochs: int, batches: int = 4, **search) -> Path:
    return make_recipe(tmp_path, digits_dir, data=TINY, optim={"name": "adam", "lr": 0.01},
                       train={"epochs": epochs, "max_batches": batches, "loggers": ["csv"]},
                       search={"trials": 4, "sampler": "random", "pruner": "none",
                               "space": {"optim.lr": {"low": 1e-4, "high": 0.05, "log": True}}, **search})


def test_search_schema_errors(make_recipe, tmp_path) -> None:
    digits_dir = tmp_path  # loading a recipe does not read its data
    grid = make_recipe(tmp_path, digits_dir, search={"sampler": "grid", "space": {"optim.lr": {"low": 0.1, "high": 1}}})
    with pytest.raises(CvtoolError, match="grid needs a list"):
        load_recipe(grid)
    both = make_recipe(tmp_path, digits_dir, sweep={"optim.lr": [0.1]}, search={"space": {"optim.lr": [0.1]}})
    with pytest.raises(CvtoolError, match="sweep and search"):
        load_recipe(both)
    unknown = make_recipe(tmp_path, digits_dir, search={"space": {"optim.lrr": [0.1, 0.2]}})
    with pytest.raises(CvtoolError, match="lrr"):
        load_recipe(unknown)
    bad_value = make_recipe(tmp_path, digits_dir, search={"space": {"optim.lr": {"low": -1.0, "high": 1.0}}})
    with pytest.raises(CvtoolError, match="optim.lr"):
        load_recipe(bad_value)


def test_claims_stop_at_the_limit_and_void_the_surplus() -> None:
    study = optuna.create_study()
    first, second = claim_trial(study, 2), claim_trial(study, 2)
    assert (first.number, second.number) == (0, 1)
    assert claim_trial(study, 2) is None  # counted trials already at the limit: nothing asked
    study.ask()  # a racing worker's claim, seen by the next check as number 2
    assert claim_trial(study, 2) is None
    assert [t.number for t in counted(study)] == [0, 1, 2]


@pytest.mark.slow
def test_tpe_search_prunes_then_report_ranks_trials(make_recipe, tmp_path, digits_dir) -> None:
    space = {"optim.lr": {"low": 1e-5, "high": 10.0, "log": True}}  # lr near 10 or 1e-5 learns nothing
    # enough batches that a good lr clearly beats chance, so the median pruner has something to cut
    recipe = search_recipe(make_recipe, tmp_path, digits_dir, 3, batches=20, trials=6, sampler="tpe", pruner="median",
                           space=space)
    out = tmp_path / "search"
    result = runner.invoke(app, ["train", str(recipe), "--out", str(out), "--quiet"])
    assert result.exit_code == 0, result.output
    summary = json.loads((out / "search.json").read_text())
    states = [row["state"] for row in summary["trials"]]
    assert sorted(row["trial"] for row in summary["trials"]) == list(range(6))
    assert states.count("pruned") >= 1 and states.count("complete") >= 2, summary["trials"]
    complete = [row["value"] for row in summary["trials"] if row["state"] == "complete"]
    assert complete == sorted(complete, reverse=True)  # val/accuracy: higher ranks first
    for row in summary["trials"]:
        trial_dir = out / row["run"]
        assert load_recipe(trial_dir / "recipe.yaml").optim.lr == pytest.approx(row["optim.lr"])
        assert (trial_dir / "summary.json").is_file() == (row["state"] == "complete")
    csv_lines = (out / "search.csv").read_text().splitlines()
    assert csv_lines[0] == "rank,trial,state,value,epochs,optim.lr,run" and len(csv_lines) == 7
    assert {"optimization_history.png", "param_importances.png"} <= {p.name for p in (out / "plots").iterdir()}

    report = runner.invoke(app, ["report", str(out), "--out", str(tmp_path / "report.md")])
    assert report.exit_code == 0, report.output
    files = {p.name for p in (tmp_path / "report_files").rglob("*.png")}
    assert {"optimization_history.png", "param_importances.png"} <= files
    markdown = (tmp_path / "report.md").read_text()
    assert "| rank | trial | state | value | epochs | optim.lr | run |" in markdown
    best = max(complete)
    first = next(line for line in markdown.splitlines() if line.startswith("| 1 |"))
    best_runs = {f"test/{row['run']}" for row in summary["trials"] if row["value"] == best}
    assert first.split("|")[2].strip() in best_runs
    html = (tmp_path / "report.html").read_text()
    assert "Search trials" in html and html.count("data:image/png;base64") >= 2


@pytest.mark.slow
def test_interrupted_search_resumes_without_repeating_finished_trials(make_recipe, tmp_path, digits_dir) -> None:
    recipe = load_recipe(search_recipe(make_recipe, tmp_path, digits_dir, 1))
    out = tmp_path / "search"
    with pytest.raises(StopRequested):  # as SIGINT does: the stop flag turns true mid-trial
        run_recipe(recipe, out, quiet=True, stop=lambda: (out / "trial_002").is_dir())
    finished = {name: (out / name / "summary.json").stat().st_mtime_ns for name in ("trial_000", "trial_001")}
    summary = run_recipe(recipe, out, resume=True, quiet=True)
    assert {name: (out / name / "summary.json").stat().st_mtime_ns for name in finished} == finished
    _, study = load_search(out)
    trials = study.get_trials()
    assert [t.state.name for t in trials] == ["COMPLETE", "COMPLETE", "FAIL", "COMPLETE", "COMPLETE"]
    assert trials[3].params == trials[2].params  # the interrupted trial's point runs again
    assert sorted(row["trial"] for row in summary["trials"]) == [0, 1, 3, 4]
    assert not (out / "trial_002").exists()


@pytest.mark.slow
def test_two_workers_share_one_journal(make_recipe, tmp_path, digits_dir) -> None:
    recipe = search_recipe(make_recipe, tmp_path, digits_dir, 1, trials=5)
    out = tmp_path / "search"
    command = [sys.executable, "-m", "cvtool", "train", str(recipe), "--search-worker", "--out", str(out), "--quiet"]
    env = {**os.environ, "PYTHONUNBUFFERED": "1"}
    workers = [subprocess.Popen(command, stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True, env=env)
               for _ in range(2)]
    outputs = [worker.communicate(timeout=540)[0] for worker in workers]
    assert [worker.returncode for worker in workers] == [0, 0], outputs
    _, study = load_search(out)
    numbers = [t.number for t in counted(study)]
    assert len(numbers) == 5 and len(set(numbers)) == 5
    assert all(t.state.name == "COMPLETE" for t in counted(study))
    assert sorted(p.name for p in out.glob("trial_*") if (p / "summary.json").is_file()) == \
        [f"trial_{n:03d}" for n in sorted(numbers)]
    ran = [sum(line.startswith("trial ") and "->" in line for line in text.splitlines()) for text in outputs]
    assert sum(ran) == 5, outputs


def test_grid_search_runs_every_point_and_writes_its_table(make_recipe, tmp_path, digits_dir) -> None:
    # Optuna's GridSampler calls study.stop() after the last grid point, which raises outside optimize()
    recipe = search_recipe(make_recipe, tmp_path, digits_dir, 1, batches=1, trials=5, sampler="grid",
                           space={"optim.lr": [0.001, 0.01]})
    out = tmp_path / "grid"
    result = runner.invoke(app, ["train", str(recipe), "--out", str(out), "--quiet"])
    assert result.exit_code == 0, result.output
    trials = json.loads((out / "search.json").read_text())["trials"]
    assert sorted(row["optim.lr"] for row in trials) == [0.001, 0.01]  # each point once, no surplus trial
    assert [row["state"] for row in trials] == ["complete", "complete"]
    assert len((out / "search.csv").read_text().splitlines()) == 3
