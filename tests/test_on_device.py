"""`data.on_device`: the training split kept on the device, batches gathered there by the same
sampler's indices with the same drawn plans. On the CPU (`true`) it must train exactly like the
loader path; `auto` keeps it for CUDA when the split fits in a quarter of the free memory."""

from __future__ import annotations

import csv
from pathlib import Path

import pytest
import torch
from conftest import interrupt_and_resume
from typer.testing import CliRunner

from cvtool.cli.launch import run_recipe
from cvtool.cli.main import app
from cvtool.data.device import DeviceFeeder
from cvtool.data.resident import RESIDENT_SHARE, is_resident, keep_on_device, resident_bytes, training_loader
from cvtool.engine.loop import batch_sizes
from cvtool.errors import CvtoolError
from cvtool.runs.recipes import load_recipe

runner = CliRunner()
FLIP_AFFINE = [{"RandomHorizontalFlip": {"p": 0.5}},
               {"RandomAffine": {"degrees": 10, "translate": [0.1, 0.1], "scale": [0.9, 1.1]}}]
MIXUP = [{"MixUp": {"alpha": 0.4, "p": 0.7}}]
CPU = torch.device("cpu")


def history(run: Path) -> list[dict[str, str]]:
    with (run / "metrics.csv").open() as handle:
        return [{k: v for k, v in row.items() if k != "seconds"} for row in csv.DictReader(handle)]


def _train_set(synthetic, make_recipe, tmp_path: Path, augment=FLIP_AFFINE, task: str = "multiclass"):
    from cvtool.data.pipeline import prepare_data, train_dataset
    from cvtool.tasks import get_task

    recipe = load_recipe(make_recipe(tmp_path, synthetic(task, n=60, size=16), augment=augment))
    bundle = prepare_data(recipe.data, get_task(task), recipe.seed, ("train",), progress=False)
    return train_dataset(bundle, get_task(task), recipe.augment, recipe.seed, defer_augment=True)


@pytest.mark.parametrize("sampler, workers", [("uniform", 0), ("balanced", 0), ("shard", 0), ("uniform", 2),
                                             ("balanced", 2)])
def test_resident_batches_equal_the_loaders(sampler: str, workers: int, synthetic, make_recipe, tmp_path: Path) -> None:
    from cvtool.data.loaders import EpochSampler
    from cvtool.data.sampling import BalancedSampler

    dataset = _train_set(synthetic, make_recipe, tmp_path)
    if sampler == "balanced":
        order = BalancedSampler(dataset.targets.astype(int) % 3, "balanced", 5)
    else:
        order = EpochSampler(len(dataset), 5, True, *((1, 2) if sampler == "shard" else (0, 1)))
    order.set_epoch(3)
    loader = training_loader(dataset, 8, order, 0, CPU, False)
    resident = training_loader(dataset, 8, order, workers, CPU, True)  # workers draw the plans, no pixels
    assert isinstance(loader, DeviceFeeder) and not is_resident(loader) and is_resident(resident)
    # the plans come from `workers` processes, which get the sampler's indices and seeds, never the pixels
    assert resident.loader.num_workers == workers and "split" not in vars(resident.loader.dataset)
    assert batch_sizes(resident) == batch_sizes(loader)
    pairs = list(zip(loader, resident, strict=True))
    assert len(pairs) == len(batch_sizes(loader)) > 1
    for want, got in pairs:
        assert all(torch.equal(a, b) and a.dtype == b.dtype for a, b in zip(want, got, strict=True))
        assert got[0].is_contiguous() and got.augment.drawn == want.augment.drawn


def test_on_device_true_on_the_cpu_trains_exactly_like_the_loader(synthetic, make_recipe, tmp_path: Path) -> None:
    data = synthetic("multiclass", n=80, size=16)
    runs = {}
    for on_device in (False, True):
        recipe = make_recipe(tmp_path, data, name=f"on{on_device}", augment=FLIP_AFFINE, augment_batch=MIXUP,
                             data={"on_device": on_device}, model={"dropout": 0.2, "blocks": [8, 16]},
                             optim={"name": "adam", "lr": 0.01}, train={"epochs": 3})
        run_recipe(load_recipe(recipe), tmp_path / f"run{on_device}", quiet=True)
        runs[on_device] = history(tmp_path / f"run{on_device}")
    assert len(runs[True]) == 3 and runs[True] == runs[False]


def test_a_resumed_on_device_run_equals_an_uninterrupted_one(synthetic, make_recipe, tmp_path: Path) -> None:
    path = make_recipe(tmp_path, synthetic("multiclass", n=80, size=16), augment=FLIP_AFFINE, augment_batch=MIXUP,
                       data={"on_device": True}, model={"dropout": 0.2, "blocks": [8, 16]},
                       optim={"name": "adam", "lr": 0.01}, train={"epochs": 3})
    recipe = load_recipe(path)
    run_recipe(recipe, tmp_path / "a", quiet=True)
    interrupt_and_resume(recipe, tmp_path / "b", batches=4 + 2)  # 4 batches an epoch: stopped in epoch 2
    assert history(tmp_path / "a") == history(tmp_path / "b")


@pytest.mark.parametrize("task, augment", [("multiclass", [{"ColorJitter": {"brightness": 0.3}}]),
                                           ("keypoints", FLIP_AFFINE)])
def test_per_sample_pipelines_refuse_true_and_fall_back_under_auto(task: str, augment, synthetic, make_recipe,
                                                                   tmp_path: Path) -> None:
    dataset = _train_set(synthetic, make_recipe, tmp_path, augment, task)
    with pytest.raises(CvtoolError, match=r"^data.on_device: true, but the augment pipeline augments each image"):
        keep_on_device(True, dataset, CPU)
    assert not keep_on_device("auto", dataset, torch.device("cuda"))  # silently the loader, memory not asked
    recipe = make_recipe(tmp_path, synthetic(task, n=60, size=16), augment=augment, data={"on_device": True})
    result = runner.invoke(app, ["train", str(recipe), "--out", str(tmp_path / "run"), "--quiet"])
    assert result.exit_code == 2 and len(result.output.strip().splitlines()) == 1
    assert "data.on_device: true" in result.output


def test_auto_keeps_the_split_on_cuda_when_it_fits_a_quarter_of_the_free_memory(
        synthetic, make_recipe, tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    dataset = _train_set(synthetic, make_recipe, tmp_path)
    needed = resident_bytes(dataset)
    assert needed == dataset.split.images.nbytes + dataset.targets.nbytes
    free = {"bytes": int(needed / RESIDENT_SHARE)}
    monkeypatch.setattr(torch.cuda, "mem_get_info", lambda device=None: (free["bytes"], 2 * free["bytes"]))
    cuda = torch.device("cuda")
    assert keep_on_device("auto", dataset, cuda)
    free["bytes"] -= 8
    assert not keep_on_device("auto", dataset, cuda) and not keep_on_device(False, dataset, cuda)
    assert keep_on_device(True, dataset, cuda)  # asked for: it fits in the free memory
    free["bytes"] = needed - 1
    with pytest.raises(CvtoolError, match="does not fit in the device's free memory"):
        keep_on_device(True, dataset, cuda)
    for device in ("cpu", "mps"):  # auto: CUDA only
        assert not keep_on_device("auto", dataset, torch.device(device))
