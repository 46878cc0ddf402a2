"""Every recipe in recipes/ loads and runs one optimization step on tiny generated data.

Each recipe is trained through `cvtool train` with `--set` overrides only: the data root of a
generated dataset in the recipe's own format (plus the generated layout's file and column names
for CSV data), small images, one batch of one epoch, no pretrained weights. A sweep runs its
first grid point. Files under a `base/` folder are shared bases, not meant to run alone.
"""

from __future__ import annotations

import json
import re
import shutil
import tempfile
from collections.abc import Callable, Iterator
from pathlib import Path
from typing import Any

import pytest
from typer.testing import CliRunner

from cvtool.cli.main import app
from cvtool.recipe.load import read_yaml
from cvtool.recipe.schema import Recipe
from cvtool.runs.recipes import expand_sweep, load_recipe

RECIPES = Path(__file__).resolve().parent.parent / "recipes"
ALL_YAML = sorted(RECIPES.rglob("*.yaml"))
RUNNABLE = [path for path in ALL_YAML if "base" not in path.relative_to(RECIPES).parts[:-1]]
# the seed experiments: recipes/<NNN>_<series>/ and the final model of seed 002
SEED_RECIPES = [path for path in RUNNABLE
                if re.match(r"\d{3}_", path.relative_to(RECIPES).parts[0]) or path.name == "effnet_shakedrop.yaml"]
IMAGE_SIZE = 32  # big archs blow up to inf/NaN at 8-16 px after one step (batch-norm stats of 1x1 maps)
MIN_IMAGE_SIZE = {"inception_v3": 75, "vgg16": 32}  # torchvision refuses smaller inputs
GENERATED_IMAGES = 20
# Recipes whose smoke run also draws its plots, one per task and format; elsewhere plotting is
# skipped: it is the same code for every recipe and costs about a second per run (a third of this file).
PLOTTED = {"000_auc/exp1_simple_net.yaml", "effnet_shakedrop.yaml", "digits.yaml",
           "003_keypoints/resnext50_final.yaml", "004_multilabel/efficientnet_b0.yaml"}


def _id(path: Path) -> str:
    return str(path.relative_to(RECIPES))


# `make test` runs one recipe per task and format (PLOTTED) for a step; every other recipe's step
# is in the slow set (`make test-all`): a third of the suite's time went to these smoke runs.
ONE_STEP = [path if _id(path) in PLOTTED else pytest.param(path, marks=pytest.mark.slow) for path in RUNNABLE]


def _first_point(recipe: Recipe) -> list[str]:
    """--set values that turn a sweep into its first grid point (and drop the sweep)."""
    if not recipe.sweep:
        return []
    first = {key: values[0] for key, values in recipe.sweep.items()}
    return ["sweep=null", *(f"{key}={json.dumps(value)}" for key, value in first.items())]


def _data_overrides(recipe: Recipe, dataset: dict[str, Any]) -> list[str]:
    """Point the recipe's data section at a generated dataset of its format."""
    data = recipe.data
    sets = [f"data.root={dataset['root']}"]
    if data.format == "tinyimagenet":
        return sets  # the generated folder is laid out like tiny-imagenet-200 itself
    sets.append("data.train=train")
    if data.val_fraction is None:
        sets.append("data.val=val")
    if data.test is not None:
        sets.append("data.test=test")
    if data.format == "csv":
        generated = dataset["data"]
        sets += [f"data.images_dir={generated['images_dir']}", f"data.image_column={generated['image_column']}",
                 "data.image_extension="]
        for key in ("tags_column", "label_column", "target_prefix"):
            if key in generated:
                sets.append(f"data.{key}={generated[key]}")
    return sets


def smoke_overrides(recipe: Recipe, dataset: dict[str, Any]) -> list[str]:
    size = max(IMAGE_SIZE, MIN_IMAGE_SIZE.get(recipe.model.arch, 0))
    return [
        *_first_point(recipe),
        *_data_overrides(recipe, dataset),
        f"data.image_size={size}", "data.batch_size=4", "data.num_workers=0",
        "train.epochs=1", "train.max_batches=1", "train.device=cpu", "train.save_every=0",
        "model.pretrained=null",
    ]


@pytest.fixture
def scratch(tmp_path: Path) -> Iterator[Path]:
    """A throwaway run folder in RAM when /dev/shm exists: a one-step run of a big arch still writes
    three checkpoints (vgg16 with its Adam state: about 3 GB), which on disk costs more than the step."""
    shm = Path("/dev/shm")
    if not (shm.is_dir() and shutil.disk_usage(shm).free > 8 * 2**30):
        yield tmp_path
        return
    folder = Path(tempfile.mkdtemp(prefix="cvtool-recipe-", dir=shm))
    try:
        yield folder
    finally:
        shutil.rmtree(folder, ignore_errors=True)


@pytest.mark.parametrize("path", ONE_STEP, ids=_id)
def test_recipe_runs_one_step(path: Path, synthetic: Callable[..., dict[str, Any]], scratch: Path,
                              monkeypatch: pytest.MonkeyPatch) -> None:
    recipe = load_recipe(path)
    dataset = synthetic(recipe.task, recipe.data.format, n=GENERATED_IMAGES, size=IMAGE_SIZE)
    overrides = smoke_overrides(recipe, dataset)
    resolved = load_recipe(path, overrides)
    assert resolved.sweep is None and resolved.train.max_batches == 1

    if _id(path) not in PLOTTED:
        monkeypatch.setattr("cvtool.runs.artifacts.write_plots", lambda *args, **kwargs: None)
    run_dir = scratch / "run"
    args = ["train", str(path), "--out", str(run_dir), "--quiet"]
    for item in overrides:
        args += ["--set", item]
    result = CliRunner().invoke(app, args)
    assert result.exit_code == 0, f"{_id(path)}: {result.output}\n{result.exception!r}"

    summary = json.loads((run_dir / "summary.json").read_text(encoding="utf-8"))
    assert summary["epochs_run"] == 1
    assert summary["name"] == recipe.name
    assert (run_dir / "metrics.csv").is_file()
    if _id(path) in PLOTTED:
        assert (run_dir / "plots" / "loss.png").is_file()


@pytest.mark.parametrize("path", SEED_RECIPES, ids=_id)
def test_recipe_quotes_its_seed(path: Path) -> None:
    """The opening comment names the seed and the figure it reported; `description` says it too."""
    header = path.read_text(encoding="utf-8").split("\n\n")[0]
    assert re.match(r"# seed 00[0-4]\b", header), f"{_id(path)}: must open with '# seed 00N, ...'"
    assert "figure" in header.lower(), f"{_id(path)}: the opening comment must state the seed's figure"
    recipe = load_recipe(path)
    assert recipe.description.startswith("seed 00"), f"{_id(path)}: description should name the seed"
    assert "name" in read_yaml(path), f"{_id(path)}: set its own name (not the base's), runs are filed by it"


def test_recipe_names_are_unique() -> None:
    names = [load_recipe(path).name for path in RUNNABLE]
    assert len(names) == len(set(names)), sorted(n for n in names if names.count(n) > 1)


def test_bases_are_complete_recipes_too() -> None:
    """A base validates on its own (so a typo there names the base file, not every variant)."""
    bases = [path for path in ALL_YAML if path not in RUNNABLE]
    assert bases, "expected shared bases under recipes/<series>/base/"
    for path in bases:
        load_recipe(path)


def test_sweeps_expand() -> None:
    for path in RUNNABLE:
        recipe = load_recipe(path)
        if recipe.sweep:
            points = expand_sweep(recipe, str(path))
            assert len(points) >= 2, _id(path)


def test_readme_lists_every_recipe() -> None:
    readme = (RECIPES / "README.md").read_text(encoding="utf-8")
    missing = [_id(path) for path in SEED_RECIPES if f"`{_id(path)}`" not in readme]
    assert not missing, f"recipes/README.md does not list: {missing}"


def test_final_model_matches_the_seed() -> None:
    """recipes/effnet_shakedrop.yaml is seed 002's last run, and keeps a checkpoint of epoch 46."""
    recipe = load_recipe(RECIPES / "effnet_shakedrop.yaml")
    model = recipe.model
    assert (model.arch, model.dropout, model.small_input.stride1) == ("efficientnet_v2_s", 0.8, 2)
    assert model.shakedrop is not None and model.shakedrop.p == 0.5
    assert (recipe.schedule.name, recipe.schedule.milestones) == ("multistep", [30, 45])
    assert recipe.train.epochs == 60 and 46 % recipe.train.save_every == 0
    assert (recipe.tta.passes, recipe.tta.aggregate) == (10, "vote")
    assert recipe.data.batch_size == 32 and recipe.optim.nesterov
    applies = [spec["RandomApply"]["p"] for spec in recipe.augment if "RandomApply" in spec]
    assert applies == [0.8, 0.8]
