"""Valid recipes: `base:` merging, `--set` overrides, freezing, sweeps, YAML round trips, `recipe show`."""

from __future__ import annotations

import re
from pathlib import Path

import pytest
import yaml
from pydantic import ValidationError
from typer.testing import CliRunner

from cvtool.cli.main import app
from cvtool.errors import CvtoolError
from cvtool.recipe.load import (
    deep_merge,
    load_raw,
    parse_override,
    recipe_from_dict,
    recipe_to_yaml,
    validate,
)
from cvtool.recipe.schema import NormStats, Recipe
from cvtool.recipe.sweep import sweep_point_name
from cvtool.runs.recipes import expand_sweep, load_recipe

ANSI = re.compile(r"\x1b\[[0-9;]*m")


def write(path: Path, text: str) -> Path:
    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_text(text, encoding="utf-8")
    return path


@pytest.fixture
def layered(tmp_path: Path) -> Path:
    """exp/run.yaml -> ../base/mid.yaml -> core/root.yaml (each path relative to its own file)."""
    write(tmp_path / "recipes/base/core/root.yaml", """
name: root
task: multiclass
data: {root: data/digits, image_size: 32, batch_size: 16, normalize: imagenet}
augment:
  - RandomHorizontalFlip: {p: 0.5}
model: {arch: simplenet, blocks: [8, 16], dropout: 0.1}
optim: {name: sgd, lr: 0.1, momentum: 0.9, weight_decay: 0.0005}
train: {epochs: 4}
""")
    write(tmp_path / "recipes/base/mid.yaml", """
base: core/root.yaml
optim: {lr: 0.05}
model: {dropout: 0.3, head: [32]}
schedule: {name: multistep, milestones: [2, 3]}
""")
    return write(tmp_path / "recipes/exp/run.yaml", """
base: ../base/mid.yaml
name: run
optim: {momentum: 0.8}
augment:
  - RandomVerticalFlip: {p: 0.25}
""")


def test_base_chain_is_deep_merged_relative_to_each_file(layered: Path, tmp_path: Path,
                                                         monkeypatch: pytest.MonkeyPatch) -> None:
    elsewhere = tmp_path / "elsewhere"
    elsewhere.mkdir()
    monkeypatch.chdir(elsewhere)  # base paths do not depend on the working directory
    recipe = load_recipe(layered)
    assert recipe.name == "run"
    # optim merges across all three files: name/weight_decay from root, lr from mid, momentum from run
    assert (recipe.optim.name, recipe.optim.lr, recipe.optim.momentum, recipe.optim.weight_decay) == (
        "sgd", 0.05, 0.8, 0.0005)
    assert (recipe.model.dropout, recipe.model.head, recipe.model.blocks) == (0.3, [32], [8, 16])
    assert recipe.data.image_size == 32 and recipe.data.normalize == "imagenet"
    assert recipe.schedule.milestones == [2, 3] and recipe.train.epochs == 4
    assert recipe.augment == [{"RandomVerticalFlip": {"p": 0.25}}]  # lists replace, they do not merge
    raw, set_keys = load_raw(layered)
    assert "base" not in raw and set_keys == set()


def test_a_list_of_bases_merges_in_order(tmp_path: Path) -> None:
    write(tmp_path / "a.yaml", "name: a\ndata: {root: d}\noptim: {lr: 0.1, momentum: 0.5}\n")
    write(tmp_path / "b.yaml", "optim: {lr: 0.2}\n")
    recipe = load_recipe(write(tmp_path / "c.yaml", "base: [a.yaml, b.yaml]\nname: c\n"))
    assert (recipe.name, recipe.optim.lr, recipe.optim.momentum) == ("c", 0.2, 0.5)


def test_deep_merge_does_not_touch_its_inputs() -> None:
    base = {"optim": {"lr": 0.1, "momentum": 0.9}, "augment": [{"A": {}}]}
    over = {"optim": {"lr": 0.2}, "augment": [{"B": {}}]}
    merged = deep_merge(base, over)
    assert merged == {"optim": {"lr": 0.2, "momentum": 0.9}, "augment": [{"B": {}}]}
    assert base == {"optim": {"lr": 0.1, "momentum": 0.9}, "augment": [{"A": {}}]}
    merged["optim"]["lr"] = 1.0
    assert over["optim"]["lr"] == 0.2


@pytest.mark.parametrize(("text", "key", "value"), [
    ("optim.lr=0.05", "optim.lr", 0.05),
    ("train.epochs=3", "train.epochs", 3),
    ("optim.nesterov=true", "optim.nesterov", True),
    ("data.val=null", "data.val", None),
    ("optim.name=adam", "optim.name", "adam"),
    ("model.head=[64, 32]", "model.head", [64, 32]),
    ("model.shakedrop={p: 0.3, at: all}", "model.shakedrop", {"p": 0.3, "at": "all"}),
    ("description=a=b", "description", "a=b"),
    ("description=", "description", ""),
    ("description={unclosed", "description", "{unclosed"),  # not YAML: kept as text
    (" optim.lr = 1e-3", "optim.lr", "1e-3"),  # YAML 1.1 reads 1e-3 as text; pydantic makes it a float
])
def test_parse_override_reads_values_as_yaml(text: str, key: str, value: object) -> None:
    assert parse_override(text) == (key, value)


def test_overrides_set_scalars_lists_and_mappings(layered: Path) -> None:
    recipe = load_recipe(layered, [
        "optim.lr=0.02", "train.epochs=7", "optim.nesterov=true",
        "model.head=[64, 32]", "schedule.milestones=[5]",
        "model.shakedrop={p: 0.3, at: all}",
        "data.normalize={mean: [0.5], std: [0.25]}",
        "data.channels=1", "data.val=null", "data.val_fraction=0.2",
        "optim.lr=0.03",  # the last --set wins
        "augment=[{RandomRotation: {degrees: 5}}]",
    ])
    assert recipe.optim.lr == 0.03 and isinstance(recipe.train.epochs, int) and recipe.train.epochs == 7
    assert recipe.optim.nesterov is True and recipe.optim.momentum == 0.8
    assert recipe.model.head == [64, 32] and recipe.schedule.milestones == [5]
    assert recipe.model.shakedrop is not None
    assert (recipe.model.shakedrop.p, recipe.model.shakedrop.at) == (0.3, "all")
    assert recipe.data.normalize == NormStats(mean=[0.5], std=[0.25])
    assert recipe.data.val is None and recipe.data.val_fraction == 0.2
    assert recipe.augment == [{"RandomRotation": {"degrees": 5}}]
    assert recipe.data.image_size == 32  # untouched keys keep their merged value


def test_overriding_a_mapping_replaces_it(layered: Path) -> None:
    recipe = load_recipe(layered, ["optim={name: adam, lr: 0.001}"])
    assert (recipe.optim.name, recipe.optim.lr, recipe.optim.betas) == ("adam", 0.001, (0.9, 0.999))  # default again
    assert recipe.optim.weight_decay is None  # not the base's 0.0005: the whole section was replaced


def test_load_raw_reports_the_keys_that_came_from_set(layered: Path) -> None:
    raw, keys = load_raw(layered, ["optim.lr=0.5", "model.freeze.backbone=false"])
    assert keys == {"optim.lr", "model.freeze.backbone"}
    assert raw["optim"]["lr"] == 0.5 and raw["model"]["freeze"] == {"backbone": False}


def test_recipe_is_frozen(layered: Path) -> None:
    recipe = load_recipe(layered)
    with pytest.raises(ValidationError, match="frozen"):
        recipe.name = "other"  # type: ignore[misc]
    with pytest.raises(ValidationError, match="frozen"):
        recipe.optim.lr = 1.0  # type: ignore[misc]
    with pytest.raises(ValidationError, match="frozen"):
        recipe.data.root = Path("/elsewhere")  # type: ignore[misc]


SWEEP = """
name: grid
data: {root: d}
model: {dropout: 0.1}
sweep:
  model.dropout: [0.4, 0.6]
  optim.lr: [0.1, 0.01, 0.001]
  model.shakedrop.p: [0.5]
"""


def test_expand_sweep_gives_one_validated_recipe_per_point(tmp_path: Path) -> None:
    recipe = load_recipe(write(tmp_path / "grid.yaml", SWEEP))
    points = expand_sweep(recipe, "grid.yaml")
    names = [name for name, _ in points]
    assert names == [
        "dropout=0.4_lr=0.1_p=0.5", "dropout=0.4_lr=0.01_p=0.5", "dropout=0.4_lr=0.001_p=0.5",
        "dropout=0.6_lr=0.1_p=0.5", "dropout=0.6_lr=0.01_p=0.5", "dropout=0.6_lr=0.001_p=0.5",
    ]
    assert names == [name for name, _ in expand_sweep(load_recipe(tmp_path / "grid.yaml"))]  # stable
    for name, point in points:
        assert isinstance(point, Recipe) and point.sweep is None and point.name == "grid"
        assert name == f"dropout={point.model.dropout}_lr={point.optim.lr}_p={point.model.shakedrop.p}"
    assert {(p.model.dropout, p.optim.lr) for _, p in points} == {
        (d, lr) for d in (0.4, 0.6) for lr in (0.1, 0.01, 0.001)}
    assert recipe.model.dropout == 0.1  # the parent recipe is unchanged


def test_a_recipe_without_sweep_is_its_own_single_point(layered: Path) -> None:
    recipe = load_recipe(layered)
    assert expand_sweep(recipe) == [("", recipe)]


@pytest.mark.parametrize(("point", "name"), [
    ({"optim.lr": 0.1}, "lr=0.1"),
    ({"model.head": [64, 32], "data.root": "a/b"}, "head=[64,32]_root=a-b"),
    ({"model.shakedrop": {"p": 0.5}}, "shakedrop={p0.5}"),
    ({}, "point"),
])
def test_sweep_point_names_are_folder_safe(point: dict, name: str) -> None:
    assert sweep_point_name(point) == name


ROUND_TRIPS = {
    "minimal": "name: m\ndata: {root: d}\n",
    "full": """
name: full.v1
description: "every section, with values that tend to change type on the way: naïve Grüße ✓"
task: keypoints
seed: 7
data:
  format: csv
  root: data/facial keypoints
  val: null
  val_fraction: 0.15
  normalize: {mean: [0.5669, 0.5426, 0.4914], std: [0.2377, 0.2326, 0.2506]}
  image_extension: jpg
  target_prefix: Point_
  flip_pairs: [[0, 1], [2, 3]]
augment:
  - RandomApply: {p: 0.8, transforms: [{RandomAffine: {degrees: 0, translate: [0.125, 0.125]}}]}
  - ColorJitter: {brightness: 0.2}
model:
  arch: simplenet
  dropout: 0.5
  head: [64]
  small_input: {stride1: 1}
  shakedrop: {p: 0.4, at: all}
  freeze: {unfreeze_last: 2, unfreeze_at_epoch: 3}
optim: {name: adamw, lr: 1.0e-4, betas: [0.85, 0.99], weight_decay: 0.05}
phases: [{epoch: 3, optim: {lr: 1.0e-5}}, {epoch: 6, optim: {name: sgd, momentum: 0.9}}]
schedule: {name: cosine, T_max: 12, eta_min: 1.0e-6}
loss: {name: smooth_l1, beta: 0.5}
train: {epochs: 12, monitor: val/rmse, early_stop: {patience: 4}, channels_last: false}
evaluate: {threshold: 0.4}
tta: {passes: 4, aggregate: mean, transforms: [{RandomHorizontalFlip: {p: 1.0}}]}
sweep: {optim.lr: [1.0e-4, 3.0e-4]}
""",
    "multilabel": """
name: planet
task: multilabel
data: {root: planet, format: csv, val: null, val_fraction: 0.1, normalize: auto}
loss: {name: focal, class_weights: [1.0, 2.5], alpha: null, gamma: 0.5}
""",
}


@pytest.mark.parametrize("key", sorted(ROUND_TRIPS))
def test_recipe_to_yaml_round_trips(key: str, tmp_path: Path) -> None:
    recipe = load_recipe(write(tmp_path / "r.yaml", ROUND_TRIPS[key]))
    text = recipe_to_yaml(recipe)
    again = load_recipe(write(tmp_path / "again.yaml", text))
    assert again == recipe
    assert recipe_to_yaml(again) == text and text.isascii()
    assert recipe_from_dict(yaml.safe_load(text)) == recipe


def test_recipe_from_dict_and_validate_name_their_source() -> None:
    with pytest.raises(CvtoolError, match=r"^run/best\.pt \(recipe\): optim\.lrr: unknown key"):
        recipe_from_dict({"name": "x", "data": {"root": "d"}, "optim": {"lrr": 1}}, "run/best.pt (recipe)")
    with pytest.raises(CvtoolError, match=r"^src: a recipe must be a mapping"):
        validate(["name"], "src")  # type: ignore[arg-type]


def _show(args: list[str]) -> str:
    result = CliRunner().invoke(app, ["recipe", "show", *args])
    assert result.exit_code == 0, result.output
    return ANSI.sub("", result.stdout)


def test_cli_recipe_show_prints_the_resolved_recipe(layered: Path) -> None:
    out = _show([str(layered), "--set", "optim.lr=0.025", "-s", "model.head=[48]"])
    resolved = yaml.safe_load(out)  # the output is the resolved recipe as YAML
    assert resolved["name"] == "run" and "base" not in resolved
    assert resolved["optim"] == {**resolved["optim"], "lr": 0.025, "momentum": 0.8, "weight_decay": 0.0005}
    assert resolved["model"]["head"] == [48] and resolved["model"]["dropout"] == 0.3
    assert resolved["data"]["root"] == "data/digits" and resolved["schedule"]["milestones"] == [2, 3]
    assert resolved["loss"]["name"] == "auto" and resolved["sweep"] is None  # defaults are shown too


def test_cli_recipe_show_lists_the_sweep_points(tmp_path: Path) -> None:
    out = _show([str(write(tmp_path / "grid.yaml", SWEEP))])
    assert "6 runs" in out
    flat = re.sub(r"\s+", "", out)  # the points line may wrap at the terminal width
    for dropout in ("0.4", "0.6"):
        for lr in ("0.1", "0.01", "0.001"):
            assert f"dropout={dropout}_lr={lr}_p=0.5" in flat
