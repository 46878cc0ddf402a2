"""EMA weights, MixUp/CutMix, policy augmentations, gradient accumulation, class-balanced
sampling and the lr range test: each trains end to end and does what it claims."""

from __future__ import annotations

import csv
import math
import re
from pathlib import Path

import numpy as np
import pytest
import torch
from PIL import Image
from typer.testing import CliRunner

from cvtool.cli.launch import run_recipe
from cvtool.cli.main import app
from cvtool.data.batch_mix import BatchMixer
from cvtool.data.sampling import BalancedSampler
from cvtool.engine.checkpoint import load_checkpoint
from cvtool.engine.loop import StopRequested
from cvtool.recipe.schema import MixArgs
from cvtool.runs.model import load_model
from cvtool.runs.recipes import load_recipe
from cvtool.tasks import get_task

runner = CliRunner()
SMALL = {"image_size": 8, "batch_size": 8}
MIX = [{"MixUp": {"alpha": 0.4}}, {"CutMix": {"alpha": 1.0}}]


def history(run: Path) -> list[dict[str, str]]:
    with (run / "metrics.csv").open() as handle:
        return [{k: v for k, v in row.items() if k != "seconds"} for row in csv.DictReader(handle)]


def invoke(*args: str) -> str:
    result = runner.invoke(app, [*args])
    assert result.exit_code == 0, result.output
    return result.output


def imbalanced_binary(root: Path, major: int = 90, minor: int = 10) -> Path:
    """A folder dataset with a 90/10 training split (and a small val split)."""
    rng = np.random.default_rng(0)
    for split, counts in (("train", (major, minor)), ("val", (6, 6))):
        for name, count, level in (("common", counts[0], 60), ("rare", counts[1], 190)):
            folder = root / split / name
            folder.mkdir(parents=True)
            for i in range(count):
                pixels = np.clip(rng.normal(level, 20, (8, 8, 3)), 0, 255).astype(np.uint8)
                Image.fromarray(pixels).save(folder / f"{i}.png")
    return root


def imbalanced_multilabel(root: Path, n: int = 60) -> dict:
    """A Planet-style CSV set where one tag is on about one image in ten."""
    rng = np.random.default_rng(1)
    (root / "images").mkdir(parents=True)
    rows = {"train": [], "val": []}
    for i in range(n):
        tags = ["common"] + (["rare"] if i % 10 == 0 else []) + (["mid"] if i % 3 == 0 else [])
        pixels = rng.integers(0, 255, (8, 8, 3), np.uint8)
        pixels[:, :, 0] = 250 if "rare" in tags else 10
        Image.fromarray(pixels).save(root / "images" / f"im{i}.png")
        rows["val" if i % 5 == 4 else "train"].append((f"im{i}.png", " ".join(tags)))
    for split, items in rows.items():
        with (root / f"{split}.csv").open("w", newline="") as handle:
            csv.writer(handle).writerows([("image", "tags"), *items])
    return {"task": "multilabel", "data": {"format": "csv", "root": str(root), "train": "train", "val": "val",
                                           "test": None, "image_size": 8}}


# ---- EMA ---------------------------------------------------------------------------------------

def test_ema_weights_are_checkpointed_validated_and_exported(digits_dir, make_recipe, tmp_path: Path) -> None:
    recipe = make_recipe(tmp_path, digits_dir, data={"image_size": 8, "batch_size": 32, "channels": 1},
                         model={"blocks": [8, 16], "batch_norm": True}, optim={"lr": 0.05},
                         train={"epochs": 2, "max_batches": 6, "ema": {"decay": 0.9}})
    run = tmp_path / "ema"
    invoke("train", str(recipe), "--out", str(run), "--quiet")
    best = load_checkpoint(run / "checkpoints" / "best.pt")
    assert best["weights"] in ("ema", "raw")  # the better on validation (tests/test_ema.py)
    differs = [k for k in best["ema_model"] if not torch.equal(best["ema_model"][k], best["raw_model"][k])]
    assert differs and any("running_mean" in k for k in differs)  # BatchNorm buffers are averaged too
    loaded = load_model(run)
    assert all(torch.equal(v, best["model"][k]) for k, v in loaded.model.state_dict().items())
    rows = history(run)
    assert {"val/accuracy", "val_ema/accuracy", "val_raw/accuracy", "val_raw/loss"} <= set(rows[0])
    assert rows[-1]["val_ema/loss"] != rows[-1]["val_raw/loss"]
    out = invoke("export", str(run), "--onnx", str(tmp_path / "ema.onnx"))
    assert "parity" in out.lower() and (tmp_path / "ema.onnx").is_file()


# ---- MixUp / CutMix ------------------------------------------------------------------------------

def test_mixed_multiclass_targets_sum_to_one_and_match_torchvision() -> None:
    from torchvision.transforms import v2

    task = get_task("multiclass")
    mixer = BatchMixer([{"MixUp": MixArgs(alpha=0.4)}, {"CutMix": MixArgs(alpha=1.0)}], 3, task.dense_targets, 5)
    images, labels = torch.randn(12, 3, 8, 8), torch.randint(0, 5, (12,))
    names = set()
    for batch in range(8):
        state = torch.get_rng_state()
        mixed, targets, name = mixer(images, labels, epoch=2, batch=batch)
        assert torch.equal(torch.get_rng_state(), state)  # the global generator is left alone
        assert torch.allclose(targets.sum(dim=1), torch.ones(12))
        names.add(name)
        torch.manual_seed(mixer.batch_seed(2, batch))
        expected_images, expected = getattr(v2, name)(alpha=mixer.alphas[mixer.names.index(name)],
                                                      num_classes=5)(images, labels)
        assert torch.equal(mixed, expected_images) and torch.allclose(targets, expected)
    assert names == {"MixUp", "CutMix"}


def test_mixing_seeds_the_cpu_generator_alone_and_mixes_as_before(monkeypatch: pytest.MonkeyPatch) -> None:
    """torch.manual_seed would also reseed every CUDA (and MPS, XPU) generator once per batch, which
    fork_rng(devices=[]) does not restore; v2's MixUp/CutMix draw from the CPU generator only."""
    seeded = []
    for module, name in ((torch.cuda, "manual_seed_all"), (torch.mps, "manual_seed"), (torch.xpu, "manual_seed_all")):
        monkeypatch.setattr(module, name, lambda seed, name=name: seeded.append(name))
    task = get_task("multiclass")
    mixer = BatchMixer([{"MixUp": MixArgs(alpha=0.4)}, {"CutMix": MixArgs(alpha=1.0)}], 3, task.dense_targets, 3)
    images = torch.arange(4 * 1 * 4 * 4, dtype=torch.float32).view(4, 1, 4, 4) / 10
    labels = torch.tensor([0, 1, 2, 1])
    # computed with the implementation that seeded through torch.manual_seed: the same draws
    expected = {0: ("MixUp", [86.77892, 12.67369, 38.27369, 63.87369], [0.02632, 0.97368, 0.0, 0.0]),
                1: ("CutMix", [16.8, 36.0, 61.6, 87.2], [0.9375, 0.0625, 0.0, 0.0]),
                2: ("MixUp", [63.75422, 20.34859, 45.94859, 71.5486], [0.32612, 0.67388, 0.0, 0.0]),
                3: ("CutMix", [31.2, 31.2, 56.8, 82.4], [0.75, 0.25, 0.0, 0.0])}
    for batch, (name, sums, first_class) in expected.items():
        mixed, targets, used = mixer(images, labels, epoch=2, batch=batch)
        assert used == name
        np.testing.assert_allclose(mixed.sum(dim=(1, 2, 3)).numpy(), sums, rtol=1e-5)
        np.testing.assert_allclose(targets[:, 0].numpy(), first_class, atol=1e-5)
    assert seeded == []


def test_mixed_multilabel_targets_are_convex_combinations_of_the_pair() -> None:
    task = get_task("multilabel")
    mixer = BatchMixer([{"MixUp": MixArgs(alpha=1.0, p=1.0)}], 0, task.dense_targets, 3)
    tags = torch.tensor([[1, 0, 0], [0, 1, 1], [1, 1, 0], [0, 0, 1]]).float()
    images = torch.stack([torch.full((1, 2, 2), float(i)) for i in range(4)])
    mixed, targets, _ = mixer(images, tags, 1, 0)
    lam = float(mixed[0, 0, 0, 0] - 3) / (0 - 3)  # image 0 mixed with its rolled partner, image 3
    assert torch.allclose(targets, lam * tags + (1 - lam) * tags.roll(1, 0), atol=1e-6)


def test_p_zero_never_mixes_and_keypoints_are_refused(synthetic, make_recipe, tmp_path: Path) -> None:
    mixer = BatchMixer([{"CutMix": MixArgs(alpha=1.0, p=0.0)}], 0, get_task("binary").dense_targets, 1)
    assert all(mixer.choose(1, b) is None for b in range(50))
    recipe = make_recipe(tmp_path, synthetic("keypoints", n=40, size=16), augment_batch=[{"MixUp": {"alpha": 0.2}}])
    result = runner.invoke(app, ["recipe", "show", str(recipe)])
    assert result.exit_code == 2 and "augment_batch" in result.output and "keypoints" in result.output
    assert len(result.output.strip().splitlines()) == 1


def test_mixup_cutmix_train_multilabel_end_to_end(make_recipe, tmp_path: Path) -> None:
    data = imbalanced_multilabel(tmp_path / "planet")
    recipe = make_recipe(tmp_path, data, data={"batch_size": 8}, augment_batch=MIX, train={"epochs": 2})
    run = tmp_path / "run"
    invoke("train", str(recipe), "--out", str(run), "--quiet")
    assert [int(r["epoch"]) for r in history(run)] == [1, 2]
    assert all(math.isfinite(float(r["train/loss"])) for r in history(run))


# ---- policy augmentations ------------------------------------------------------------------------

POLICIES = [{"RandAugment": {}}, {"TrivialAugmentWide": {}}, {"AutoAugment": {}}, {"AugMix": {}},
            {"RandomErasing": {"p": 1.0}}, {"ColorJitter": {"brightness": 0.4, "hue": 0.1}},
            {"RandomResizedCrop": {"size": 16, "scale": [0.5, 1.0]}}]


@pytest.mark.parametrize("spec", POLICIES, ids=lambda s: next(iter(s)))
def test_policy_augmentations_keep_uint8_and_their_seed(spec, synthetic, make_recipe, tmp_path: Path) -> None:
    from cvtool.data.pipeline import prepare_data, train_dataset

    recipe = load_recipe(make_recipe(tmp_path, synthetic("multiclass", n=40, size=16), augment=[spec]))
    dataset = train_dataset(prepare_data(recipe.data, get_task("multiclass"), recipe.seed, ("train",), progress=False),
                            get_task("multiclass"), recipe.augment, recipe.seed)
    first, again, other = dataset[(3, 5)][0], dataset[(3, 5)][0], dataset[(4, 5)][0]
    assert first.dtype == torch.uint8 and first.shape == (3, 16, 16)
    assert torch.equal(first, again)
    batch = dataset.__getitems__([(3, 5), (4, 5)])[0]
    assert torch.equal(batch[0], first) and torch.equal(batch[1], other)


@pytest.mark.parametrize("name", ["RandAugment", "TrivialAugmentWide", "AutoAugment", "AugMix"])
def test_keypoints_refuse_policies_that_would_not_move_the_points(name, synthetic, make_recipe,
                                                                  tmp_path: Path) -> None:
    recipe = make_recipe(tmp_path, synthetic("keypoints", n=40, size=16),
                         augment=[{"RandomApply": {"p": 0.5, "transforms": [{name: {}}]}}])
    result = runner.invoke(app, ["recipe", "show", str(recipe)])
    assert result.exit_code == 2 and name in result.output and "keypoints" in result.output


# ---- gradient accumulation -----------------------------------------------------------------------

def test_accumulating_three_batches_equals_one_three_times_larger(synthetic, make_recipe, tmp_path: Path) -> None:
    data = synthetic("multiclass", n=80, size=8)  # 56 training images: groups of 24, 24 and 8 either way
    common = {"model": {"blocks": [8], "batch_norm": False, "dropout": None},
              "optim": {"name": "sgd", "lr": 0.2, "momentum": 0.9}}
    small = make_recipe(tmp_path, data, name="small", data={"image_size": 8, "batch_size": 8},
                        **common, train={"epochs": 2, "accumulate": 3})
    large = make_recipe(tmp_path, data, name="large", data={"image_size": 8, "batch_size": 24}, **common,
                        train={"epochs": 2})
    run_recipe(load_recipe(small), tmp_path / "a", quiet=True)
    run_recipe(load_recipe(large), tmp_path / "b", quiet=True)
    a = load_checkpoint(tmp_path / "a" / "checkpoints" / "last.pt")["model"]
    b = load_checkpoint(tmp_path / "b" / "checkpoints" / "last.pt")["model"]
    for key in a:
        assert torch.allclose(a[key], b[key], atol=1e-5, rtol=0), key
    assert history(tmp_path / "a")[-1]["lr"] == history(tmp_path / "b")[-1]["lr"]


# ---- class-balanced sampling ---------------------------------------------------------------------

def test_balanced_sampler_evens_a_90_10_split_and_shards_it() -> None:
    groups = np.asarray([0] * 90 + [1] * 10)
    whole = BalancedSampler(groups, "balanced", seed=3)
    whole.set_epoch(2)
    share = np.mean(groups[whole.indices()] == 1)
    assert 0.4 <= share <= 0.6
    shards = [BalancedSampler(groups, "balanced", 3, rank, 2) for rank in range(2)]
    for shard in shards:
        shard.set_epoch(2)
    assert sorted(shards[0].indices() + shards[1].indices()) == sorted(whole.indices())
    sqrt = BalancedSampler(groups, "sqrt_balanced", 3)
    sqrt.set_epoch(2)
    assert 0.1 < np.mean(groups[sqrt.indices()] == 1) < share  # milder than full balancing
    again = BalancedSampler(groups, "balanced", 3)
    again.set_epoch(2)
    assert again.indices() == whole.indices()


def test_balanced_training_writes_the_class_frequencies(make_recipe, tmp_path: Path) -> None:
    root = imbalanced_binary(tmp_path / "data")
    recipe = make_recipe(tmp_path, root, task="binary", data={"image_size": 8, "batch_size": 10,
                                                              "sampler": "balanced"}, train={"epochs": 2})
    run = tmp_path / "run"
    invoke("train", str(recipe), "--out", str(run), "--quiet")
    with (run / "sampling.csv").open() as handle:
        rows = list(csv.DictReader(handle))
    assert [r["epoch"] for r in rows] == ["1", "2"]
    for row in rows:
        total = int(row["common"]) + int(row["rare"])
        assert total == 100 and 0.4 <= int(row["rare"]) / total <= 0.6


def test_multilabel_balances_by_the_rarest_tag() -> None:
    tags = np.asarray([[1, 0, 0], [1, 1, 0], [1, 0, 1], [0, 0, 0]])
    assert get_task("multilabel").sampling_groups(tags, 3).tolist() == [0, 1, 2, 3]


def test_balanced_sampling_needs_classes(synthetic, make_recipe, tmp_path: Path) -> None:
    recipe = make_recipe(tmp_path, synthetic("keypoints", n=40, size=16), data={"sampler": "balanced"})
    result = runner.invoke(app, ["recipe", "show", str(recipe)])
    assert result.exit_code == 2 and "data.sampler" in result.output


# ---- lr range test -------------------------------------------------------------------------------

def test_lr_find_writes_its_plot_and_a_finite_suggestion(synthetic, make_recipe, tmp_path: Path) -> None:
    recipe = make_recipe(tmp_path, synthetic("multiclass", n=80, size=8), data=SMALL)
    before = recipe.read_bytes()
    out = invoke("lr-find", str(recipe), "--start", "1e-5", "--end", "10", "--steps", "40",
                 "--out", str(tmp_path / "lr"))
    suggested = float(re.search(r"--set optim\.lr=(\S+)", out).group(1))
    assert 1e-5 <= suggested <= 10 and math.isfinite(suggested)
    assert (tmp_path / "lr" / "lr_find.png").stat().st_size > 1000
    assert recipe.read_bytes() == before


# ---- all together: resume is exact ----------------------------------------------------------------

def test_resume_with_ema_mixup_and_accumulation_equals_an_uninterrupted_run(synthetic, make_recipe,
                                                                           tmp_path: Path) -> None:
    data = synthetic("multiclass", n=80, size=8)
    recipe = load_recipe(make_recipe(
        tmp_path, data, data=SMALL, augment_batch=MIX, model={"blocks": [8], "batch_norm": True},
        optim={"name": "adam", "lr": 0.01}, schedule={"name": "onecycle"},
        train={"epochs": 3, "accumulate": 2, "ema": {"decay": 0.8, "warmup_epochs": 1}}))
    run_recipe(recipe, tmp_path / "a", quiet=True)
    calls = {"n": 0}

    def stop_in_epoch_2() -> bool:
        calls["n"] += 1
        return calls["n"] > 7 + 3  # 7 batches an epoch: stop inside epoch 2

    with pytest.raises(StopRequested):
        run_recipe(recipe, tmp_path / "c", quiet=True, stop=stop_in_epoch_2)
    assert len(history(tmp_path / "c")) == 1
    invoke("train", "--resume", str(tmp_path / "c"), "--quiet")
    assert history(tmp_path / "a") == history(tmp_path / "c")
    a = load_checkpoint(tmp_path / "a" / "checkpoints" / "last.pt")
    c = load_checkpoint(tmp_path / "c" / "checkpoints" / "last.pt")
    assert all(torch.equal(a["model"][k], c["model"][k]) for k in a["model"])


def test_recipe_keys_are_validated(synthetic, make_recipe, tmp_path: Path) -> None:
    data = synthetic("multiclass", n=40, size=16)
    cases = {"train.ema.decay": {"train": {"ema": {"decay": 1.5}}},
             "train.accumulate": {"train": {"accumulate": 0}},
             "augment_batch": {"augment_batch": [{"MixUp": {"p": 0.7}}, {"CutMix": {"p": 0.6}}]},
             "augment_batch.0.Mixup": {"augment_batch": [{"Mixup": {}}]}}
    for key, sections in cases.items():
        path = make_recipe(tmp_path, data, **sections)
        result = runner.invoke(app, ["recipe", "show", str(path)])
        assert result.exit_code == 2, (key, result.output)
        assert key.split(".")[0] in result.output and len(result.output.strip().splitlines()) == 1, result.output
