"""cvtool.engine.optim: unset weight_decay is the optimizer's own default (phases too), amsgrad."""

from __future__ import annotations

from pathlib import Path

import pytest
import torch
from typer.testing import CliRunner

from cvtool.cli.main import app
from cvtool.engine.optim import build_optimizer, optim_for_epoch
from cvtool.recipe.schema import OptimConfig, Phase
from cvtool.recipe.training_config import OPTIM_VARIANTS, AdamConfig, SgdConfig
from cvtool.runs.recipes import expand_sweep, load_recipe

RECIPES = Path(__file__).resolve().parent.parent / "recipes"


def trained_weights(cfg: OptimConfig, steps: int = 5) -> torch.Tensor:
    torch.manual_seed(0)
    layer = torch.nn.Linear(4, 2)
    inputs, targets = torch.randn(16, 4), torch.randn(16, 2)
    optimizer = build_optimizer(layer.parameters(), cfg)
    for _ in range(steps):
        optimizer.zero_grad()
        torch.nn.functional.mse_loss(layer(inputs), targets).backward()
        optimizer.step()
    return torch.cat([p.detach().flatten() for p in layer.parameters()])


def test_adam_and_adamw_of_the_seed_recipe_train_differently() -> None:
    path = RECIPES / "003_keypoints" / "adam_vs_adamw.yaml"
    points = dict(expand_sweep(load_recipe(path), str(path)))
    adam, adamw = points["name=adam"].optim, points["name=adamw"].optim
    assert (adam.name, adamw.name) == ("adam", "adamw")
    assert build_optimizer([torch.nn.Parameter(torch.zeros(1))], adamw).param_groups[0]["weight_decay"] == 0.01
    difference = float((trained_weights(adam) - trained_weights(adamw)).abs().max())
    assert difference > 1e-5  # lr 1e-3 x decay 0.01 x 5 steps on weights of ~0.5 (old code: 0.0)


@pytest.mark.parametrize(("name", "decay"), [("sgd", 0.0), ("adam", 0.0), ("adamw", 0.01)])
def test_unset_weight_decay_is_the_optimizers_default(name: str, decay: float) -> None:
    optimizer = build_optimizer([torch.nn.Parameter(torch.zeros(1))], OPTIM_VARIANTS[name]())
    assert optimizer.param_groups[0]["weight_decay"] == decay


def test_a_phase_switching_to_adamw_gets_adamws_default() -> None:
    base = AdamConfig(lr=1e-3, amsgrad=True)
    phases = [Phase(epoch=3, optim={"name": "adamw"}), Phase(epoch=5, optim={"name": "sgd"})]
    later = optim_for_epoch(base, phases, 3)
    assert (later.name, later.weight_decay, later.amsgrad) == ("adamw", None, True)
    group = build_optimizer([torch.nn.Parameter(torch.zeros(1))], later).param_groups[0]
    assert (group["weight_decay"], group["amsgrad"]) == (0.01, True)
    assert not hasattr(optim_for_epoch(base, phases, 5), "amsgrad")  # SGD has none
    explicit = optim_for_epoch(base.model_copy(update={"weight_decay": 1e-4}), phases, 3)
    assert explicit.weight_decay == 1e-4  # a set value is kept across the switch


def test_amsgrad_reaches_the_optimizer_and_changes_training() -> None:
    for name in ("adam", "adamw"):
        group = build_optimizer([torch.nn.Parameter(torch.zeros(1))], OPTIM_VARIANTS[name](amsgrad=True)).param_groups[0]
        assert group["amsgrad"] is True
    plain, ams = AdamConfig(lr=0.1), AdamConfig(lr=0.1, amsgrad=True)
    assert float((trained_weights(plain, 20) - trained_weights(ams, 20)).abs().max()) > 1e-6
    with pytest.raises(ValueError, match="amsgrad"):
        SgdConfig(amsgrad=True)  # not a setting of SGD


def test_recipe_show_prints_the_weight_decay_in_force(tmp_path: Path) -> None:
    result = CliRunner().invoke(app, ["recipe", "show", str(RECIPES / "003_keypoints" / "adam_then_adamw.yaml")])
    assert result.exit_code == 0, result.output
    lines = [line for line in result.output.splitlines() if line.startswith("optimizer")]
    assert lines[0].startswith("optimizer epoch 1: adam ") and "weight_decay=0 " in lines[0]
    assert lines[1].startswith("optimizer epoch 7: adamw ") and "weight_decay=0.01 " in lines[1]


def test_recipe_show_model_lists_the_small_input_changes() -> None:
    path = RECIPES / "002_small_images" / "03_resnet18_small_input.yaml"
    result = CliRunner().invoke(app, ["recipe", "show", str(path), "--model"])
    assert result.exit_code == 0, result.output
    assert ("model.small_input changes 6 modules of resnet18: maxpool, conv1, layer2.0.conv1, "
            "layer2.0.downsample.0, layer3.0.conv1, layer3.0.downsample.0") in result.output
