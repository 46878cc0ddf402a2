"""Issue 26: no command writes over what it reads. An output that resolves to an input (predict's
images CSV, the data's label CSV, the recipe, a run's own records) is refused; an output folder
inside a data root is refused (its PNGs would be read as images next time), and so is a data
root inside a run. Symlinked folders in the data are followed (a loop is one line naming it),
never silently left out."""

from __future__ import annotations

import csv
import json
import os
import shutil
from pathlib import Path

import pytest
from conftest import one_line_error, snapshot, write_recipe
from typer.testing import CliRunner

from cvtool.cli.main import app
from cvtool.data.formats import read_dataset
from cvtool.runs.recipes import load_recipe

runner = CliRunner()
FAST = {"epochs": 1, "device": "cpu", "max_batches": 1}


def invoke(*args: object):
    return runner.invoke(app, [str(a) for a in args])


@pytest.fixture(scope="module")
def setup(tmp_path_factory, synthetic) -> dict:
    """A CSV dataset of its own (tests refuse writes into it, nothing may change), its recipe and a run."""
    folder = tmp_path_factory.mktemp("outputs")
    data = folder / "data"
    shutil.copytree(synthetic("multiclass", format="csv", n=40, size=16)["root"], data)
    info = json.loads((data / "cvtool-dataset.json").read_text())
    recipe = write_recipe(folder, {"task": "multiclass", "data": {**info["data"], "root": str(data)}}, train=FAST)
    result = invoke("train", recipe, "--out", folder / "run", "--quiet")
    assert result.exit_code == 0, result.output
    return {"folder": folder, "data": data, "recipe": recipe, "run": folder / "run"}


def cases(s: dict) -> list[tuple[list[object], str]]:
    data, run, recipe = s["data"], s["run"], s["recipe"]
    image = sorted((data / "images").iterdir())[0]
    return [
        (["predict", run, data / "test.csv", "--out", data / "test.csv"], f"--out {data / 'test.csv'}: is IMAGES"),
        (["predict", run, data / "images", "--out", image], f"--out {image}: is one of the images to predict"),
        (["predict", run, data / "test.csv", "--out", run / "recipe.yaml"], "is recipe.yaml of the cvtool run"),
        (["predict", run / "checkpoints" / "best.pt", data / "test.csv", "--out", run / "checkpoints" / "best.pt"],
         "is MODEL"),
        (["stats", data, "--recipe", recipe, "--out", data / "train.csv"], "is the data's train.csv"),
        (["stats", data, "--recipe", recipe, "--out", recipe], "is the recipe"),
        (["stats", data, "--recipe", recipe, "--out", image], "is an image of the data root"),
        (["stats", data, "--recipe", recipe, "--out", run / "summary.json"], "is summary.json of the cvtool run"),
        (["evaluate", run, "--save-predictions", data / "test.csv"], "is the data's test.csv"),
        (["evaluate", run, "--save-predictions", run / "metrics.csv"], "is metrics.csv of the cvtool run"),
        (["evaluate", run, "--save-predictions", run / "checkpoints" / "best.pt"], "is the checkpoint"),
        (["evaluate", run, "--out", data / "eval"], "lies inside the data root"),
        (["evaluate", run, "--checkpoint", "all", "--out", data / "eval"], "lies inside the data root"),
        (["explain", run, data / "images", "--out", data / "images" / "cam"], "lies inside the data root"),
        (["doctor", data, "--recipe", recipe, "--out", data, "--fix"], "lies inside the data root"),
        (["lr-find", recipe, "--out", data / "lr", "--steps", 10], "lies inside the data root"),
        (["report", run, "--out", data / "report.md"], "lies inside the data root"),
        (["bench", "train", recipe, "--json", recipe], "is the recipe"),
        (["bench", "train", recipe, "--json", data / "val.csv"], "is the data's val.csv"),
        (["train", recipe, "--out", recipe], "is the recipe"),
        (["train", recipe, "--out", data / "images" / "run"], "lies inside the data root"),
        (["train", recipe, "--out", data.parent, "--overwrite"], "holds the data root"),
        (["data", "synthetic", run / "more-data"], "lies inside the cvtool run"),
        (["data", "digits", data / "digits"], "lies inside the dataset"),
    ]


def test_no_output_is_one_of_the_commands_inputs(setup) -> None:
    before = {key: snapshot(setup[key]) for key in ("data", "run")}
    recipe = setup["recipe"].read_bytes()
    for args, message in cases(setup):
        line = one_line_error(invoke(*args))
        assert message in line, (args, line)
        assert {key: snapshot(setup[key]) for key in ("data", "run")} == before, args
        assert setup["recipe"].read_bytes() == recipe
    assert sorted(p.name for p in setup["folder"].iterdir()) == ["data", "run", "test.yaml"]


def test_outputs_beside_the_inputs_are_written(setup, tmp_path) -> None:
    data, run = setup["data"], setup["run"]
    result = invoke("predict", run, data / "test.csv", "--out", tmp_path / "submission.csv")
    assert result.exit_code == 0, result.output
    result = invoke("stats", data, "--recipe", setup["recipe"], "--out", tmp_path / "stats.json")
    assert result.exit_code == 0, result.output
    result = invoke("evaluate", run, "--split", "val", "--save-predictions", run / "eval" / "val.csv")
    assert result.exit_code == 0, result.output
    assert (run / "eval" / "val.csv").is_file()


def test_a_data_root_inside_a_run_is_refused(setup, tmp_path) -> None:
    holder = tmp_path / "old-run"
    shutil.copytree(setup["run"], holder)
    shutil.copytree(setup["data"], holder / "data")
    recipe = write_recipe(tmp_path, {"task": "multiclass", "data": {**load_recipe(setup["recipe"]).data.model_dump(
        mode="json"), "root": str(holder / "data")}}, train=FAST)
    line = one_line_error(invoke("train", recipe, "--out", tmp_path / "new", "--quiet"))
    assert f"data.root {holder / 'data'}: lies inside the cvtool run {holder}" in line
    assert not (tmp_path / "new").exists()


def symlinked_copy(source: Path, tmp_path: Path) -> tuple[Path, dict[str, int]]:
    """A copy of a folder dataset whose train/circle keeps half its images in a symlinked
    subfolder and whose train/square is itself a symlink; both targets lie outside the root."""
    data = tmp_path / "data"
    shutil.copytree(source, data)
    counts = {c.name: len(list(c.iterdir())) for c in (data / "train").iterdir() if c.is_dir()}
    outside = tmp_path / "elsewhere"
    (outside / "circle-more").mkdir(parents=True)
    for image in sorted((data / "train" / "circle").iterdir())[::2]:
        image.rename(outside / "circle-more" / image.name)
    (data / "train" / "circle" / "more").symlink_to(outside / "circle-more", target_is_directory=True)
    (data / "train" / "square").rename(outside / "square")
    (data / "train" / "square").symlink_to(outside / "square", target_is_directory=True)
    return data, counts


def test_symlinked_folders_in_the_data_are_followed(synthetic, make_recipe, tmp_path) -> None:
    source = synthetic("multiclass", n=80, size=16)
    data, counts = symlinked_copy(Path(source["root"]), tmp_path)
    recipe = load_recipe(make_recipe(tmp_path, {**source, "data": {**source["data"], "root": str(data)}}, train=FAST))
    train = read_dataset(recipe.data, "multiclass", 0).splits["train"]
    found = {name: int((train.targets == i).sum()) for i, name in enumerate(["circle", "cross", "square", "triangle"])}
    assert found == counts
    result = invoke("stats", data, "--out", tmp_path / "stats.json")
    assert result.exit_code == 0, result.output
    stats = json.loads((tmp_path / "stats.json").read_text())
    assert stats["splits"]["train"] == sum(counts.values())
    # predict lists the images below a symlinked folder too
    images = tmp_path / "to-predict"
    shutil.copytree(data / "val", images)
    total = len([p for p in images.rglob("*") if p.is_file()])
    moved = tmp_path / "more-images"
    (images / "circle").rename(moved)
    (images / "linked").symlink_to(moved, target_is_directory=True)
    run = tmp_path / "run"
    assert invoke("train", make_recipe(tmp_path, source, train=FAST), "--out", run, "--quiet").exit_code == 0
    result = invoke("predict", run, images, "--out", tmp_path / "sub.csv", "--quiet")
    assert result.exit_code == 0, result.output
    with (tmp_path / "sub.csv").open() as handle:
        keys = [row["image"] for row in csv.DictReader(handle)]
    assert len(keys) == total and sum(key.startswith("linked/") for key in keys) == len(list(moved.iterdir()))


def test_a_symlink_loop_is_one_line_naming_it_and_a_broken_link_is_an_unreadable_image(synthetic, tmp_path) -> None:
    data = tmp_path / "data"
    shutil.copytree(synthetic("multiclass", n=40, size=16)["root"], data)
    (data / "val" / "circle" / "ghost.png").symlink_to(tmp_path / "gone.png")
    result = invoke("stats", data, "--out", tmp_path / "stats.json")
    assert result.exit_code == 0, result.output
    unreadable = json.loads((tmp_path / "stats.json").read_text())["unreadable"]
    assert [Path(row["path"]).name for row in unreadable] == ["ghost.png"]
    loop = data / "train" / "circle" / "again"
    loop.symlink_to(data / "train", target_is_directory=True)
    line = one_line_error(invoke("stats", data, "--out", tmp_path / "stats.json"))
    assert f"{loop}: a symlink loop" in line


def test_a_csv_datasets_symlinked_images_folder_is_followed(synthetic, make_recipe, tmp_path) -> None:
    source = synthetic("multiclass", format="csv", n=40, size=16)
    data = tmp_path / "data"
    shutil.copytree(source["root"], data)
    (data / "images").rename(tmp_path / "big-disk")  # the images on another disk, linked from inside the root
    (data / "images").mkdir()
    os.symlink(tmp_path / "big-disk", data / "images" / "linked")
    for split in ("train", "val", "test"):
        table = data / f"{split}.csv"
        rows = list(csv.reader(table.open()))
        table.write_text("\n".join(",".join([f"linked/{r[0]}" if i else r[0], *r[1:]]) for i, r in enumerate(rows)))
    recipe = load_recipe(make_recipe(tmp_path, {**source, "data": {**source["data"], "root": str(data)}}))
    info = read_dataset(recipe.data, "multiclass", 0)
    assert {name: len(split) for name, split in info.splits.items()} == source["splits"]
    bad = data / "escape.csv"
    bad.write_text("image,label\n../../etc/passwd,circle\n")
    line = one_line_error(invoke("stats", data, "--format", "csv", "--recipe",
                                 make_recipe(tmp_path, {**source, "data": {**source["data"], "root": str(data),
                                                                           "train": "escape"}}, name="esc"),
                                 "--out", tmp_path / "s.json"))
    assert "image path escapes the data root: ../../etc/passwd" in line


def test_regenerating_a_dataset_keeps_the_users_files(tmp_path) -> None:
    data = tmp_path / "data"
    assert invoke("data", "synthetic", data, "--n", 40, "--size", 16).exit_code == 0
    (data / "LICENSE.txt").write_text("CC-BY")
    (data / "cvtool-stats.json").write_text("{}")  # cvtool's own: goes with the images it described
    result = invoke("data", "synthetic", data, "--n", 40, "--size", 16, "--seed", 1)
    assert result.exit_code == 0, result.output
    assert f"kept 1 of your files in {data}: LICENSE.txt" in result.output
    assert (data / "LICENSE.txt").read_text() == "CC-BY" and not (data / "cvtool-stats.json").exists()
    assert sorted(p.name for p in tmp_path.iterdir()) == ["data"]
