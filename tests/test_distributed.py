"""Distributed training: `torchrun --nproc_per_node=2 -m cvtool train` (gloo on CPU) on a tiny
generated dataset, checked against a single-process evaluation of the checkpoint it saved.

A sitecustomize.py put on the workers' PYTHONPATH records the indices each rank's training
sampler really yields per epoch, and can make one rank fail (a CvtoolError) at a given epoch.
"""

from __future__ import annotations

import json
import os
import shutil
import subprocess
import sys
import time
from pathlib import Path
from typing import Any

import numpy as np
import pytest
import torch
import yaml

from cvtool.errors import CvtoolError

TORCHRUN = shutil.which("torchrun", path=str(Path(sys.executable).parent)) or shutil.which("torchrun")
needs_torchrun = pytest.mark.skipif(TORCHRUN is None, reason="torchrun is not installed")
TIMEOUT = 150  # seconds; a hang fails the test instead of blocking the suite

PROBE = '''
import json, os
if os.environ.get("LOCAL_RANK") is not None and os.environ.get("CVTOOL_TEST_SHARDS"):
    from cvtool.data import loaders
    from cvtool.errors import CvtoolError

    _iter = loaders.EpochSampler.__iter__
    _rank = int(os.environ["RANK"])

    def _recorded(self):
        items = list(_iter(self))
        if self.shuffle:  # the training sampler
            if os.environ.get("CVTOOL_TEST_FAIL") == f"{_rank}:{self.epoch}":
                raise CvtoolError(f"injected failure on rank {_rank} at epoch {self.epoch}")
            with open(os.path.join(os.environ["CVTOOL_TEST_SHARDS"], f"rank{_rank}.jsonl"), "a") as f:
                f.write(json.dumps({"epoch": self.epoch, "indices": [i for _, i in items]}) + "\\n")
        return iter(items)

    loaders.EpochSampler.__iter__ = _recorded
'''


@pytest.fixture(scope="module")
def dataset(tmp_path_factory: pytest.TempPathFactory) -> dict[str, Any]:
    """3 classes, 68 images: 50 train (even: two disjoint shards), 9 val and 9 test (odd:
    uneven eval shards of 5 and 4, which must gather without duplicates)."""
    from cvtool.data.generate import write_synthetic

    info = write_synthetic(tmp_path_factory.mktemp("ddp") / "data", "multiclass", n=68, size=16, num_classes=3)
    assert info["splits"] == {"train": 50, "val": 9, "test": 9}
    return info


def write_recipe(folder: Path, info: dict[str, Any], **data: Any) -> Path:
    recipe = {
        "name": "ddp", "task": "multiclass", "seed": 0,
        "data": {**info["data"], "batch_size": 4, "num_workers": 0, "normalize": "none", **data},
        "augment": [{"RandomHorizontalFlip": {}}],
        "model": {"arch": "simplenet", "blocks": [8, 16], "batch_norm": True, "dropout": 0.1},
        "optim": {"name": "adam", "lr": 0.01},
        "train": {"epochs": 2, "device": "cpu", "ema": {"decay": 0.9}},  # EMA: BatchNorm averaged over ranks
    }
    path = folder / "ddp.yaml"
    path.write_text(yaml.safe_dump(recipe, sort_keys=False), encoding="utf-8")
    return path


def torchrun(folder: Path, recipe: Path, out: Path, fail: str = "") -> tuple[subprocess.CompletedProcess, float]:
    """`torchrun --standalone --nproc_per_node=2 -m cvtool train RECIPE --out OUT --quiet`."""
    (folder / "probe").mkdir(exist_ok=True)
    (folder / "probe" / "sitecustomize.py").write_text(PROBE, encoding="utf-8")
    (folder / "shards").mkdir(exist_ok=True)
    env = {**os.environ, "PYTHONPATH": os.pathsep.join([str(folder / "probe"), os.environ.get("PYTHONPATH", "")]),
           "CVTOOL_TEST_SHARDS": str(folder / "shards"), "CVTOOL_TEST_FAIL": fail, "OMP_NUM_THREADS": "1"}
    command = [TORCHRUN, "--standalone", "--nproc_per_node=2", "-m", "cvtool", "train", str(recipe),
               "--out", str(out), "--quiet"]
    start = time.perf_counter()
    result = subprocess.run(command, env=env, cwd=folder, capture_output=True, text=True, timeout=TIMEOUT)
    return result, time.perf_counter() - start


def shards(folder: Path) -> dict[int, dict[int, list[int]]]:
    """{rank: {epoch: training indices that rank's sampler yielded}}."""
    found = {}
    for rank in (0, 1):
        lines = (folder / "shards" / f"rank{rank}.jsonl").read_text().splitlines()
        found[rank] = {row["epoch"]: row["indices"] for row in map(json.loads, lines)}
    return found


def evaluate_alone(run: Path, split: str, out: Path) -> dict[str, Any]:
    """`cvtool evaluate RUN --split SPLIT` in this (single) process: its metrics.json."""
    from typer.testing import CliRunner

    from cvtool.cli.main import app

    result = CliRunner().invoke(app, ["evaluate", str(run), "--split", split, "--out", str(out), "--quiet"])
    assert result.exit_code == 0, result.output
    return json.loads((out / "metrics.json").read_text())


@pytest.fixture(scope="module")
def ddp_run(dataset: dict[str, Any], tmp_path_factory: pytest.TempPathFactory) -> dict[str, Any]:
    folder = tmp_path_factory.mktemp("ddp-run")
    result, seconds = torchrun(folder, write_recipe(folder, dataset), folder / "runs" / "ddp")
    assert result.returncode == 0, result.stdout + result.stderr
    return {"folder": folder, "run": folder / "runs" / "ddp", "result": result, "seconds": seconds}


@needs_torchrun
@pytest.mark.slow
def test_two_ranks_write_one_run(ddp_run: dict[str, Any]) -> None:
    run = ddp_run["run"]
    assert [p.name for p in run.parent.iterdir()] == ["ddp"]  # one run dir, nothing else
    for name in ("recipe.yaml", "metrics.csv", "summary.json", "checkpoints/best.pt", "checkpoints/last.pt"):
        assert (run / name).is_file(), name
    assert len((run / "metrics.csv").read_text().strip().splitlines()) == 1 + 2  # header + 2 epochs
    stdout = ddp_run["result"].stdout
    assert stdout.count("epoch   1") == 1 and stdout.count("epoch   2") == 1  # rank 0 alone prints rows
    assert stdout.count(f"run: {run}") == 1


@needs_torchrun
def test_metrics_equal_a_single_process_evaluation(ddp_run: dict[str, Any], tmp_path: Path) -> None:
    from cvtool.evaluation.evaluate import evaluate_split
    from cvtool.runs.model import load_model

    run = ddp_run["run"]
    summary = json.loads((run / "summary.json").read_text())
    for split in ("val", "test"):
        alone = evaluate_alone(run, split, tmp_path / split)
        assert alone["images"] == 9 and set(summary[split]) == {"loss", "accuracy", "f1_macro"}
        assert summary[split]["loss"] == pytest.approx(alone["loss"], rel=1e-5)
        for key, value in alone["metrics"].items():
            assert summary[split][key] == pytest.approx(value, rel=1e-9), (split, key)
    # The val predictions gathered from both ranks (shards of 5 and 4): every image once, same outputs.
    saved = np.load(run / "predictions" / "val_best.npz")
    assert saved["indices"].tolist() == list(range(9))
    single = evaluate_split(load_model(run, "best"), "val")
    np.testing.assert_allclose(saved["outputs"], single.outputs, rtol=1e-5, atol=1e-6)


@needs_torchrun
def test_ranks_train_on_disjoint_shards_of_each_epoch(ddp_run: dict[str, Any]) -> None:
    seen = shards(ddp_run["folder"])
    assert sorted(seen[0]) == sorted(seen[1]) == [1, 2]
    for epoch in (1, 2):
        first, second = seen[0][epoch], seen[1][epoch]
        assert len(first) == len(second) == 25
        assert not set(first) & set(second)
        assert sorted(first + second) == list(range(50))
    assert seen[0][1] != seen[0][2]  # reshuffled every epoch


@needs_torchrun
@pytest.mark.slow
def test_a_failure_on_one_rank_stops_both_with_one_message(dataset: dict[str, Any], tmp_path: Path) -> None:
    result, seconds = torchrun(tmp_path, write_recipe(tmp_path, dataset), tmp_path / "run", fail="1:2")
    output = result.stdout + result.stderr
    assert result.returncode != 0
    assert output.count("cvtool: injected failure on rank 1 at epoch 2") == 1, output
    assert [line for line in output.splitlines() if line.startswith("cvtool:")] == [
        "cvtool: injected failure on rank 1 at epoch 2"]
    assert "[rank0]" not in output and "Connection closed" not in output, output  # rank 0 left quietly
    assert (tmp_path / "run" / "checkpoints" / "last.pt").is_file()  # epoch 1 is kept for --resume
    assert seconds < TIMEOUT


@needs_torchrun
@pytest.mark.slow
def test_the_same_error_on_every_rank_is_reported_once(dataset: dict[str, Any], tmp_path: Path) -> None:
    recipe = write_recipe(tmp_path, dataset, root=str(tmp_path / "missing"))
    result, _ = torchrun(tmp_path, recipe, tmp_path / "run")
    output = result.stdout + result.stderr
    assert result.returncode != 0
    errors = [line for line in output.splitlines() if line.startswith("cvtool:")]
    assert len(errors) == 1 and "missing" in errors[0], output
    assert "[rank0]" not in output and "[rank1]" not in output, output


def test_a_single_process_gets_no_dist(monkeypatch: pytest.MonkeyPatch) -> None:
    from cvtool.engine.distributed import from_environment

    monkeypatch.delenv("WORLD_SIZE", raising=False)
    assert from_environment("auto") is None
    monkeypatch.setenv("WORLD_SIZE", "1")
    assert from_environment("cpu") is None
    monkeypatch.setenv("WORLD_SIZE", "2")
    monkeypatch.delenv("RANK", raising=False)
    with pytest.raises(CvtoolError, match="torchrun"):
        from_environment("cpu")


def test_sync_batchnorm_on_cpu_is_refused() -> None:
    from cvtool.engine.distributed import Dist

    model = torch.nn.Sequential(torch.nn.Conv2d(3, 4, 3), torch.nn.BatchNorm2d(4))
    with pytest.raises(CvtoolError, match="sync_batchnorm"):
        Dist(0, 0, 2, torch.device("cpu")).wrap(model, sync_batchnorm=True)


def test_bad_timeout_is_a_user_error(monkeypatch: pytest.MonkeyPatch) -> None:
    from cvtool.engine.distributed import TIMEOUT_ENV, _timeout

    monkeypatch.setenv(TIMEOUT_ENV, "soon")
    with pytest.raises(CvtoolError, match=TIMEOUT_ENV):
        _timeout()
    monkeypatch.setenv(TIMEOUT_ENV, "90")
    assert _timeout().total_seconds() == 90


def test_failure_guard_reraises_the_first_failure_only() -> None:
    from cvtool.engine.distributed import Dist, failure_guard

    store = torch.distributed.HashStore()
    first, second = (Dist(rank, rank, 2, torch.device("cpu"), store) for rank in (1, 0))
    with pytest.raises(CvtoolError, match="bad data"), failure_guard(first):
        raise CvtoolError("bad data")
    with pytest.raises(SystemExit) as stopped, failure_guard(second):
        raise RuntimeError("Connection closed by peer")
    assert stopped.value.code == 1
    with failure_guard(None), pytest.raises(ValueError):
        raise ValueError("no dist: untouched")


@pytest.mark.parametrize("mine", [3, 0])  # rank 0 holds 3 samples, or none (more ranks than samples)
def test_gather_sends_outputs_as_padded_tensors_not_pickles(mine: int, monkeypatch: pytest.MonkeyPatch) -> None:
    """Rank 0's side of a two-rank gather, rank 1 (one sample) played by stand-ins for the collectives:
    the outputs go through all_gather as tensors padded to the largest shard; only counts, losses and
    layouts are pickled."""
    from cvtool.engine.distributed import Dist

    ours = (np.arange(mine * 2, dtype=np.float32).reshape(mine, 2) if mine else np.zeros((0, 0), np.float32),
            np.arange(mine, dtype=np.int64) if mine else np.zeros((0,), np.float32), np.arange(mine, dtype=np.int64))
    theirs = (np.array([[5.0, 6.0]], np.float32), np.array([2], np.int64), np.array([7], np.int64))
    pickled, sent = [], []

    def all_gather_object(parts: list, value: object) -> None:
        pickled.append(value)
        parts[:] = [value, (1, 0.5, [(a.shape[1:], a.dtype.str) for a in theirs])]

    def all_gather(parts: list[torch.Tensor], tensor: torch.Tensor) -> None:
        sent.append(tensor.shape)
        padded = np.zeros(tuple(tensor.shape), tensor.numpy().dtype)
        padded[:1] = theirs[len(sent) - 1]
        parts[0].copy_(tensor)
        parts[1].copy_(torch.from_numpy(padded))

    monkeypatch.setattr(torch.distributed, "all_gather_object", all_gather_object)
    monkeypatch.setattr(torch.distributed, "all_gather", all_gather)
    logits, targets, indices, loss = Dist(0, 0, 2, torch.device("cpu")).gather(*ours, loss=1.5)
    assert not any(isinstance(item, np.ndarray) for value in pickled for item in value)  # no outputs pickled
    assert sent == [(max(mine, 1), 2), (max(mine, 1),), (max(mine, 1),)]
    np.testing.assert_array_equal(logits, np.concatenate([ours[0].reshape(mine, 2), theirs[0]]))
    np.testing.assert_array_equal(targets, np.concatenate([ours[1].astype(np.int64), theirs[1]]))
    np.testing.assert_array_equal(indices, np.concatenate([ours[2], theirs[2]]))
    assert targets.dtype == np.int64 and loss == pytest.approx((1.5 * mine + 0.5) / (mine + 1))
