"""Issue 8: interruption, atomic checkpoints, untrusted files, numerics, bad images."""

from __future__ import annotations

import csv
import os
import shutil
import signal
import subprocess
import sys
import time
from pathlib import Path

import pytest
import torch
from typer.testing import CliRunner

from cvtool.cli.launch import run_recipe
from cvtool.cli.main import app
from cvtool.engine.checkpoint import load_checkpoint, save_checkpoint
from cvtool.errors import CvtoolError
from cvtool.runs.recipes import load_recipe

runner = CliRunner()


def rows(run: Path) -> list[dict[str, str]]:
    with (run / "metrics.csv").open() as handle:
        return [{k: v for k, v in row.items() if k != "seconds"} for row in csv.DictReader(handle)]


def one_line_error(result) -> str:
    assert result.exit_code == 2, result.output
    lines = [line for line in result.output.strip().splitlines() if line.strip()]
    assert len(lines) == 1 and lines[0].startswith("cvtool:") and "Traceback" not in result.output, result.output
    return lines[0]


@pytest.mark.slow
@pytest.mark.parametrize("signum, code", [(signal.SIGTERM, 143), (signal.SIGINT, 130)])
def test_signal_mid_run_then_resume_equals_uninterrupted(signum, code, synthetic, make_recipe, tmp_path) -> None:
    data = synthetic("multiclass", n=80, size=16)
    recipe = make_recipe(tmp_path, data, train={"epochs": 6, "device": "cpu"}, data={"batch_size": 4},
                         augment=[{"RandomHorizontalFlip": {"p": 0.5}}], optim={"name": "adam", "lr": 0.01})
    run = tmp_path / "interrupted"
    env = {**os.environ, "PYTHONUNBUFFERED": "1"}
    proc = subprocess.Popen([sys.executable, "-m", "cvtool", "train", str(recipe), "--out", str(run), "--quiet"],
                            stdout=subprocess.PIPE, stderr=subprocess.PIPE, env=env, text=True)
    deadline = time.time() + 180
    while time.time() < deadline and proc.poll() is None:
        if (run / "metrics.csv").is_file() and len(rows(run)) >= 1:
            break
        time.sleep(0.05)
    proc.send_signal(signum)
    _, err = proc.communicate(timeout=120)
    assert proc.returncode == code, err
    assert "--resume" in err
    done = len(rows(run))
    assert 1 <= done < 6
    assert load_checkpoint(run / "checkpoints" / "last.pt")["epoch"] == done
    resumed = runner.invoke(app, ["train", "--resume", str(run), "--quiet"])
    assert resumed.exit_code == 0, resumed.output
    run_recipe(load_recipe(recipe), tmp_path / "straight", quiet=True)
    assert rows(run) == rows(tmp_path / "straight")


WRITER = """
import signal, sys, torch
from cvtool.engine.checkpoint import save_checkpoint
i = 0
while True:
    i += 1
    save_checkpoint(sys.argv[1], {"epoch": i, "model": {"w": torch.full((400_000,), float(i))}})
    print(i, flush=True)
"""


@pytest.mark.slow
def test_kill_9_during_checkpoint_save_never_leaves_a_broken_file(tmp_path: Path) -> None:
    target = tmp_path / "last.pt"
    save_checkpoint(target, {"epoch": 0, "model": {"w": torch.zeros(400_000)}})
    for attempt in range(6):
        proc = subprocess.Popen([sys.executable, "-c", WRITER, str(target)], stdout=subprocess.PIPE, text=True)
        proc.stdout.readline()  # at least one save completed
        time.sleep(0.05 * (attempt + 1))
        proc.send_signal(signal.SIGKILL)
        proc.wait(timeout=30)
        payload = load_checkpoint(target)
        assert float(payload["model"]["w"][0]) == payload["epoch"]  # a whole file, old or new
    leftovers = [p.name for p in tmp_path.iterdir() if p.name != "last.pt"]
    assert all(name.endswith(".tmp") for name in leftovers)


# what submitit does on preemption: exit from the signal handler, wherever the process is
INTERRUPTED_WRITER = WRITER.replace("i = 0\n", "signal.signal(signal.SIGUSR2, lambda *_: sys.exit(3))\ni = 0\n", 1)


@pytest.mark.slow
def test_an_exit_raised_by_a_signal_handler_during_a_save_ends_the_process_cleanly(tmp_path: Path) -> None:
    """submitit raises SystemExit from its SIGUSR2 handler wherever the job is; inside torch.save
    to a Python file object that aborted the interpreter (std::terminate) before the requeue."""
    target = tmp_path / "last.pt"
    for attempt in range(6):
        proc = subprocess.Popen([sys.executable, "-c", INTERRUPTED_WRITER, str(target)], stdout=subprocess.PIPE,
                                stderr=subprocess.PIPE, text=True)
        proc.stdout.readline()
        time.sleep(0.02 * attempt)
        proc.send_signal(signal.SIGUSR2)
        _, err = proc.communicate(timeout=60)
        assert proc.returncode == 3, err
        payload = load_checkpoint(target)
        assert float(payload["model"]["w"][0]) == payload["epoch"]
    assert [p.name for p in tmp_path.iterdir()] == ["last.pt"]


class Exploit:
    def __reduce__(self):
        return (os.system, (f"touch {Exploit.marker}",))


def test_malicious_checkpoint_is_refused_and_runs_nothing(tmp_path: Path) -> None:
    Exploit.marker = tmp_path / "pwned"
    evil = tmp_path / "evil.pt"
    torch.save({"format": "cvtool-checkpoint/1", "meta": Exploit()}, evil)
    with pytest.raises(CvtoolError, match="refused"):
        load_checkpoint(evil)
    line = one_line_error(runner.invoke(app, ["evaluate", str(evil)]))
    assert "refused" in line and str(evil) in line
    assert not Exploit.marker.exists()


@pytest.mark.parametrize("kind", ["torch.save", "legacy torch.save", "plain pickle", "numpy array"])
def test_untrusted_pickles_are_one_line_in_a_real_process(kind: str, tmp_path: Path) -> None:
    """Exactly one stderr line, torch's own warnings silenced, naming what the file would import."""
    import pickle

    import numpy as np

    Exploit.marker = tmp_path / "pwned"
    evil = tmp_path / "evil.pt"
    payload = {"format": "cvtool-checkpoint/1", "meta": np.zeros(3) if kind == "numpy array" else Exploit()}
    if kind == "plain pickle":  # protocol 4: torch warns "Detected pickle protocol 4" before refusing
        evil.write_bytes(pickle.dumps(payload, protocol=4))
    else:
        torch.save(payload, evil, _use_new_zipfile_serialization=kind == "torch.save")
    done = subprocess.run([sys.executable, "-m", "cvtool", "evaluate", str(evil)], capture_output=True, text=True,
                          env={**os.environ, "PYTHONPATH": str(Path(__file__).resolve().parents[1])}, timeout=120)
    assert done.returncode == 2 and done.stdout == "", done.stdout
    lines = done.stderr.strip().splitlines()
    assert len(lines) == 1 and lines[0].startswith(f"cvtool: {evil}: refused: not a plain-weights checkpoint ("), lines
    assert "\x1b" not in lines[0]  # no ANSI escapes copied from torch's message
    expected = {"numpy array": "numpy", "plain pickle": "opcode"}.get(kind, "system")
    assert expected in lines[0]
    assert not Exploit.marker.exists()


def test_non_finite_loss_stops_naming_epoch_and_batch(synthetic, make_recipe, tmp_path: Path) -> None:
    data = synthetic("multiclass", n=80, size=16)
    recipe = make_recipe(tmp_path, data, optim={"name": "sgd", "lr": 1.0e12}, train={"epochs": 3, "device": "cpu"})
    line = one_line_error(runner.invoke(app, ["train", str(recipe), "--out", str(tmp_path / "nan"), "--quiet"]))
    assert "epoch 1, batch" in line and "nan" in line.lower()
    kept = load_checkpoint(tmp_path / "nan" / "checkpoints" / "last.pt")
    assert all(torch.isfinite(t).all() for t in kept["model"].values() if t.is_floating_point())


def test_bad_image_fails_naming_it_or_is_skipped_and_counted(synthetic, make_recipe, tmp_path: Path) -> None:
    root = tmp_path / "data"
    shutil.copytree(synthetic("multiclass", n=80, size=16)["root"], root)
    bad = next((root / "train").rglob("*.png"))
    bad.write_bytes(b"this is text, not a PNG")
    recipe = make_recipe(tmp_path, root, train={"epochs": 1, "device": "cpu", "max_batches": 1})
    line = one_line_error(runner.invoke(app, ["train", str(recipe), "--out", str(tmp_path / "a"), "--quiet"]))
    assert str(bad) in line
    result = runner.invoke(app, ["train", str(recipe), "--out", str(tmp_path / "b"), "--quiet",
                                 "--set", "data.on_bad_image=skip"])
    assert result.exit_code == 0, result.output
    import json

    summary = json.loads((tmp_path / "b" / "summary.json").read_text())
    assert summary["skipped_images"]["train"] == 1


def test_csv_paths_cannot_escape_the_data_root(synthetic, make_recipe, tmp_path: Path) -> None:
    root = tmp_path / "data"
    shutil.copytree(synthetic("multilabel", n=80, size=16)["root"], root)
    lines = (root / "train.csv").read_text().splitlines()
    lines[1] = "../../../etc/passwd," + lines[1].split(",", 1)[1]
    (root / "train.csv").write_text("\n".join(lines) + "\n")
    data = dict(synthetic("multilabel", n=80, size=16))
    data["data"] = {**data["data"], "root": str(root)}
    recipe = make_recipe(tmp_path, data, train={"epochs": 1, "device": "cpu"})
    line = one_line_error(runner.invoke(app, ["train", str(recipe), "--out", str(tmp_path / "x"), "--quiet"]))
    assert "escapes the data root" in line
