"""CUDA-only paths, skipped on machines without CUDA (`make gpu-check` runs them on a GPU):
bf16 and fp16 (with loss scaling) training, channels_last, torch.compile, DDP over nccl with one
process, resume on the GPU, export of a CUDA-trained checkpoint, onnxruntime's CUDA provider,
device-side augmentation and the side-stream feeder, `bench train` on CUDA; steps that never wait for the
device (sync debug mode "error") on the loader and on the device-resident split (`data.on_device`),
which trains like the loader; the loader's pin thread keeps each batch's drawn plan."""

from __future__ import annotations

import csv
import json
import socket
from pathlib import Path

import numpy as np
import pytest
import torch
from conftest import interrupt_and_resume
from typer.testing import CliRunner

from cvtool.cli.main import app
from cvtool.engine.accel import amp_dtype, select_device
from cvtool.runs.model import load_model

pytestmark = [pytest.mark.gpu, pytest.mark.skipif(not torch.cuda.is_available(), reason="needs CUDA")]
runner = CliRunner()
FLIP_AFFINE = [{"RandomHorizontalFlip": {"p": 0.5}},
               {"RandomAffine": {"degrees": 10, "translate": [0.1, 0.1], "scale": [0.9, 1.1]}}]
# small and eager unless a test is about compiling: each compile costs tens of seconds
CUDA_TRAIN = {"epochs": 2, "device": "cuda", "compile": False}


def _train(tmp_path: Path, recipe: Path, name: str, *extra: str) -> Path:
    run = tmp_path / name
    result = runner.invoke(app, ["train", str(recipe), "--out", str(run), "--quiet", *extra])
    assert result.exit_code == 0, result.output
    return run


def _history(run: Path) -> list[dict[str, str]]:
    with (run / "metrics.csv").open() as handle:
        return [{k: v for k, v in row.items() if k != "seconds"} for row in csv.DictReader(handle)]


def test_auto_device_and_amp_pick_cuda() -> None:
    device = select_device("auto")
    assert device.type == "cuda"
    assert amp_dtype(device, "auto") in (torch.bfloat16, torch.float16)
    assert amp_dtype(device, "none") is None


@pytest.mark.parametrize("amp", ["auto", "fp16", "bf16"])
def test_train_with_amp_and_channels_last_then_evaluate_on_cpu(amp: str, synthetic, make_recipe,
                                                              tmp_path: Path) -> None:
    if amp == "bf16" and not torch.cuda.is_bf16_supported():
        pytest.skip("no bf16 on this GPU")
    data = synthetic("multiclass", n=80, size=16)
    recipe = make_recipe(tmp_path, data, model={"arch": "resnet18", "small_input": {"stride1": 1}},
                         train={**CUDA_TRAIN, "device": "auto", "amp": amp, "channels_last": "auto"},
                         data={"image_size": 32}, augment=FLIP_AFFINE)
    run = _train(tmp_path, recipe, amp)
    summary = json.loads((run / "summary.json").read_text())
    assert summary["device"].startswith("cuda")
    assert 0.0 <= summary["val"]["accuracy"] <= 1.0
    assert all(np.isfinite(float(row["train/loss"])) for row in _history(run))
    loaded = load_model(run, device="cpu")
    assert next(loaded.model.parameters()).device.type == "cpu"
    evaluated = runner.invoke(app, ["evaluate", str(run), "--quiet"])
    assert evaluated.exit_code == 0, evaluated.output


@pytest.mark.parametrize("amp, scaled", [("fp16", True), ("bf16", False), ("none", False)])
def test_fp16_trains_with_loss_scaling_and_channels_last(amp: str, scaled: bool, synthetic, make_recipe,
                                                         tmp_path: Path) -> None:
    from cvtool.runs.recipes import load_recipe
    from cvtool.runs.step import build_session, build_step

    recipe = load_recipe(make_recipe(tmp_path, synthetic("multiclass", n=80, size=16),
                                     model={"arch": "resnet18"}, train={**CUDA_TRAIN, "amp": amp},
                                     data={"image_size": 32}))
    step = build_step(build_session(recipe, quiet=True), steps=4, batch=8)
    assert (step.scaler is not None) == scaled
    assert step.dtype == {"fp16": torch.float16, "bf16": torch.bfloat16, "none": None}[amp]
    assert step.channels_last
    conv = next(m for m in step.model.modules() if isinstance(m, torch.nn.Conv2d))
    assert conv.weight.is_contiguous(memory_format=torch.channels_last)
    assert torch.backends.cudnn.benchmark and torch.backends.cuda.matmul.allow_tf32


def test_compile_auto_compiles_on_cuda_without_falling_back(synthetic, make_recipe, tmp_path: Path, capfd) -> None:
    recipe = make_recipe(tmp_path, synthetic("multiclass", n=80, size=16), augment=FLIP_AFFINE,
                         train={**CUDA_TRAIN, "compile": "auto"})
    run = _train(tmp_path, recipe, "compiled")
    assert "torch.compile failed" not in capfd.readouterr().err
    assert json.loads((run / "summary.json").read_text())["val"]["accuracy"] >= 0.0


def test_ddp_over_nccl_with_one_process(synthetic, make_recipe, tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    from cvtool.cli.launch import run_recipe
    from cvtool.engine.distributed import Dist
    from cvtool.runs.recipes import load_recipe

    with socket.socket() as probe:
        probe.bind(("127.0.0.1", 0))
        port = probe.getsockname()[1]
    monkeypatch.setenv("MASTER_ADDR", "127.0.0.1")
    monkeypatch.setenv("MASTER_PORT", str(port))
    device = torch.device("cuda", 0)
    torch.cuda.set_device(device)
    torch.distributed.init_process_group("nccl", rank=0, world_size=1, device_id=device)
    dist = Dist(0, 0, 1, device)
    try:
        recipe = load_recipe(make_recipe(tmp_path, synthetic("multiclass", n=80, size=16), augment=FLIP_AFFINE,
                                         model={"arch": "resnet18", "sync_batchnorm": True}, train=CUDA_TRAIN,
                                         data={"image_size": 32}))
        summary = run_recipe(recipe, tmp_path / "ddp", quiet=True, dist=dist)
    finally:
        dist.close()
    assert summary["device"].startswith("cuda") and 0.0 <= summary["val"]["accuracy"] <= 1.0
    assert len(_history(tmp_path / "ddp")) == 2


def test_resume_on_gpu_equals_an_uninterrupted_gpu_run(synthetic, make_recipe, tmp_path: Path,
                                                       monkeypatch: pytest.MonkeyPatch) -> None:
    from cvtool.cli.launch import run_recipe
    from cvtool.runs.recipes import load_recipe

    monkeypatch.setattr(torch.backends.cudnn, "deterministic", True)
    path = make_recipe(tmp_path, synthetic("multiclass", n=80, size=16), augment=FLIP_AFFINE,
                       model={"dropout": 0.3, "blocks": [8, 16]}, optim={"name": "adam", "lr": 0.01},
                       train={**CUDA_TRAIN, "epochs": 3, "amp": "none", "cudnn_benchmark": False})
    recipe = load_recipe(path)
    run_recipe(recipe, tmp_path / "a", quiet=True)
    interrupt_and_resume(recipe, tmp_path / "b", batches=4 + 2)  # 4 batches an epoch: stopped in epoch 2
    a, b = _history(tmp_path / "a"), _history(tmp_path / "b")
    assert [list(row) for row in a] == [list(row) for row in b]
    np.testing.assert_allclose([[float(v) for v in row.values()] for row in b],
                               [[float(v) for v in row.values()] for row in a], rtol=1e-5, atol=1e-7)


def test_export_of_a_cuda_trained_checkpoint_passes_parity(synthetic, make_recipe, tmp_path: Path) -> None:
    recipe = make_recipe(tmp_path, synthetic("multiclass", n=80, size=16), augment=FLIP_AFFINE,
                         data={"image_size": 24, "decode_size": 16}, train=CUDA_TRAIN)
    run = _train(tmp_path, recipe, "run")
    for extra in ([], ["--raw-input"]):
        out = tmp_path / f"model{len(extra)}.onnx"
        result = runner.invoke(app, ["export", str(run), "--onnx", str(out), *extra])
        assert result.exit_code == 0, result.output
        assert out.is_file()


def test_onnxruntime_cuda_provider_matches_the_cpu_provider(synthetic, make_recipe, tmp_path: Path) -> None:
    import onnxruntime as ort

    if "CUDAExecutionProvider" not in ort.get_available_providers():
        pytest.skip(f"onnxruntime has no CUDA provider here ({', '.join(ort.get_available_providers())})")
    recipe = make_recipe(tmp_path, synthetic("multiclass", n=80, size=16), train=CUDA_TRAIN)
    run = _train(tmp_path, recipe, "run")
    out = tmp_path / "model.onnx"
    assert runner.invoke(app, ["export", str(run), "--onnx", str(out)]).exit_code == 0
    feed = {"images": np.random.default_rng(0).standard_normal((5, 3, 16, 16)).astype(np.float32)}
    cpu = ort.InferenceSession(str(out), providers=["CPUExecutionProvider"]).run(None, feed)[0]
    gpu = ort.InferenceSession(str(out), providers=["CUDAExecutionProvider"])
    assert gpu.get_providers()[0] == "CUDAExecutionProvider"
    np.testing.assert_allclose(gpu.run(None, feed)[0], cpu, rtol=1e-3, atol=1e-4)


@pytest.mark.parametrize("interpolation", ["nearest", "bilinear"])
def test_device_augmentation_on_cuda_matches_the_cpu_images(interpolation: str) -> None:
    from cvtool.data.batch_augment import BatchAugment
    from cvtool.data.loaders import sample_seed
    from cvtool.data.transforms import build_pipeline

    spec = [FLIP_AFFINE[0], {"RandomAffine": {**FLIP_AFFINE[1]["RandomAffine"], "interpolation": interpolation}}]
    augment = BatchAugment(build_pipeline(spec))
    images = torch.from_numpy(np.random.default_rng(0).integers(0, 256, (32, 3, 20, 20), np.uint8))
    plan = augment.draw([sample_seed(1, 2, i) for i in range(32)], 20, 20)
    cpu = augment.apply(images, plan)
    gpu = augment.apply(images.cuda(), plan)
    assert gpu.device.type == "cuda" and gpu.dtype == torch.uint8
    differ = (cpu.int() - gpu.cpu().int()).abs()
    # float rounding may move a sample across a pixel or rounding boundary, rarely
    assert (differ > 0).float().mean() < 0.01 and (differ > 1).float().mean() < 0.005


def test_device_feeder_copies_each_batch_unchanged(synthetic, make_recipe, tmp_path: Path) -> None:
    from cvtool.data.device import DeviceFeeder
    from cvtool.data.loaders import EpochSampler, make_loader
    from cvtool.data.pipeline import prepare_data, train_dataset
    from cvtool.runs.recipes import load_recipe
    from cvtool.tasks import get_task

    recipe = load_recipe(make_recipe(tmp_path, synthetic("multiclass", n=80, size=16), augment=FLIP_AFFINE))
    dataset = train_dataset(prepare_data(recipe.data, get_task("multiclass"), recipe.seed, ("train",), progress=False),
                            get_task("multiclass"), recipe.augment, recipe.seed, defer_augment=True)
    device = torch.device("cuda")
    loader = make_loader(dataset, 8, EpochSampler(len(dataset), 0, True), 2, device)
    plain, fed = list(loader), list(DeviceFeeder(loader, device))
    assert len(plain) == len(fed) > 1
    for want, got in zip(plain, fed, strict=True):
        assert got[0].device.type == "cuda" and got[1].device.type == "cuda"
        assert torch.equal(got[0].cpu(), want[0]) and torch.equal(got[1].cpu(), want[1])
        assert torch.equal(got[2], want[2]) and got.augment.drawn == want.augment.drawn


def test_bench_train_on_cuda_reports_the_ceiling_and_peak_memory(synthetic, make_recipe, tmp_path: Path) -> None:
    from cvtool.bench.train import bench_train
    from cvtool.runs.recipes import load_recipe

    recipe = load_recipe(make_recipe(tmp_path, synthetic("multiclass", n=80, size=16), augment=FLIP_AFFINE,
                                     data={"batch_size": 8}, train=CUDA_TRAIN))
    report = bench_train(recipe, steps=2, warmup=1, rounds=1)
    figures = {figure.name: figure.measured for figure in report.figures}
    assert figures["compute ceiling (device-resident random batch)"] > 0
    assert figures["real loader"] > 0 and 0 < figures["peak GPU memory"] < 100


# ---- the data path never waits for the device ----------------------------------------------------

SYNC_STEPS = 20  # guarded training steps per path


class SyncChecked:
    """`source`'s batches with CUDA's sync debug mode at "error" while they are fetched and trained
    on: anything that makes the host wait for the device (`.item()`, a blocking copy,
    `torch.tensor(..., device=cuda)`) raises. The mode goes back off after `steps` batches, before
    train_one_epoch's one read at the epoch's end (the loss sum and its finite check).

    The fetch is inside the guard on purpose: DeviceFeeder's copies and the resident split's gather are
    part of the promise. The DataLoader runs with num_workers=0, so it pins in this thread (through
    `Batch.pin_memory`) and no pin thread of torch's own runs beside the steps while the process-wide
    mode is on: only what the epoch itself runs can trigger it."""

    def __init__(self, source, steps: int) -> None:
        self.source, self.steps = source, steps
        self.loader = getattr(source, "loader", source)  # the DataLoader, whose length batch_sizes reads

    def __iter__(self):
        torch.cuda.set_sync_debug_mode("error")
        try:
            for i, batch in enumerate(self.source):
                yield batch
                if i + 1 == self.steps:
                    return
        finally:
            torch.cuda.set_sync_debug_mode(0)


@pytest.mark.parametrize("on_device, mix", [(False, True), (True, True), (True, False)])
def test_training_steps_never_wait_for_the_device(on_device: bool, mix: bool, synthetic, make_recipe,
                                                  tmp_path: Path) -> None:
    """Without MixUp the train metrics' running sums are added every step too (with MixUp none are kept)."""
    import itertools

    from cvtool.data.loaders import EpochSampler
    from cvtool.data.pipeline import train_dataset
    from cvtool.data.resident import is_resident, training_loader
    from cvtool.engine.loop import train_one_epoch
    from cvtool.runs.recipes import load_recipe
    from cvtool.runs.step import build_session, build_step

    recipe = load_recipe(make_recipe(
        tmp_path, synthetic("multiclass", n=960, size=32), augment=FLIP_AFFINE,
        augment_batch=[{"MixUp": {"alpha": 0.2}}] if mix else [],
        model={"arch": "resnet18"}, data={"image_size": 32, "batch_size": 32, "num_workers": 0, "on_device": on_device},
        train={**CUDA_TRAIN, "epochs": 1, "max_batches": SYNC_STEPS, "ema": {"decay": 0.99}}))
    session = build_session(recipe, quiet=True)
    train_set = train_dataset(session.bundle, session.task, recipe.augment, recipe.seed, defer_augment=True)
    sampler = EpochSampler(len(train_set), recipe.seed, True)
    sampler.set_epoch(1)
    loader = training_loader(train_set, 32, sampler, 0, session.device, on_device, drop_last=True)
    assert is_resident(loader) is on_device and len(loader) >= SYNC_STEPS
    step = build_step(session, steps=len(loader), batch=32, augment=train_set.batched)
    assert step.augment is not None and (step.mix is not None) is mix and step.ema is not None
    assert step.forward is step.model
    meter = session.task.train_meter(session.meta.num_outputs, 0.5, session.bundle.splits["train"].frames)
    # two steps first, unguarded: one-time set-up (cuDNN autotuning, cuBLAS handles, pinned-memory pool)
    train_one_epoch(step, list(itertools.islice(loader, 2)), 1, meter)
    result = train_one_epoch(step, SyncChecked(loader, SYNC_STEPS), 1, meter)
    assert result.images == SYNC_STEPS * 32 and np.isfinite(result.loss)
    assert (result.metrics == {}) is mix and (mix or 0 <= result.metrics["accuracy"] <= 1)


def test_on_device_gives_the_loaders_metrics_on_cuda(synthetic, make_recipe, tmp_path: Path,
                                                     monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setattr(torch.backends.cudnn, "deterministic", True)
    data = synthetic("multiclass", n=80, size=16)
    runs = []
    for on_device in ("false", "true"):
        recipe = make_recipe(tmp_path, data, name=f"on-{on_device}", augment=FLIP_AFFINE,
                             augment_batch=[{"MixUp": {"alpha": 0.4, "p": 0.7}}], model={"dropout": 0.3, "blocks": [8, 16]},
                             optim={"name": "adam", "lr": 0.01},
                             train={**CUDA_TRAIN, "epochs": 3, "amp": "none", "cudnn_benchmark": False})
        runs.append(_history(_train(tmp_path, recipe, f"run-{on_device}", "--set", f"data.on_device={on_device}")))
    loader, resident = runs
    assert [list(row) for row in loader] == [list(row) for row in resident] and len(loader) == 3
    np.testing.assert_allclose([[float(v) for v in row.values()] for row in resident],
                               [[float(v) for v in row.values()] for row in loader], rtol=1e-5, atol=1e-7)


def test_resident_batches_on_cuda_equal_the_loaders(synthetic, make_recipe, tmp_path: Path) -> None:
    from cvtool.data.loaders import EpochSampler
    from cvtool.data.pipeline import prepare_data, train_dataset
    from cvtool.data.resident import is_resident, training_loader
    from cvtool.runs.recipes import load_recipe
    from cvtool.tasks import get_task

    recipe = load_recipe(make_recipe(tmp_path, synthetic("multiclass", n=80, size=16), augment=FLIP_AFFINE))
    dataset = train_dataset(prepare_data(recipe.data, get_task("multiclass"), recipe.seed, ("train",), progress=False),
                            get_task("multiclass"), recipe.augment, recipe.seed, defer_augment=True)
    sampler = EpochSampler(len(dataset), 3, True)
    sampler.set_epoch(2)
    device = torch.device("cuda")
    loader, resident = (training_loader(dataset, 8, sampler, 0, device, on) for on in (False, True))
    assert is_resident(resident) and not is_resident(loader)
    pairs = list(zip(loader, resident, strict=True))
    assert len(pairs) > 1
    for want, got in pairs:
        assert got[0].device.type == "cuda" and got[1].device.type == "cuda" and got[2].device.type == "cpu"
        assert torch.equal(got[0].cpu(), want[0].cpu()) and torch.equal(got[1].cpu(), want[1].cpu())
        assert torch.equal(got[2], want[2]) and got.augment.drawn == want.augment.drawn


@pytest.mark.parametrize("workers", [0, 2])
def test_the_loader_pins_deferred_batches_and_keeps_their_plans(workers: int, synthetic, make_recipe,
                                                                tmp_path: Path) -> None:
    from cvtool.data.loaders import Batch, EpochSampler, make_loader
    from cvtool.data.pipeline import prepare_data, train_dataset
    from cvtool.runs.recipes import load_recipe
    from cvtool.tasks import get_task

    recipe = load_recipe(make_recipe(tmp_path, synthetic("multiclass", n=80, size=16), augment=FLIP_AFFINE))
    dataset = train_dataset(prepare_data(recipe.data, get_task("multiclass"), recipe.seed, ("train",), progress=False),
                            get_task("multiclass"), recipe.augment, recipe.seed, defer_augment=True)
    sampler = EpochSampler(len(dataset), 0, True)
    sampler.set_epoch(1)
    loader = make_loader(dataset, 8, sampler, workers, torch.device("cuda"))
    assert loader.pin_memory
    keys = list(sampler)
    seen = 0
    for batch in loader:  # workers > 0: pinned by torch's pin thread; 0: by the loader in this thread
        assert isinstance(batch, Batch) and batch[0].is_pinned() and batch[1].is_pinned()
        expected = dataset.__getitems__(keys[seen:seen + len(batch[2])])
        assert batch.augment is not None and batch.augment.drawn == expected.augment.drawn
        assert torch.equal(batch[0], expected[0]) and torch.equal(batch[2], expected[2])
        seen += len(batch[2])
    assert seen == len(dataset)
