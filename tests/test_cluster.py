"""Fold sets, sweeps and searches trained as jobs (cvtool/cluster/). submitit's local executor runs
real subprocesses (no SLURM needed); the SLURM side is checked through the sbatch script that
submitit itself renders. Jobs run with OMP_NUM_THREADS=1: the machine's 2 cores are shared."""

from __future__ import annotations

import json
import os
import shutil
import signal
import subprocess
import sys
import time
from pathlib import Path

import numpy as np
import pytest
import torch
from conftest import one_line_error, write_recipe
from typer.testing import CliRunner

from cvtool.cli.main import app
from cvtool.cluster.executors import job_threads, local_executor, pick_gpus
from cvtool.cluster.ledger import Ledger
from cvtool.cluster.members import Member
from cvtool.folds.run import fold_recipe, run_folds, start_fold_set
from cvtool.recipe.load import recipe_to_yaml
from cvtool.runs.recipes import load_recipe
from cvtool.runs.sweep import run_sweep

submitit = pytest.importorskip("submitit", reason="the slurm extra (submitit) is not installed")
runner = CliRunner()
EPOCHS = 6  # enough epochs after the first that a test catches a member in the middle of its run
FILES = ("oof.csv", "folds.json", "folds.csv")


def fold_set_recipe(folder: Path, synthetic, **sections) -> Path:
    return write_recipe(folder, synthetic("multiclass", n=120), name="cv", data={"batch_size": 8, "folds": {"k": 3}},
                        optim={"name": "adam", "lr": 0.01}, train={"epochs": EPOCHS, "loggers": ["csv"]}, **sections)


def one_thread(fn, *args, **kwargs):
    """`fn` in this process on one torch thread, as each job runs."""
    threads = torch.get_num_threads()
    torch.set_num_threads(1)
    try:
        return fn(*args, **kwargs)
    finally:
        torch.set_num_threads(threads)


@pytest.fixture(scope="module")
def reference(tmp_path_factory, synthetic) -> Path:
    """The fold set trained the sequential way (`cvtool train --fold all`, one process)."""
    folder = tmp_path_factory.mktemp("sequential")
    one_thread(run_folds, load_recipe(fold_set_recipe(folder, synthetic)), folder / "set", quiet=True)
    return folder / "set"


@pytest.fixture
def one_thread_jobs(monkeypatch) -> None:
    monkeypatch.setenv("OMP_NUM_THREADS", "1")  # the jobs' environment is this process's


def train(*args: object) -> object:
    return runner.invoke(app, ["train", *map(str, args)])


def lines(path: Path) -> list[str]:
    return path.read_text(encoding="utf-8").splitlines()


def wait_for(condition, what: str, timeout: float = 300) -> None:
    deadline = time.monotonic() + timeout
    while not condition():
        assert time.monotonic() < deadline, f"timed out waiting for {what}"
        time.sleep(0.01)


def test_the_executor_section_is_checked_like_every_section(tmp_path: Path, synthetic) -> None:
    recipe = fold_set_recipe(tmp_path, synthetic)
    line = one_line_error(train(recipe, "--fold", "all", "--executor", "slurm", "--dry-run",
                                "--set", "executor.gpu_per_job=2", "--out", tmp_path / "x"))
    assert "executor.gpu_per_job" in line and "gpus_per_job" in line
    assert load_recipe(recipe, ["executor.time_min=30"]).executor.time_min == 30
    plain = write_recipe(tmp_path, synthetic("multiclass", n=120), name="plain")
    assert "fold set (--fold all), a sweep or a search" in one_line_error(
        train(plain, "--executor", "local", "--jobs", "2", "--out", tmp_path / "y"))
    assert "--dry-run" in one_line_error(train(recipe, "--fold", "all", "--jobs", "2", "--dry-run"))
    if shutil.which("srun") is None:
        assert "srun" in one_line_error(train(recipe, "--fold", "all", "--executor", "slurm", "--out", tmp_path / "z"))
    assert not any((tmp_path / name).exists() for name in "xyz")


def test_the_sbatch_script_submitit_renders_carries_the_executor_section(tmp_path: Path, synthetic) -> None:
    recipe = fold_set_recipe(tmp_path, synthetic, executor={
        "partition": "gpu", "gpus_per_job": 2, "cpus_per_job": 6, "mem_gb": 24, "time_min": 90, "max_parallel": 2,
        "signal_delay_s": 60, "setup": ["module load cuda/12.4"], "sbatch": {"reservation": "kaggle"}})
    out = tmp_path / "set"
    result = train(recipe, "--fold", "all", "--out", out, "--executor", "slurm", "--dry-run")
    assert result.exit_code == 0, result.output
    script = result.output.splitlines()
    assert script[0] == "#!/bin/bash"
    logs = out.absolute() / "cluster" / "logs"
    for flag in ("--array=0-2%2", "--partition=gpu", "--gpus-per-node=2", "--cpus-per-task=6", "--mem=24GB",
                 "--time=90", "--signal=USR2@60", "--reservation=kaggle", "--job-name=cvtool-cv", "--ntasks-per-node=1",
                 f"--output={logs}/%A_%a_0_log.out", f"--error={logs}/%A_%a_0_log.err"):
        assert f"#SBATCH {flag}" in script, flag
    assert script.index("module load cuda/12.4") < script.index("export SUBMITIT_EXECUTOR=slurm")
    assert script[-1].startswith("srun --unbuffered") and script[-1].endswith(f"-m submitit.core._submit {logs}")
    assert not out.exists()  # a dry run submits nothing and writes nothing
    one = train(recipe, "--fold", "1", "--out", out, "--executor", "slurm", "--dry-run", "--set", "executor.mem_gb=1.5")
    assert "#SBATCH --mem=1536MB" in one.output and "--array" not in one.output  # one member: a plain job
    assert "#SBATCH --array=0-2%3" in train(recipe, "--fold", "all", "--executor", "slurm", "--dry-run",
                                            "--jobs", "3", "--out", out).output


def test_local_jobs_share_the_gpus_and_cores(monkeypatch) -> None:
    assert pick_gpus([0, 1, 2], [], 1) == [0]
    assert pick_gpus([0, 1, 2], [0, 1], 1) == [2]
    assert pick_gpus([0, 1], [0, 1, 0], 1) == [1]  # the least shared when there are more jobs than GPUs
    assert pick_gpus([4, 5, 6, 7], [4], 2) == [5, 6]
    assert pick_gpus([], [], 1) == [] and pick_gpus([0], [], 0) == []
    monkeypatch.delenv("OMP_NUM_THREADS", raising=False)
    monkeypatch.setattr(os, "cpu_count", lambda: 8)
    assert job_threads(2) == 4 and job_threads(16) == 1
    monkeypatch.setenv("OMP_NUM_THREADS", "3")
    assert job_threads(2) is None  # the user's setting reaches the jobs as it is


def test_torchrun_members_start_or_resume_one_run(tmp_path: Path) -> None:
    from cvtool.cluster.job import torchrun_argv

    run, recipe = tmp_path / "fold_1", tmp_path / "cluster" / "recipes" / "fold_1.yaml"
    argv = torchrun_argv(run, recipe, 4)
    assert argv[:6] == [sys.executable, "-m", "torch.distributed.run", "--standalone", "--nproc-per-node=4", "-m"]
    assert argv[6:] == ["cvtool", "train", str(recipe), "--out", str(run), "--quiet"]
    (run / "checkpoints").mkdir(parents=True)
    (run / "checkpoints" / "last.pt").write_bytes(b"")
    assert torchrun_argv(run, recipe, 4)[6:] == ["cvtool", "train", "--resume", str(run), "--quiet"]


@pytest.mark.slow
def test_a_fold_set_as_three_local_jobs_equals_the_sequential_run(tmp_path: Path, synthetic, reference,
                                                                  one_thread_jobs) -> None:
    out = tmp_path / "set"
    command = [fold_set_recipe(tmp_path, synthetic), "--fold", "all", "--out", out, "--executor", "local",
               "--jobs", "3", "--quiet"]
    result = train(*command)
    assert result.exit_code == 0, result.output
    for name in FILES:
        assert (out / name).read_bytes() == (reference / name).read_bytes(), name
    jobs = json.loads((out / "cluster" / "jobs.json").read_text())["jobs"]
    assert sorted(job["member"] for job in jobs) == ["fold_0", "fold_1", "fold_2"]
    records = [Ledger(out).read_member(f"fold_{i}") for i in range(3)]
    assert len({r["pid"] for r in records}) == 3 and os.getpid() not in {r["pid"] for r in records}
    assert {r["state"] for r in records} == {"done"} and {r["job"] for r in records} == {j["job"] for j in jobs}
    status = runner.invoke(app, ["status", str(out)])
    rows = [line for line in status.output.splitlines() if line.startswith("│ fold_")]
    assert len(rows) == 3 and all("done" in row and f"{EPOCHS}/{EPOCHS}" in row for row in rows), status.output
    for name in ("oof.csv", "folds.json"):
        (out / name).unlink()
    assert runner.invoke(app, ["collect", str(out)]).exit_code == 0
    for name in FILES:
        assert (out / name).read_bytes() == (reference / name).read_bytes(), name
    assert train(*command).exit_code == 0  # the same command again: every member finished, none submitted
    assert len(json.loads((out / "cluster" / "jobs.json").read_text())["jobs"]) == 3


@pytest.mark.slow
def test_a_killed_member_continues_from_its_last_checkpoint_when_the_command_is_run_again(
        tmp_path: Path, synthetic, reference, one_thread_jobs) -> None:
    out = tmp_path / "set"
    command = [fold_set_recipe(tmp_path, synthetic), "--fold", "all", "--out", out, "--executor", "local",
               "--jobs", "3", "--quiet"]
    driver = subprocess.Popen([sys.executable, "-m", "cvtool", "train", *map(str, command)], stdout=subprocess.PIPE,
                              stderr=subprocess.STDOUT, text=True, env={**os.environ, "OMP_NUM_THREADS": "1"})
    metrics = out / "fold_1" / "metrics.csv"
    wait_for(lambda: metrics.is_file() and len(lines(metrics)) >= 3, "fold_1's second epoch")  # epoch 1 in last.pt
    pid = Ledger(out).read_member("fold_1")["pid"]
    os.kill(pid, signal.SIGSTOP)
    kept = lines(metrics)
    assert not (out / "fold_1" / "summary.json").is_file()
    refused = train(command[0], "--out", out, "--overwrite", "--quiet")  # the set's driver and jobs share it
    assert refused.exit_code == 2 and "in use by cvtool process" in refused.output, refused.output
    os.kill(pid, signal.SIGKILL)
    output = driver.communicate(timeout=600)[0]
    assert driver.returncode == 1, output
    assert "fold_1 (job" in output and "stopped" in output and "submitit INFO" in output  # the log's last lines
    assert not (out / "oof.csv").exists()
    status = runner.invoke(app, ["status", str(out)]).output
    assert next(line for line in status.splitlines() if line.startswith("│ fold_1")).count("stopped") == 1, status
    result = train(*command)
    assert result.exit_code == 0, result.output
    jobs = json.loads((out / "cluster" / "jobs.json").read_text())["jobs"]
    assert [job["member"] for job in jobs[3:]] == ["fold_1"]  # finished folds are not submitted again
    # epoch 1 is the killed run's own row (its measured seconds too): the rerun continued from last.pt
    assert lines(metrics)[:2] == kept[:2] and len(lines(metrics)) == EPOCHS + 1
    for name in FILES:
        assert (out / name).read_bytes() == (reference / name).read_bytes(), name


@pytest.mark.slow
def test_a_preempted_member_is_requeued_by_submitit_and_continues(tmp_path: Path, synthetic, reference,
                                                                 one_thread_jobs) -> None:
    from cvtool.cluster.job import MemberJob
    from cvtool.runs.lock import scope

    recipe = load_recipe(fold_set_recipe(tmp_path, synthetic))
    out = tmp_path / "set"
    with scope():  # prepared as the driver does; the driver's lock ends with it here
        folds = start_fold_set(recipe, out, "1", resume=False, overwrite=False)
    executor = local_executor(Ledger(out).default_logs, max_timeouts=3)
    job = executor.submit(MemberJob("folds", out, Member("fold_1", fold_recipe(folds.recipe, 1)), threads=1))
    metrics = out / "fold_1" / "metrics.csv"
    wait_for(lambda: metrics.is_file() and len(lines(metrics)) >= 3, "fold_1's second epoch")
    pid = Ledger(out).read_member("fold_1")["pid"]
    os.kill(pid, signal.SIGSTOP)
    kept = lines(metrics)
    assert not (out / "fold_1" / "summary.json").is_file()
    os.kill(pid, signal.SIGUSR2)  # SLURM's warning before preemption or the time limit (--signal=USR2@...)
    os.kill(pid, signal.SIGCONT)
    assert job.result()["member"] == "fold_1"
    assert "this job is preempted" in job.stderr()
    record = Ledger(out).read_member("fold_1")
    assert record["attempts"] == 2 and record["state"] == "done" and record["pid"] != pid
    assert lines(metrics)[:2] == kept[:2]
    mine, theirs = (np.load(folder / "fold_1" / "predictions" / "val_best.npz") for folder in (out, reference))
    assert set(mine.files) == set(theirs.files)
    for key in mine.files:
        np.testing.assert_array_equal(mine[key], theirs[key])


@pytest.mark.slow
def test_a_sweep_of_four_points_with_two_jobs_runs_two_at_a_time(tmp_path: Path, synthetic,
                                                                  one_thread_jobs) -> None:
    recipe = write_recipe(tmp_path, synthetic("multiclass", n=120), name="grid", data={"batch_size": 8},
                          optim={"name": "adam"}, train={"epochs": 2, "loggers": ["csv"]},
                          sweep={"optim.lr": [0.001, 0.003, 0.01, 0.03]})
    one_thread(run_sweep, load_recipe(recipe), tmp_path / "sequential", resume=False, overwrite=False, quiet=True,
               stop=None, dist=None)
    out = tmp_path / "jobs"
    result = train(recipe, "--out", out, "--executor", "local", "--jobs", "2", "--quiet")
    assert result.exit_code == 0, result.output
    for name in ("sweep.csv", "sweep.json"):
        assert (out / name).read_bytes() == (tmp_path / "sequential" / name).read_bytes(), name
    submitted = {job["member"]: job["submitted"] for job in json.loads((out / "cluster" / "jobs.json").read_text())["jobs"]}
    ended = {name: Ledger(out).read_member(name)["ended"] for name in submitted}
    assert len(submitted) == 4
    # when each job was submitted, how many members were submitted earlier and still running
    in_flight = [sum(submitted[other] < when < ended[other] for other in submitted if other != name)
                 for name, when in sorted(submitted.items(), key=lambda item: item[1])]
    assert in_flight[1] == 1 and max(in_flight) == 1, in_flight  # two at once, never three


@pytest.mark.slow
def test_a_search_with_two_local_jobs_on_sqlite_finishes_exactly_its_trials(tmp_path: Path, synthetic,
                                                                             one_thread_jobs) -> None:
    optuna = pytest.importorskip("optuna")
    database = tmp_path / "study.db"
    recipe = write_recipe(tmp_path, synthetic("multiclass", n=120), name="hunt", data={"batch_size": 16},
                          optim={"name": "adam"}, train={"epochs": 1, "loggers": ["csv"]},
                          search={"trials": 5, "sampler": "random", "pruner": "none", "storage": f"sqlite:///{database}",
                                  "space": {"optim.lr": {"low": 1e-3, "high": 0.1, "log": True}}})
    out = tmp_path / "search"
    result = train(recipe, "--out", out, "--executor", "local", "--jobs", "2", "--quiet")
    assert result.exit_code == 0, result.output
    summary = json.loads((out / "search.json").read_text())
    assert summary["counts"]["complete"] == 5 and len(summary["trials"]) == 5
    study = optuna.load_study(study_name="hunt", storage=f"sqlite:///{database}")
    assert sum(t.state.name == "COMPLETE" for t in study.get_trials()) == 5
    assert sorted(p.name for p in out.glob("trial_*")) == [f"trial_{t.number:03d}" for t in study.get_trials()
                                                           if t.state.name == "COMPLETE"]
    assert {Ledger(out).read_member(f"worker_{i}")["state"] for i in range(2)} == {"done"}


def test_another_recipe_in_the_folder_is_refused(tmp_path: Path, synthetic) -> None:
    recipe = fold_set_recipe(tmp_path, synthetic)
    out = tmp_path / "set"
    out.mkdir()
    (out / "recipe.yaml").write_text(recipe_to_yaml(load_recipe(recipe, ["optim.lr=0.5"])), encoding="utf-8")
    line = one_line_error(train(recipe, "--fold", "all", "--out", out, "--executor", "local", "--jobs", "2"))
    assert "holds another set" in line and "--overwrite" in line


def test_a_storage_url_that_does_not_work_is_one_line_without_its_password(tmp_path: Path, synthetic) -> None:
    pytest.importorskip("optuna")
    recipe = write_recipe(tmp_path, synthetic("multiclass", n=120), name="hunt", search={
        "trials": 2, "storage": "nosuchdb://optuna:secret@db-host/optuna", "space": {"optim.lr": [0.01, 0.1]}})
    line = one_line_error(train(recipe, "--out", tmp_path / "search", "--executor", "local", "--jobs", "2"))
    assert "search.storage nosuchdb://optuna:***@db-host/optuna" in line and "secret" not in line
    assert not (tmp_path / "search").exists()


@pytest.mark.slow
def test_a_member_on_several_devices_trains_under_torchrun_inside_its_job(tmp_path: Path, synthetic,
                                                                         one_thread_jobs) -> None:
    out = tmp_path / "set"
    result = train(fold_set_recipe(tmp_path, synthetic), "--fold", "1", "--out", out, "--executor", "local",
                   "--jobs", "2", "--set", "executor={torchrun: true, gpus_per_job: 2}", "--set", "data.batch_size=64",
                   "--set", "train.epochs=1", "--quiet")
    assert result.exit_code == 0, result.output
    assert load_recipe(out / "fold_1" / "recipe.yaml", stored=True).data.fold == 1
    assert (out / "fold_1" / "summary.json").is_file() and not (out / "fold_0").exists()
    job = json.loads((out / "cluster" / "jobs.json").read_text())["jobs"][0]["job"]
    log = (Ledger(out).default_logs / f"{job}_0_log.err").read_text()
    assert "larger than this rank's share" in log  # two ranks each trained on half of the fold's images


@pytest.mark.slow
def test_a_failed_job_is_reported_with_the_last_lines_of_its_log(tmp_path: Path, synthetic, one_thread_jobs) -> None:
    out = tmp_path / "set"
    result = train(fold_set_recipe(tmp_path, synthetic), "--fold", "0", "--out", out, "--executor", "local",
                   "--jobs", "2", "--set", "optim={name: sgd, lr: 1.0e+30}", "--set", "train.epochs=1", "--quiet")
    assert result.exit_code == 1, result.output
    job = json.loads((out / "cluster" / "jobs.json").read_text())["jobs"][0]["job"]
    assert f"fold_0 (job {job}) failed" in result.output
    assert "NonFiniteLoss" in result.output  # the traceback's last line, from the job's stderr
    record = Ledger(out).read_member("fold_0")
    assert record["state"] == "failed" and "NonFiniteLoss" in record["error"]
    status = runner.invoke(app, ["status", str(out)]).output
    assert next(line for line in status.splitlines() if line.startswith("│ fold_0")).count("failed") == 1
    assert "NonFiniteLoss" in status
