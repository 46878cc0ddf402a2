"""Issue 26: a run folder has one writer. Two `cvtool train` processes on one --out, an --overwrite
or an evaluate of a run another process is training: the second is one line naming the first's
pid (exit 2). The lock is the kernel's (flock), so a writer killed with SIGKILL leaves nothing
that blocks the next run, and its staging leftovers are cleaned by it. --overwrite keeps the
user's own files. All with real processes, real signals, real files."""

from __future__ import annotations

import json
import os
import re
import signal
import subprocess
import sys
import time
from pathlib import Path

import pytest
import yaml
from conftest import one_line_error, snapshot
from typer.testing import CliRunner

from cvtool.cli.main import app
from cvtool.engine.checkpoint import load_checkpoint
from cvtool.runs.layout import MARKER

runner = CliRunner()
FAST = {"epochs": 1, "device": "cpu", "max_batches": 1}
ENV = {**os.environ, "PYTHONUNBUFFERED": "1"}
HOLDER = """
import sys, time
from pathlib import Path
from cvtool.runs.lock import hold
hold(Path(sys.argv[1]), "train")
print("held", flush=True)
time.sleep(600)
"""


def invoke(*args: object):
    return runner.invoke(app, [str(a) for a in args])


def cvtool(*args: object) -> subprocess.Popen:
    return subprocess.Popen([sys.executable, "-m", "cvtool", *map(str, args)], stdout=subprocess.PIPE,
                            stderr=subprocess.STDOUT, text=True, env=ENV)


@pytest.fixture
def holder():
    """holder(folder) -> a real process holding folder's lock (as a training run does), ready."""
    started: list[subprocess.Popen] = []

    def start(folder: Path) -> subprocess.Popen:
        proc = subprocess.Popen([sys.executable, "-c", HOLDER, str(folder)], stdout=subprocess.PIPE, text=True, env=ENV)
        started.append(proc)
        assert proc.stdout.readline().strip() == "held"
        return proc

    yield start
    for proc in started:
        if proc.poll() is None:
            proc.kill()
        proc.wait()


@pytest.fixture(scope="module")
def finished(tmp_path_factory, synthetic) -> dict:
    """A finished 1-epoch run (seed 0), its recipe and data; tests copy the run before changing it."""
    from conftest import write_recipe

    folder = tmp_path_factory.mktemp("locks")
    data = synthetic("multiclass", n=40, size=16)
    recipe = write_recipe(folder, data, train=FAST)
    result = invoke("train", recipe, "--out", folder / "run", "--quiet")
    assert result.exit_code == 0, result.output
    return {"recipe": recipe, "run": folder / "run", "data": data}


def copy_run(finished: dict, target: Path) -> Path:
    import shutil

    shutil.copytree(finished["run"], target, symlinks=True)
    return target


@pytest.mark.slow
def test_two_trains_started_together_on_one_new_out(synthetic, make_recipe, tmp_path) -> None:
    recipe = make_recipe(tmp_path, synthetic("multiclass", n=80, size=16), train={"epochs": 12, "device": "cpu"})
    run = tmp_path / "run"
    procs = {seed: cvtool("train", recipe, "--out", run, "--quiet", "--set", f"seed={seed}") for seed in (1, 2)}
    outputs = {seed: proc.communicate(timeout=300)[0] for seed, proc in procs.items()}
    codes = {seed: proc.returncode for seed, proc in procs.items()}
    assert sorted(codes.values()) == [0, 2], outputs
    winner = next(seed for seed, code in codes.items() if code == 0)
    loser = 3 - winner
    line = [x for x in outputs[loser].splitlines() if x.strip()]
    assert len(line) == 1 and re.fullmatch(
        rf"cvtool: {re.escape(str(run))}: in use by cvtool process {procs[winner].pid} \(train\); .*", line[0]), line
    assert f"\nrun: {run}" in outputs[winner] and "\nrun: " not in outputs[loser]
    # one run, all of it the winner's: recipe.yaml, the checkpoints and metrics.csv
    assert yaml.safe_load((run / "recipe.yaml").read_text())["seed"] == winner
    assert load_checkpoint(run / "checkpoints" / "last.pt")["recipe"]["seed"] == winner
    assert json.loads((run / "summary.json").read_text())["epochs_run"] == 12
    assert len((run / "metrics.csv").read_text().splitlines()) == 13
    assert sorted(p.name for p in tmp_path.iterdir()) == ["run", "test.yaml"]  # no lock or staging left


@pytest.mark.slow
def test_overwrite_of_a_run_in_training_is_refused_and_the_run_finishes(synthetic, make_recipe, tmp_path) -> None:
    recipe = make_recipe(tmp_path, synthetic("multiclass", n=80, size=16), train={"epochs": 40, "device": "cpu"})
    run = tmp_path / "run"
    first = cvtool("train", recipe, "--out", run, "--quiet")
    deadline = time.time() + 120
    while not (run / "metrics.csv").is_file() and time.time() < deadline and first.poll() is None:
        time.sleep(0.02)
    assert first.poll() is None, first.communicate()[0]
    for args in (["train", recipe, "--out", run, "--overwrite", "--set", "seed=5"], ["train", "--resume", run],
                 ["evaluate", run, "--split", "val"], ["evaluate", run, "--split", "val", "--calibrate"],
                 ["export", run, "--onnx", run / "mine.onnx"]):
        line = one_line_error(invoke(*args, "--quiet") if args[0] == "train" else invoke(*args))
        assert f"{run}: in use by cvtool process {first.pid} (train)" in line, args
    output = first.communicate(timeout=300)[0]
    assert first.returncode == 0, output
    assert yaml.safe_load((run / "recipe.yaml").read_text())["seed"] == 0
    assert json.loads((run / "summary.json").read_text())["epochs_run"] == 40
    assert not (run / "eval").exists() and not (run / "mine.onnx").exists()
    assert invoke("evaluate", run, "--split", "val").exit_code == 0  # once it ended, evaluate writes into it


def test_every_writer_of_a_run_respects_its_lock_and_readers_do_not_need_it(finished, holder, tmp_path) -> None:
    run = copy_run(finished, tmp_path / "run")
    proc = holder(run)
    before = snapshot(run)
    for args in (["train", finished["recipe"], "--out", run, "--overwrite", "--quiet"],
                 ["train", "--resume", run, "--quiet"],
                 ["evaluate", run, "--split", "val"],
                 ["evaluate", run, "--split", "val", "--checkpoint", "all"],
                 ["evaluate", run, "--split", "val", "--calibrate", "--out", tmp_path / "elsewhere"],
                 ["evaluate", run, "--split", "val", "--out", tmp_path / "e2", "--save-predictions", run / "p.csv"],
                 ["export", run, "--onnx", run / "model-2.onnx"],
                 ["predict", run, Path(finished["data"]["root"]) / "val", "--out", run / "submission.csv"],
                 ["stats", finished["data"]["root"], "--out", run / "stats.json"],
                 ["train", finished["recipe"], "--out", run / "nested", "--quiet"]):
        line = one_line_error(invoke(*args))
        assert f"{run}: in use by cvtool process {proc.pid} (train); wait until it ends" in line, args
    assert snapshot(run) == before
    # readers: predict from the run's checkpoint, report, evaluate into a folder of its own
    images = Path(finished["data"]["root"]) / "val"
    assert invoke("predict", run, images, "--out", tmp_path / "sub.csv", "--quiet").exit_code == 0
    assert invoke("report", run, "--out", tmp_path / "report.md").exit_code == 0
    assert invoke("evaluate", run, "--split", "val", "--out", tmp_path / "eval").exit_code == 0
    assert snapshot(run) == before


def test_a_writer_killed_with_sigkill_blocks_nothing_and_its_staging_is_cleaned(finished, holder, tmp_path) -> None:
    run = tmp_path / "run"
    proc = holder(run)
    staging = tmp_path / f".run.cvtool-new-{proc.pid}"  # what a run killed before its first epoch leaves
    staging.mkdir()
    (staging / MARKER).write_text("cvtool run\n")
    assert "in use by cvtool process" in one_line_error(invoke("train", finished["recipe"], "--out", run, "--quiet"))
    proc.send_signal(signal.SIGKILL)
    proc.wait()
    result = invoke("train", finished["recipe"], "--out", run, "--quiet")
    assert result.exit_code == 0, result.output
    assert sorted(p.name for p in tmp_path.iterdir()) == ["run"]  # the staging is gone, no lock file left


@pytest.mark.slow
def test_sigkill_of_a_real_training_mid_staging_then_a_new_run(synthetic, make_recipe, tmp_path) -> None:
    data = synthetic("multiclass", n=80, size=16)
    recipe = make_recipe(tmp_path, data, train={"epochs": 40, "device": "cpu"}, data={"batch_size": 2})
    run = tmp_path / "run"
    proc = cvtool("train", recipe, "--out", run, "--quiet")
    deadline = time.time() + 120
    while time.time() < deadline and not list(tmp_path.glob(".run.cvtool-new-*")):
        time.sleep(0.005)
    proc.send_signal(signal.SIGKILL)
    proc.wait()
    assert list(tmp_path.glob(".run.cvtool-*"))  # killed while its run was staged
    result = invoke("train", recipe, "--out", run, "--quiet", "--overwrite", "--set", "train.epochs=1",
                    "--set", "train.max_batches=1")
    assert result.exit_code == 0, result.output
    assert sorted(p.name for p in tmp_path.iterdir()) == ["run", "test.yaml"]


def dead_pid() -> int:
    proc = subprocess.Popen([sys.executable, "-c", "pass"])
    proc.wait()
    return proc.pid


def test_stale_old_runs_are_put_back_or_give_back_the_users_files(finished, tmp_path) -> None:
    from cvtool.runs.placement import clean_stale

    # killed between the two renames of a swap: the old run is the only copy, and goes back
    old = copy_run(finished, tmp_path / f".run.cvtool-old-{dead_pid()}")
    (old / "notes.md").write_text("mine")
    clean_stale(tmp_path / "run")
    assert (tmp_path / "run" / "notes.md").read_text() == "mine" and not old.exists()
    # killed while the replaced run was being removed: the user's files move into the new one
    old = copy_run(finished, tmp_path / f".run.cvtool-old-{dead_pid()}")
    (old / "analysis.ipynb").write_text("{}")
    (old / "checkpoints" / "copy.pt").write_bytes(b"weights")
    clean_stale(tmp_path / "run")
    assert (tmp_path / "run" / "analysis.ipynb").read_text() == "{}"
    assert (tmp_path / "run" / "checkpoints" / "copy.pt").read_bytes() == b"weights"
    assert sorted(p.name for p in tmp_path.iterdir()) == ["run"]
    # a live process's staging is left alone
    live = tmp_path / f".run.cvtool-new-{os.getppid()}"
    live.mkdir()
    clean_stale(tmp_path / "run")
    assert live.is_dir()


def test_overwrite_keeps_the_users_files_and_says_so(finished, tmp_path) -> None:
    run = copy_run(finished, tmp_path / "run")
    mine = {"notes.md": b"my notes", "analysis.ipynb": b"{}", "checkpoints/best-copy.pt": b"a copied checkpoint",
            "figures/f.png": b"png", "eval/keep.txt": b"x", f"old-run/{MARKER}": b"cvtool run\n",
            "old-run/metrics.csv": b"epoch\n1\n"}
    for name, content in mine.items():
        (run / name).parent.mkdir(parents=True, exist_ok=True)
        (run / name).write_bytes(content)
    (run / "data-link").symlink_to(finished["data"]["root"])
    result = invoke("train", finished["recipe"], "--out", run, "--overwrite", "--quiet", "--set", "seed=3")
    assert result.exit_code == 0, result.output
    kept = [line for line in result.output.splitlines() if "kept" in line]
    assert kept == [f"cvtool: --overwrite kept 7 of your files in {run}: analysis.ipynb, checkpoints/best-copy.pt, "
                    "data-link, eval/keep.txt, figures, notes.md, old-run"]
    for name, content in mine.items():
        assert (run / name).read_bytes() == content
    assert os.readlink(run / "data-link") == str(finished["data"]["root"])
    assert yaml.safe_load((run / "recipe.yaml").read_text())["seed"] == 3
    assert sorted(p.name for p in tmp_path.iterdir()) == ["run"]


@pytest.mark.slow
def test_overwrite_of_a_sweep_keeps_the_users_files(synthetic, make_recipe, tmp_path) -> None:
    recipe = make_recipe(tmp_path, synthetic("multiclass", n=40, size=16), train=FAST, sweep={"optim.lr": [0.1, 0.01]})
    sweep = tmp_path / "sweep"
    assert invoke("train", recipe, "--out", sweep, "--quiet").exit_code == 0
    point = next(p for p in sweep.iterdir() if (p / "summary.json").is_file())
    (sweep / "README.md").write_text("what I tried")
    (point / "notes.txt").write_text("this point diverged once")
    result = invoke("train", recipe, "--out", sweep, "--overwrite", "--quiet")
    assert result.exit_code == 0, result.output
    assert (sweep / "README.md").read_text() == "what I tried"
    assert (point / "notes.txt").read_text() == "this point diverged once"
    assert f"kept 2 of your files in {sweep}: README.md, {point.name}/notes.txt" in result.output


def test_overwrite_through_a_symlink_replaces_the_folder_it_points_to(finished, tmp_path) -> None:
    real = copy_run(finished, tmp_path / "store" / "run")
    (real / "notes.md").write_text("mine")
    link = tmp_path / "link"
    link.symlink_to(real)
    result = invoke("train", finished["recipe"], "--out", link, "--overwrite", "--quiet", "--set", "seed=4")
    assert result.exit_code == 0, result.output
    assert link.is_symlink() and os.readlink(link) == str(real)
    assert yaml.safe_load((real / "recipe.yaml").read_text())["seed"] == 4 and (real / "notes.md").read_text() == "mine"
    assert sorted(p.name for p in tmp_path.iterdir()) == ["link", "store"]
    assert sorted(p.name for p in (tmp_path / "store").iterdir()) == ["run"]


@pytest.mark.slow
def test_a_search_and_its_worker_work_in_either_order(synthetic, make_recipe, tmp_path) -> None:
    pytest.importorskip("optuna", reason="the optuna extra is not installed")
    recipe = make_recipe(tmp_path, synthetic("multiclass", n=80, size=16), optim={"name": "adam", "lr": 0.01},
                         train={"epochs": 3, "device": "cpu", "loggers": ["csv"]},
                         search={"trials": 6, "sampler": "random", "pruner": "none",
                                 "space": {"optim.lr": {"low": 1e-4, "high": 0.05, "log": True}}})
    for order in ("worker-first", "together"):
        out = tmp_path / order
        worker = cvtool("train", recipe, "--out", out, "--search-worker", "--quiet")
        deadline = time.time() + 120
        while order == "worker-first" and not (out / "recipe.yaml").is_file() and time.time() < deadline:
            time.sleep(0.02)
        main = cvtool("train", recipe, "--out", out, "--quiet")
        outputs = [proc.communicate(timeout=400)[0] for proc in (worker, main)]
        assert [worker.returncode, main.returncode] == [0, 0], outputs
        assert (out / MARKER).read_text() == "cvtool search\n"
        done = sorted(p.name for p in out.glob("trial_*") if (p / "summary.json").is_file())
        assert done == [f"trial_{n:03d}" for n in range(6)], outputs
        assert sum(text.count(" -> ") for text in outputs) == 6, outputs
