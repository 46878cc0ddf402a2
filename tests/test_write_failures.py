"""Failed writes are one line: a read-only folder, a full disk or a refused permission names the
path and the reason, exits 2, keeps the previous file byte-identical and leaves no temp file.

A real filesystem where the machine allows it (a small tmpfs mounted by the test, made
read-only or filled up; needs root, skipped with the reason otherwise); the OSError injected
at the OS call (os.replace) where a real one cannot be timed (a checkpoint save mid-run)."""

from __future__ import annotations

import contextlib
import errno
import os
import shutil
import subprocess
from collections.abc import Iterator
from pathlib import Path

import pytest
import torch
from conftest import one_line_error, snapshot, stop_line, write_recipe
from typer.testing import CliRunner

from cvtool.cli.main import app
from cvtool.engine.checkpoint import load_checkpoint
from cvtool.errors import WriteError
from cvtool.fileio import write_json, write_text

runner = CliRunner()
REASONS = {errno.EROFS: "Read-only file system", errno.ENOSPC: "No space left on device",
           errno.EACCES: "Permission denied"}


def invoke(*args: object):
    return runner.invoke(app, [str(a) for a in args])


@contextlib.contextmanager
def tmpfs(path: Path, size: str = "8m") -> Iterator[Path]:
    path.mkdir(parents=True, exist_ok=True)
    mounted = subprocess.run(["mount", "-t", "tmpfs", "-o", f"size={size}", "tmpfs", str(path)],
                             capture_output=True, text=True)
    if mounted.returncode != 0:
        pytest.skip(f"cannot mount a tmpfs here (needs root): {mounted.stderr.strip() or mounted.returncode}")
    try:
        yield path
    finally:
        subprocess.run(["umount", "-l", str(path)], capture_output=True)


def read_only(path: Path) -> None:
    subprocess.run(["mount", "-o", "remount,ro", str(path)], check=True, capture_output=True)


def fill(path: Path) -> None:
    """Fill the filesystem under `path` up to the last byte."""
    fd = os.open(path / "filler", os.O_WRONLY | os.O_CREAT, 0o644)
    try:
        for chunk in (65536, 4096, 1):
            with contextlib.suppress(OSError):
                while os.write(fd, b"\0" * chunk):
                    pass
    finally:
        os.close(fd)


@pytest.fixture(scope="module")
def trained(tmp_path_factory, synthetic) -> Path:
    out = tmp_path_factory.mktemp("trained")
    recipe = write_recipe(out, synthetic("multiclass", n=80, size=16), train={"epochs": 1, "device": "cpu"})
    result = invoke("train", recipe, "--out", out / "run", "--quiet")
    assert result.exit_code == 0, result.output
    return out / "run"


@pytest.mark.parametrize("code", sorted(REASONS))
def test_atomic_write_failure_names_path_keeps_old_file_and_no_temp(code, tmp_path, monkeypatch) -> None:
    target = tmp_path / "metrics.json"
    write_json(target, {"old": 1})
    before = snapshot(tmp_path)
    real_replace = os.replace

    def refuse(src, dst, *args, **kwargs):
        if Path(dst) == target:
            raise OSError(code, os.strerror(code), str(dst))
        return real_replace(src, dst, *args, **kwargs)

    monkeypatch.setattr(os, "replace", refuse)
    with pytest.raises(WriteError, match=f"{target}: cannot write \\({REASONS[code]}\\)"):
        write_json(target, {"new": 2})
    assert snapshot(tmp_path) == before


def test_stats_on_a_read_only_data_root(tmp_path, synthetic) -> None:
    with tmpfs(tmp_path / "ro") as mount:
        root = mount / "data"
        shutil.copytree(synthetic("multiclass", n=40, size=16)["root"], root)
        write_text(root / "cvtool-stats.json", '{"previous": true}\n')
        before = snapshot(mount)
        read_only(mount)
        line = one_line_error(invoke("stats", root, "--format", "folder", "--task", "multiclass", "--quiet"))
        assert f"{root / 'cvtool-stats.json'}: cannot write (Read-only file system)" in line
        assert "--out" in line
        assert snapshot(mount) == before


def test_train_into_a_read_only_folder(tmp_path, synthetic) -> None:
    recipe = write_recipe(tmp_path, synthetic("multiclass", n=40, size=16), train={"epochs": 1, "device": "cpu"})
    with tmpfs(tmp_path / "ro") as mount:
        (mount / "keep.txt").write_text("mine")
        read_only(mount)
        line = one_line_error(invoke("train", recipe, "--out", mount / "run", "--quiet"))
        assert str(mount) in line and "Read-only file system" in line
        assert snapshot(mount) == {"keep.txt": b"mine"}


def test_checkpoint_save_failing_mid_run_stops_it_keeping_last_pt(tmp_path, synthetic, monkeypatch) -> None:
    recipe = write_recipe(tmp_path, synthetic("multiclass", n=40, size=16), train={"epochs": 3, "device": "cpu"})
    run = tmp_path / "run"
    real_replace, saves, kept = os.replace, [], {}

    def full_at_epoch_2(src, dst, *args, **kwargs):
        if Path(dst).name == "last.pt":
            saves.append(dst)
            if len(saves) == 3:  # epoch 0 (initial), epoch 1, then epoch 2: the disk is full
                kept["bytes"] = Path(dst).read_bytes()
                raise OSError(errno.ENOSPC, os.strerror(errno.ENOSPC), str(dst))
        return real_replace(src, dst, *args, **kwargs)

    monkeypatch.setattr(os, "replace", full_at_epoch_2)
    line = stop_line(invoke("train", recipe, "--out", run, "--quiet"))
    last = run / "checkpoints" / "last.pt"
    assert f"{last}: cannot write (No space left on device)" in line
    assert last.read_bytes() == kept["bytes"] and load_checkpoint(last)["epoch"] == 1
    assert not [p for p in run.rglob("*.tmp")]


@pytest.mark.slow  # five commands, one an ONNX export with its parity check
def test_evaluate_report_predict_export_into_a_read_only_folder(trained, tmp_path) -> None:
    with tmpfs(tmp_path / "ro") as mount:
        previous = {"eval/metrics.json": b'{"old": 1}\n', "report.md": b"# old\n", "submission.csv": b"image,label\n",
                    "model.onnx": b"old model"}
        for name, data in previous.items():
            (mount / name).parent.mkdir(parents=True, exist_ok=True)
            (mount / name).write_bytes(data)
        read_only(mount)
        images = Path(load_checkpoint(trained / "checkpoints" / "best.pt")["recipe"]["data"]["root"]) / "test"
        commands = {
            "eval/metrics.json": ("evaluate", trained, "--out", mount / "eval"),
            "report.md": ("report", trained, "--out", mount / "report.md"),
            "submission.csv": ("predict", trained, images, "--out", mount / "submission.csv"),
            "model.onnx": ("export", trained, "--onnx", mount / "model.onnx"),
        }
        for command in commands.values():
            line = one_line_error(invoke(*command))
            assert str(mount) in line and "Read-only file system" in line, line
        assert snapshot(mount) == previous


def test_predict_on_a_full_disk_keeps_the_previous_submission(trained, tmp_path) -> None:
    data_root = Path(load_checkpoint(trained / "checkpoints" / "best.pt")["recipe"]["data"]["root"])
    with tmpfs(tmp_path / "full", size="256k") as mount:
        (mount / "submission.csv").write_bytes(b"image,label\nold.png,0\n")
        fill(mount)
        before = snapshot(mount)
        line = one_line_error(invoke("predict", trained, data_root / "test", "--out", mount / "submission.csv"))
        assert f"{mount / 'submission.csv'}: cannot write (No space left on device)" in line
        assert snapshot(mount) == before


@pytest.mark.parametrize("content", [b"", "truncated", b"this is a text file, not a checkpoint\n"])
def test_broken_checkpoint_is_one_line(content, tmp_path) -> None:
    path = tmp_path / "broken.pt"
    if content == "truncated":
        torch.save({"format": "cvtool-checkpoint/1", "model": {"w": torch.zeros(1000)}}, path)
        content = path.read_bytes()[:700]
    path.write_bytes(content)
    for command in (("evaluate", path), ("export", path, "--onnx", tmp_path / "m.onnx"), ("predict", path, tmp_path)):
        line = one_line_error(invoke(*command))
        assert f"{path}: not a readable checkpoint" in line
    assert sorted(p.name for p in tmp_path.iterdir()) == ["broken.pt"]


@pytest.mark.slow  # five commands per errno, one an ONNX export with its parity check
@pytest.mark.parametrize("code", sorted(REASONS))
def test_every_command_output_refused_at_os_replace(code, trained, tmp_path, monkeypatch) -> None:
    """The same promise where no filesystem can be mounted: the OSError comes from os.replace."""
    out = tmp_path / "out"
    previous = {"stats.json": b"{}\n", "eval/metrics.json": b'{"old": 1}\n', "report.md": b"# old\n",
                "submission.csv": b"image,label\n", "model.onnx": b"old model"}
    for name, data in previous.items():
        (out / name).parent.mkdir(parents=True, exist_ok=True)
        (out / name).write_bytes(data)
    real_replace = os.replace

    def refuse(src, dst, *args, **kwargs):
        if Path(dst).is_relative_to(out):
            raise OSError(code, os.strerror(code), str(dst))
        return real_replace(src, dst, *args, **kwargs)

    data_root = Path(load_checkpoint(trained / "checkpoints" / "best.pt")["recipe"]["data"]["root"])
    commands = {
        "stats.json": ("stats", data_root, "--format", "folder", "--task", "multiclass", "--out", out / "stats.json",
                       "--quiet"),
        "eval/metrics.json": ("evaluate", trained, "--out", out / "eval"),
        "report.md": ("report", trained, "--out", out / "report.md"),
        "submission.csv": ("predict", trained, data_root / "test", "--out", out / "submission.csv"),
        "model.onnx": ("export", trained, "--onnx", out / "model.onnx"),
    }
    monkeypatch.setattr(os, "replace", refuse)
    for command in commands.values():
        line = one_line_error(invoke(*command))
        assert str(out) in line and f"cannot write ({REASONS[code]})" in line, line
    monkeypatch.undo()
    assert snapshot(out) == previous
