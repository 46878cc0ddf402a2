"""The CUDA defects of the training step whose logic runs on the CPU too, tested there: the amp
dtype per compute capability, fp16 loss scaling saved and resumed exactly, every rank's RNG,
train metrics under MixUp, gradients freed right after the update, evaluation in the run's
precision, DDP's options, and the benchmark's starting point kept off the device. CPU autocast
and `torch.amp.GradScaler("cpu")` stand in for CUDA's (`train.amp: fp16|bf16` asked explicitly)."""

from __future__ import annotations

import csv
import json
import random
from pathlib import Path

import numpy as np
import pytest
import torch
from conftest import interrupt_and_resume
from typer.testing import CliRunner

from cvtool.cli.launch import run_recipe
from cvtool.cli.main import app
from cvtool.engine.accel import amp_dtype, grad_scaler
from cvtool.engine.checkpoint import load_checkpoint, restore_rng, rng_state, set_rng_state
from cvtool.runs.recipes import load_recipe

runner = CliRunner()
FLIP_AFFINE = [{"RandomHorizontalFlip": {"p": 0.5}}, {"RandomAffine": {"degrees": 10, "translate": [0.1, 0.1]}}]


def rows(run: Path) -> list[dict[str, str]]:
    with (run / "metrics.csv").open() as handle:
        return [{k: v for k, v in row.items() if k != "seconds"} for row in csv.DictReader(handle)]


@pytest.mark.parametrize("capability, expected", [((6, 0), torch.float16), ((7, 0), torch.float16),
                                                  ((7, 5), torch.float16), ((8, 0), torch.bfloat16),
                                                  ((8, 9), torch.bfloat16), ((9, 0), torch.bfloat16)])
def test_auto_amp_is_bf16_from_ampere_on_and_fp16_below(capability, expected) -> None:
    """P100 6.0, V100 7.0, T4 7.5 emulate bf16 (is_bf16_supported() is True there): fp16 + scaling."""
    cuda = torch.device("cuda")
    assert amp_dtype(cuda, "auto", capability) == expected
    assert (grad_scaler(torch.device("cpu"), expected) is not None) == (expected == torch.float16)


def test_amp_on_the_cpu_only_when_asked() -> None:
    cpu = torch.device("cpu")
    assert amp_dtype(cpu, "auto") is None and amp_dtype(cpu, "none") is None
    assert amp_dtype(cpu, "bf16") == torch.bfloat16 and amp_dtype(cpu, "fp16") == torch.float16


def test_an_fp16_resume_equals_an_uninterrupted_fp16_run(synthetic, make_recipe, tmp_path: Path) -> None:
    """The GradScaler's scale and growth tracker travel in last.pt: a resume neither restarts at
    65536 (skipping steps) nor drifts from the uninterrupted run."""
    recipe = load_recipe(make_recipe(tmp_path, synthetic("multiclass", n=80, size=16), augment=FLIP_AFFINE,
                                     optim={"name": "adam", "lr": 0.01}, model={"dropout": 0.3, "blocks": [8, 16]},
                                     train={"epochs": 3, "amp": "fp16"}))
    run_recipe(recipe, tmp_path / "a", quiet=True)
    saved = load_checkpoint(tmp_path / "a" / "checkpoints" / "last.pt")["scaler"]
    assert saved is not None and 0 < saved["scale"] < 65536.0  # it backed off: a fresh scaler would skip again
    interrupt_and_resume(recipe, tmp_path / "b", batches=4 + 2)  # 4 batches an epoch: stopped in epoch 2
    assert rows(tmp_path / "a") == rows(tmp_path / "b")


def test_each_rank_gets_its_own_rng_back() -> None:
    states = []
    for rank in range(3):
        torch.manual_seed(100 + rank)
        random.seed(rank)
        np.random.seed(rank)
        states.append(rng_state())
    payload = {"rng": states[0], "rng_per_rank": states}
    for rank in (2, 1):
        restore_rng(payload, rank)
        torch.manual_seed(100 + rank)
        expected = torch.rand(3)
        set_rng_state(states[rank])
        assert torch.equal(torch.rand(3), expected)
    restore_rng(payload, 5)  # more ranks than saved: rank 0's state moved on by the rank, not rank 0's draws
    moved = torch.rand(3)
    set_rng_state(states[0])
    assert not torch.equal(moved, torch.rand(3))


def test_an_old_checkpoints_rng_of_every_visible_gpu_does_not_break_a_resume() -> None:
    state = rng_state()
    state["cuda"] = [torch.zeros(16, dtype=torch.uint8)] * 8  # get_rng_state_all() of 8 GPUs
    restore_rng({"rng": state}, 0)  # no IndexError: only the current device's state is ever set


def test_mixup_runs_report_no_train_metrics_of_mixed_images(synthetic, make_recipe, tmp_path: Path) -> None:
    plain = load_recipe(make_recipe(tmp_path, synthetic("multiclass", n=80, size=16), name="plain"))
    mixed = load_recipe(make_recipe(tmp_path, synthetic("multiclass", n=80, size=16), name="mixed",
                                    augment_batch=[{"MixUp": {"alpha": 0.4}}]))
    run_recipe(plain, tmp_path / "plain", quiet=True)
    run_recipe(mixed, tmp_path / "mixed", quiet=True)
    assert {"train/accuracy", "train/f1_macro"} <= set(rows(tmp_path / "plain")[0])
    assert [k for k in rows(tmp_path / "mixed")[0] if k.startswith("train/")] == ["train/loss"]


def test_gradients_are_freed_right_after_each_update(synthetic, make_recipe, tmp_path: Path,
                                                     monkeypatch: pytest.MonkeyPatch) -> None:
    """No gradient is allocated while the next batch's forward runs (accumulation: only inside a group)."""
    from cvtool.engine import loop

    seen: list[bool] = []
    original = loop.Step.inputs

    def probe(self, images, plan=None):
        seen.append(any(p.grad is not None for p in self.module.parameters()))
        return original(self, images, plan)

    monkeypatch.setattr(loop.Step, "inputs", probe)
    recipe = load_recipe(make_recipe(tmp_path, synthetic("multiclass", n=80, size=16),
                                     train={"epochs": 1, "accumulate": 2}))
    run_recipe(recipe, tmp_path / "run", quiet=True)
    assert seen == [False, True, False, True]  # 4 batches, updates after the 2nd and the 4th


def test_evaluate_runs_in_the_runs_precision_and_reproduces_its_val_loss(synthetic, make_recipe,
                                                                        tmp_path: Path) -> None:
    recipe = make_recipe(tmp_path, synthetic("multiclass", n=80, size=16), train={"epochs": 1, "amp": "bf16"})
    result = runner.invoke(app, ["train", str(recipe), "--out", str(tmp_path / "run"), "--quiet"])
    assert result.exit_code == 0, result.output
    summary = json.loads((tmp_path / "run" / "summary.json").read_text())
    result = runner.invoke(app, ["evaluate", str(tmp_path / "run"), "--split", "val", "--out", str(tmp_path / "e"),
                                 "--quiet"])
    assert result.exit_code == 0, result.output
    evaluated = json.loads((tmp_path / "e" / "metrics.json").read_text())
    # bf16 logits differ from fp32 ones in the third digit: only the same precision gives the same loss
    assert evaluated["loss"] == pytest.approx(summary["val"]["loss"], rel=1e-6)


def test_onnxruntime_takes_the_cuda_provider_for_predict_only(monkeypatch: pytest.MonkeyPatch) -> None:
    import onnxruntime as ort

    from cvtool.inference.onnx_runtime import providers

    monkeypatch.setattr(ort, "get_available_providers", lambda: ["CUDAExecutionProvider", "CPUExecutionProvider"])
    assert providers(gpu=True) == ["CUDAExecutionProvider", "CPUExecutionProvider"]
    assert providers(gpu=False) == ["CPUExecutionProvider"]  # export's parity check
    monkeypatch.setattr(ort, "get_available_providers", lambda: ["CPUExecutionProvider"])
    assert providers(gpu=True) == ["CPUExecutionProvider"]


@pytest.mark.parametrize("broadcast, bucket", [(True, True), (False, False)])
def test_ddp_options_come_from_the_recipe(broadcast: bool, bucket: bool, synthetic, make_recipe, tmp_path: Path,
                                          monkeypatch: pytest.MonkeyPatch) -> None:
    import socket

    from cvtool.engine.distributed import Dist
    from cvtool.runs.step import build_session, build_step

    with socket.socket() as probe:
        probe.bind(("127.0.0.1", 0))
        port = probe.getsockname()[1]
    monkeypatch.setenv("MASTER_ADDR", "127.0.0.1")
    monkeypatch.setenv("MASTER_PORT", str(port))
    torch.distributed.init_process_group("gloo", rank=0, world_size=1)
    dist = Dist(0, 0, 1, torch.device("cpu"))
    try:
        recipe = load_recipe(make_recipe(tmp_path, synthetic("multiclass", n=80, size=16),
                                         train={"ddp": {"broadcast_buffers": broadcast, "bucket_view": bucket}}))
        step = build_step(build_session(recipe, quiet=True, dist=dist), steps=4, batch=8)
        syncs = getattr(step.model, "forward_sync_buffers", None)  # torch >= 2.14; before: broadcast_buffers
        assert (step.model.broadcast_buffers if syncs is None else syncs) is broadcast
        assert step.model.gradient_as_bucket_view is bucket
        assert step.module is step.model.module
    finally:
        dist.close()


def test_the_benchmarks_starting_point_is_kept_in_host_memory() -> None:
    from cvtool.bench.steps import on_cpu

    model = torch.nn.Linear(3, 2)
    optimizer = torch.optim.Adam(model.parameters())
    model(torch.ones(1, 3)).sum().backward()
    optimizer.step()
    weights, state = on_cpu((model.state_dict(), optimizer.state_dict()))
    assert all(t.device.type == "cpu" for t in weights.values())
    assert torch.equal(weights["weight"], model.weight) and weights["weight"] is not model.weight
    assert torch.equal(state["state"][0]["exp_avg"], optimizer.state[model.weight]["exp_avg"])
