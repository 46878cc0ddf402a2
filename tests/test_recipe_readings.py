"""Readings of the seed reports that a recipe key now makes choosable: frozen BatchNorm in train or
eval mode (`model.freeze.batchnorm`, seed 004), seed 001's head without added dropout, seed 003's
final schedule on both architectures it names, seed 004's CLAHE run."""

from __future__ import annotations

from pathlib import Path
from typing import Any

import pytest
import torch
from conftest import write_recipe
from torch import nn
from typer.testing import CliRunner

from cvtool.cli.main import app
from cvtool.models import build_model
from cvtool.runs.model import load_model
from cvtool.runs.recipes import load_recipe

RECIPES = Path(__file__).resolve().parent.parent / "recipes"


@pytest.mark.parametrize("batchnorm", ["eval", "train"])
def test_freeze_batchnorm_decides_whether_frozen_statistics_move(batchnorm: str, synthetic: Any,
                                                                   tmp_path: Path) -> None:
    recipe = write_recipe(tmp_path, synthetic("multiclass", n=24, size=32), name=f"bn-{batchnorm}",
                          data={"image_size": 32, "batch_size": 8},
                          model={"arch": "resnet18", "freeze": {"backbone": True, "batchnorm": batchnorm}},
                          train={"epochs": 1})
    result = CliRunner().invoke(app, ["train", str(recipe), "--out", str(tmp_path / "run"), "--quiet"])
    assert result.exit_code == 0, result.output
    model = load_model(tmp_path / "run", "last").model
    frozen = model.layer2[0].bn1  # a frozen backbone BatchNorm: torch initializes mean 0, var 1
    moved = not torch.equal(frozen.running_mean, torch.zeros_like(frozen.running_mean))
    assert moved == (batchnorm == "train")
    assert (int(frozen.num_batches_tracked) > 0) == (batchnorm == "train")


def _dropouts(recipe: str, arch: str | None = None) -> list[float]:
    cfg = load_recipe(RECIPES / recipe).model.model_copy(update={"pretrained": None})
    if arch:
        cfg = cfg.model_copy(update={"arch": arch})
    with torch.device("meta"):
        model = build_model(cfg, 200, 3, 64)
    return [module.p for module in model.modules() if isinstance(module, nn.Dropout)]


def test_seed001_head_adds_no_dropout() -> None:
    """"Fully connected layers and activations": EfficientNet keeps torchvision's own classifier
    dropout (B5 0.4), the ResNets get none."""
    assert _dropouts("001_tinyimagenet/efficientnet_b5.yaml") == [0.4]
    assert _dropouts("001_tinyimagenet/resnet152.yaml") == []
    assert _dropouts("001_tinyimagenet/wide_resnet101.yaml") == []
    head = load_recipe(RECIPES / "001_tinyimagenet/efficientnet_b5.yaml").model.head
    assert head == [1024]


def test_seed001_no_augment_differs_only_in_augmentation() -> None:
    with_augment = load_recipe(RECIPES / "001_tinyimagenet/efficientnet_b5.yaml")
    without = load_recipe(RECIPES / "001_tinyimagenet/efficientnet_b5_no_augment.yaml")
    assert with_augment.augment and not without.augment
    assert without.model_copy(update={"augment": with_augment.augment, "name": with_augment.name,
                                      "description": with_augment.description}) == with_augment


def test_seed003_final_schedule_on_both_architectures() -> None:
    resnext = load_recipe(RECIPES / "003_keypoints/resnext50_final.yaml")
    resnet = load_recipe(RECIPES / "003_keypoints/resnet101_final.yaml")
    assert (resnext.model.arch, resnet.model.arch) == ("resnext50_32x4d", "resnet101")
    same = resnet.model_copy(update={"model": resnext.model, "name": resnext.name, "description": resnext.description})
    assert same == resnext
    assert resnet.train.epochs == 12 and resnet.phases[0].epoch == 9 and resnet.loss.name == "smooth_l1"


def test_seed004_frozen_runs_train_their_batchnorm_and_clahe_has_its_run() -> None:
    frozen = load_recipe(RECIPES / "004_multilabel/frozen_backbone.yaml")
    assert frozen.model.freeze is not None and frozen.model.freeze.batchnorm == "train"
    clahe = load_recipe(RECIPES / "004_multilabel/clahe.yaml")
    base = load_recipe(RECIPES / "004_multilabel/efficientnet_b0.yaml")
    assert clahe.augment[:-1] == base.augment
    assert clahe.augment[-1] == {"CLAHE": {"clip_limit": 4.0, "tile_grid_size": [8, 8], "p": 0.5}}
