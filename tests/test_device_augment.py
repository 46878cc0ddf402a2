"""The GPU-first data path, proven on the CPU: augmentation drawn in the loader and applied on the
training device gives the per-sample pipeline's images bit for bit; `data.decode_size` caches small
and resizes on the device, in training, evaluation, TTA and the --raw-input ONNX graph alike;
`train.compile` falls back to eager in one line; a non-finite loss is still named after the epoch."""

from __future__ import annotations

import pickle
from pathlib import Path

import numpy as np
import pytest
import torch

from cvtool.data.device import DeviceFeeder, augment_on_device
from cvtool.data.loaders import Batch, EpochSampler, Normalize, make_loader, resize
from cvtool.engine.accel import compiled_forward, wants_compile
from cvtool.engine.loop import NonFiniteLoss, Step, _check_finite

FLIP_AFFINE = [{"RandomHorizontalFlip": {"p": 0.5}},
               {"RandomAffine": {"degrees": 10, "translate": [0.1, 0.1], "scale": [0.9, 1.1]}}]


def _train_set(synthetic, make_recipe, tmp_path: Path, defer: bool, augment=FLIP_AFFINE, **data):
    from cvtool.data.pipeline import prepare_data, train_dataset
    from cvtool.runs.recipes import load_recipe
    from cvtool.tasks import get_task

    recipe = load_recipe(make_recipe(tmp_path, synthetic("multiclass", n=60, size=16), augment=augment,
                                     data={"normalize": "imagenet", **data}))
    bundle = prepare_data(recipe.data, get_task("multiclass"), recipe.seed, ("train",), progress=False)
    return recipe, bundle, train_dataset(bundle, get_task("multiclass"), recipe.augment, recipe.seed, defer_augment=defer)


def _stepper(train_set, bundle, size: int) -> Step:
    normalize, identity = Normalize(bundle.mean, bundle.std, size), torch.nn.Identity()
    return Step(identity, identity, identity, normalize, None, None, None, torch.device("cpu"),
                augment=train_set.batched if train_set.defer_augment else None)


def test_device_side_augmentation_equals_the_per_sample_pipeline(synthetic, make_recipe, tmp_path: Path) -> None:
    _, bundle, deferred = _train_set(synthetic, make_recipe, tmp_path, defer=True)
    assert deferred.defer_augment
    cpu = torch.device("cpu")
    assert augment_on_device(cpu, 0) and not augment_on_device(cpu, 2)  # CPU workers augment in parallel
    sampler = EpochSampler(len(deferred), 7, True)
    sampler.set_epoch(3)
    loader = DeviceFeeder(make_loader(deferred, 8, sampler, 0, torch.device("cpu")), torch.device("cpu"))
    step = _stepper(deferred, bundle, 16)
    per_sample = Normalize(bundle.mean, bundle.std)
    seen = 0
    for batch in loader:
        images, _, indices = batch
        assert batch.augment is not None and len(batch.augment) == len(indices)
        # the loader's pixels are not augmented yet; the device pass augments and normalizes them
        expected = torch.stack([deferred[(3, int(i))][0] for i in indices])
        assert not torch.equal(images, expected)
        assert torch.equal(step.inputs(images, batch.augment), per_sample(expected))
        seen += len(indices)
    assert seen == len(deferred)


def test_a_deferred_plan_travels_with_its_batch_to_a_worker_and_back(synthetic, make_recipe, tmp_path: Path) -> None:
    _, _, deferred = _train_set(synthetic, make_recipe, tmp_path, defer=True)
    batch = deferred.__getitems__([(1, 4), (1, 9), (2, 4)])
    copy = pickle.loads(pickle.dumps(batch))
    assert isinstance(copy, Batch) and copy.augment.drawn == batch.augment.drawn
    assert all(torch.equal(a, b) for a, b in zip(copy, batch, strict=True))
    applied = deferred.batched.apply(copy[0], copy.augment)
    assert torch.equal(applied, torch.stack([deferred[key][0] for key in [(1, 4), (1, 9), (2, 4)]]))


def test_the_loaders_pin_thread_pins_a_batch_and_keeps_its_plan(synthetic, make_recipe, tmp_path: Path,
                                                                 monkeypatch: pytest.MonkeyPatch) -> None:
    """On CUDA the DataLoader pins deferred batches in its pin thread (torch's `pin_memory` function
    calls `Batch.pin_memory`), not DeviceFeeder on the training thread. Pinning needs CUDA: here
    `Tensor.pin_memory` is a stand-in that marks what it returns."""
    from torch.utils.data._utils.pin_memory import pin_memory

    _, _, deferred = _train_set(synthetic, make_recipe, tmp_path, defer=True)
    loader = make_loader(deferred, 8, EpochSampler(len(deferred), 0, True), 2, torch.device("cuda"))
    assert loader.pin_memory
    pinned: list[torch.Tensor] = []

    def fake_pin(tensor: torch.Tensor, *_, **__) -> torch.Tensor:
        pinned.append(tensor.clone())
        return pinned[-1]

    monkeypatch.setattr(torch.Tensor, "pin_memory", fake_pin)
    batch = deferred.__getitems__([(1, 4), (1, 9), (2, 4)])
    result = pin_memory(batch, "cuda")  # what the pin thread runs on each batch
    assert isinstance(result, Batch) and result.augment is batch.augment
    assert result[0] is pinned[0] and result[1] is pinned[1] and len(pinned) == 2  # images and targets
    assert all(torch.equal(a, b) for a, b in zip(result, batch, strict=True))


def test_pipelines_that_cannot_be_batched_still_augment_in_the_loader(synthetic, make_recipe, tmp_path: Path) -> None:
    _, _, deferred = _train_set(synthetic, make_recipe, tmp_path, defer=True,
                                augment=[{"ColorJitter": {"brightness": 0.3}}])
    assert not deferred.defer_augment
    batch = deferred.__getitems__([(1, 2), (1, 3)])
    assert batch.augment is None
    assert torch.equal(batch[0], torch.stack([deferred[(1, 2)][0], deferred[(1, 3)][0]]))


def test_normalize_resizes_with_antialiased_bilinear_only_when_sizes_differ() -> None:
    images = torch.from_numpy(np.random.default_rng(0).integers(0, 256, (3, 3, 12, 12), np.uint8))
    mean, std = [0.4, 0.5, 0.6], [0.2, 0.25, 0.3]
    plain = Normalize(mean, std)(images)
    assert torch.equal(Normalize(mean, std, 12)(images), plain)
    up = Normalize(mean, std, 20)(images)
    expected = torch.nn.functional.interpolate(images.float(), size=(20, 20), mode="bilinear", align_corners=False,
                                               antialias=True)
    assert up.shape == (3, 3, 20, 20)
    assert torch.equal(up, Normalize(mean, std).standardize(expected))
    assert torch.equal(resize(images.float(), 20), expected)


@pytest.mark.slow  # two exports with their parity checks
def test_decode_size_caches_small_trains_and_exports_with_parity(synthetic, make_recipe, tmp_path: Path) -> None:
    from cvtool.cli.launch import run_recipe
    from cvtool.data.images import decode
    from cvtool.evaluation.evaluate import evaluate_split
    from cvtool.evaluation.tta import tta_outputs
    from cvtool.inference.export import export_onnx
    from cvtool.inference.onnx_runtime import create_session
    from cvtool.runs.model import load_model

    recipe, bundle, _ = _train_set(synthetic, make_recipe, tmp_path, defer=True, image_size=20, decode_size=12)
    assert bundle.splits["train"].images.shape[1:] == (12, 12, 3)  # the cache holds decode_size
    run_recipe(recipe, tmp_path / "run", quiet=True)
    loaded = load_model(tmp_path / "run", device="cpu")
    assert (loaded.meta.image_size, loaded.meta.decode_size) == (20, 12)
    evaluated = evaluate_split(loaded, "val")
    assert evaluated.outputs.shape == (len(evaluated.paths), 4)
    assert tta_outputs(loaded, np.stack([decode(p, 3, 12)[0] for p in evaluated.paths[:5]]), 2).shape == (5, 4)
    for raw in (False, True):
        report = export_onnx(tmp_path / "run", tmp_path / f"raw{raw}.onnx", raw_input=raw)
        assert report.card.input_size == 12 and report.card.image_size == 20
        assert max(check.max_abs_diff for check in report.parity) <= 1e-4
    # the raw graph on images decoded at decode_size is training's device resize + normalization
    uint8 = np.stack([decode(p, 3, 12)[0] for p in evaluated.paths[:6]])
    (onnx_out,) = create_session((tmp_path / "rawTrue.onnx").read_bytes()).run(["logits"], {"images": uint8})
    with torch.no_grad():
        x = Normalize(loaded.meta.mean, loaded.meta.std, 20)(torch.from_numpy(uint8).permute(0, 3, 1, 2))
        torch_out = loaded.model(x).numpy()
    assert np.abs(onnx_out - torch_out).max() <= 1e-4


def test_compile_failure_falls_back_to_eager_with_one_line(synthetic, make_recipe, tmp_path: Path,
                                                          monkeypatch: pytest.MonkeyPatch, capsys) -> None:
    from cvtool.cli.launch import run_recipe
    from cvtool.runs.recipes import load_recipe

    assert not wants_compile(torch.device("cpu"), "auto") and wants_compile(torch.device("cuda"), "auto")

    def broken(*_, **__):
        raise RuntimeError("backend compiler failed\nlong trace")

    monkeypatch.setattr(torch, "compile", lambda model: broken)
    recipe = load_recipe(make_recipe(tmp_path, synthetic("multiclass", n=60, size=16), train={"compile": True}))
    summary = run_recipe(recipe, tmp_path / "run", quiet=True)
    assert summary["epochs_run"] == 1 and np.isfinite(summary["val"]["loss"])  # trained eagerly
    lines = [line for line in capsys.readouterr().err.splitlines() if "torch.compile" in line]
    assert lines == ["cvtool: torch.compile failed (RuntimeError: backend compiler failed); training without it"]


class _BackwardFails(torch.autograd.Function):
    """Stands for a compiled graph whose backward fails to compile (raised on the first backward)."""

    @staticmethod
    def forward(ctx, x):
        return x.clone()

    @staticmethod
    def backward(ctx, grad):
        raise RuntimeError("backward graph failed to compile")


def test_compiling_runs_forward_and_backward_once_and_changes_nothing(monkeypatch: pytest.MonkeyPatch,
                                                                      capsys) -> None:
    model = torch.nn.Sequential(torch.nn.Conv2d(3, 4, 3), torch.nn.BatchNorm2d(4), torch.nn.Dropout(0.5))
    before = {k: v.clone() for k, v in model.state_dict().items()}
    rng = torch.get_rng_state()
    monkeypatch.setattr(torch, "compile", lambda m: lambda x: _BackwardFails.apply(m(x)))
    assert compiled_forward(model, (2, 3, 8, 8), torch.device("cpu"), None, False) is None
    assert "backward graph failed to compile" in capsys.readouterr().err  # caught at build time, not mid-run
    assert all(torch.equal(before[k], v) for k, v in model.state_dict().items())  # BatchNorm statistics kept
    assert torch.equal(torch.get_rng_state(), rng) and all(p.grad is None for p in model.parameters())
    monkeypatch.setattr(torch, "compile", lambda m: m)
    assert compiled_forward(model, (2, 3, 8, 8), torch.device("cpu"), None, False) is model


def test_out_of_memory_while_compiling_is_raised_not_swallowed(monkeypatch: pytest.MonkeyPatch) -> None:
    def out_of_memory(*_):
        raise torch.cuda.OutOfMemoryError("CUDA out of memory")

    monkeypatch.setattr(torch, "compile", lambda m: out_of_memory)
    with pytest.raises(torch.cuda.OutOfMemoryError):
        compiled_forward(torch.nn.Linear(4, 2), (2, 4), torch.device("cpu"), None, False)


def test_a_failure_after_compiling_stops_the_run(synthetic, make_recipe, tmp_path: Path,
                                                 monkeypatch: pytest.MonkeyPatch) -> None:
    """Only the build-time trial may fall back: a later step's error is the run's error."""
    from cvtool.cli.launch import run_recipe
    from cvtool.runs.recipes import load_recipe

    def compile_then_fail(model):
        calls = {"n": 0}

        def forward(x):
            calls["n"] += 1
            if calls["n"] > 2:
                raise RuntimeError("guard failure in step 2")
            return model(x)
        return forward

    monkeypatch.setattr(torch, "compile", compile_then_fail)
    recipe = load_recipe(make_recipe(tmp_path, synthetic("multiclass", n=60, size=16), train={"compile": True}))
    with pytest.raises(RuntimeError, match="guard failure in step 2"):
        run_recipe(recipe, tmp_path / "run", quiet=True)


def test_a_non_finite_loss_found_after_the_epoch_names_its_batch() -> None:
    _check_finite([torch.tensor(1.0), torch.tensor(2.0)], epoch=3)
    with pytest.raises(NonFiniteLoss, match="loss is nan at epoch 3, batch 2"):
        _check_finite([torch.tensor(1.0), torch.tensor(float("nan")), torch.tensor(float("inf"))], epoch=3)


def test_a_compiled_model_trains(synthetic, make_recipe, tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    """torch.compile's real wrapper (dynamo's eager backend: no C++ build on a test machine). Its
    truth value asks the wrapped model's len(), which models do not have: caught on an H200."""
    import functools

    from cvtool.cli.launch import run_recipe
    from cvtool.runs.recipes import load_recipe
    from cvtool.runs.step import build_session, build_step

    monkeypatch.setattr(torch, "compile", functools.partial(torch.compile, backend="eager"))
    recipe = load_recipe(make_recipe(tmp_path, synthetic("multiclass", n=60, size=16), train={"compile": True}))
    step = build_step(build_session(recipe, quiet=True), steps=4, batch=8)
    assert isinstance(step.forward, torch._dynamo.eval_frame.OptimizedModule) and step.forward is not step.model
    summary = run_recipe(recipe, tmp_path / "run", quiet=True)
    assert summary["epochs_run"] == 1 and np.isfinite(summary["val"]["loss"])


@pytest.mark.parametrize("name", ["bilinear", "NEAREST"])
def test_interpolation_names_become_torchvisions_enum(name: str) -> None:
    """torchvision up to 0.26 keeps a string as given and its affine kernel refuses it."""
    from torchvision.transforms import InterpolationMode

    from cvtool.data.transforms import build_transform

    built = build_transform({"RandomAffine": {"degrees": 10, "interpolation": name}}, "augment[0]")
    assert built.interpolation == InterpolationMode(name.lower())


def test_an_unknown_interpolation_is_one_line() -> None:
    from cvtool.data.transforms import build_transform
    from cvtool.errors import CvtoolError

    with pytest.raises(CvtoolError, match=r"augment\[0\]\.RandomAffine\.interpolation: expected one of .*bilinear"):
        build_transform({"RandomAffine": {"degrees": 10, "interpolation": "bilnear"}}, "augment[0]")
