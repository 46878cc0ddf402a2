"""Submissions a competition accepts: Planet's image names without the extension, Tiny ImageNet's
wnids, `\\n` line endings, and the mistakes (--out a folder, --probs for keypoints) refused."""

from __future__ import annotations

import csv
import re
from pathlib import Path

import pytest
from PIL import Image
from typer.testing import CliRunner

from cvtool.cli.launch import run_recipe
from cvtool.cli.main import app
from cvtool.runs.recipes import load_recipe

ANSI = re.compile(r"\x1b\[[0-9;]*m")


def cli(*args: object) -> object:
    return CliRunner().invoke(app, [str(a) for a in args])


def read_rows(path: Path) -> list[list[str]]:
    with path.open(newline="", encoding="utf-8") as handle:
        return list(csv.reader(handle))


def planet_like(synthetic, root: Path) -> None:
    """Planet's layout from the synthetic multi-label data: train_v2.csv / val.csv with
    `image_name` (no extension) and `tags`, train-jpg/*.jpg, test-jpg/*.jpg and the competition's
    sample_submission_v2.csv (image_name,tags)."""
    info = synthetic("multilabel")
    source = Path(info["root"])
    (root / "train-jpg").mkdir(parents=True)
    (root / "test-jpg").mkdir()
    for split, table in (("train", "train_v2.csv"), ("val", "val.csv"), ("test", None)):
        rows = read_rows(source / f"{split}.csv")[1:]
        out = []
        for index, (image, tags) in enumerate(rows):
            name = f"{split}_{index}"
            folder = root / ("test-jpg" if table is None else "train-jpg")
            Image.open(source / "images" / image).convert("RGB").save(folder / f"{name}.jpg", quality=95)
            out.append([name, tags])
        with (root / (table or "sample_submission_v2.csv")).open("w", newline="") as handle:
            writer = csv.writer(handle, lineterminator="\n")
            writer.writerow(["image_name", "tags"])
            writer.writerows([[name, "clear primary"] for name, _ in out] if table is None else out)


@pytest.mark.slow  # trains, exports with its parity check, predicts
def test_planet_like_submission_matches_the_sample_submission(synthetic, make_recipe, tmp_path) -> None:
    root = tmp_path / "planet"
    planet_like(synthetic, root)
    recipe = make_recipe(tmp_path, root, task="multilabel", data={
        "format": "csv", "train": "train_v2.csv", "val": "val.csv", "images_dir": "train-jpg",
        "image_column": "image_name", "tags_column": "tags", "image_extension": ".jpg"},
        train={"epochs": 1, "device": "cpu", "max_batches": 2})
    run_recipe(load_recipe(recipe), tmp_path / "run", quiet=True)
    result = cli("export", tmp_path / "run", "--onnx", tmp_path / "planet.onnx")
    assert result.exit_code == 0, result.output
    out = tmp_path / "submission.csv"
    result = cli("predict", tmp_path / "planet.onnx", root / "test-jpg", "--out", out, "--columns", "image_name,tags")
    assert result.exit_code == 0, result.output
    sample, ours = read_rows(root / "sample_submission_v2.csv"), read_rows(out)
    assert ours[0] == sample[0] == ["image_name", "tags"]
    assert sorted(row[0] for row in ours[1:]) == sorted(row[0] for row in sample[1:])
    assert b"\r\n" not in out.read_bytes() and out.read_bytes().endswith(b"\n")


@pytest.fixture(scope="module")
def tiny_run(tmp_path_factory, synthetic) -> tuple[Path, dict]:
    from conftest import write_recipe

    folder = tmp_path_factory.mktemp("tiny")
    info = synthetic("multiclass", "tinyimagenet")
    recipe = write_recipe(folder, info, data={"test": None}, train={"epochs": 1, "device": "cpu", "max_batches": 1})
    run_recipe(load_recipe(recipe), folder / "run", quiet=True)
    return folder / "run", info


def test_tiny_imagenet_writes_wnids_by_default_and_names_on_request(tiny_run, tmp_path) -> None:
    run, info = tiny_run
    root = Path(info["root"])
    wnids = root.joinpath("wnids.txt").read_text().split()
    default, names = tmp_path / "ids.csv", tmp_path / "names.csv"
    assert cli("predict", run, root / "test" / "images", "--out", default, "--probs").exit_code == 0
    assert cli("predict", run, root / "test" / "images", "--out", names, "--labels", "names").exit_code == 0
    ids_rows, name_rows = read_rows(default), read_rows(names)
    assert ids_rows[0] == ["image", "label", *wnids]
    assert {row[1] for row in ids_rows[1:]} <= set(wnids)
    assert name_rows[0] == ["image", "label"] and {row[1] for row in name_rows[1:]} <= set(info["classes"])
    by_id = dict(zip(wnids, info["classes"], strict=True))
    assert [by_id[row[1]] for row in ids_rows[1:]] == [row[1] for row in name_rows[1:]]


def test_out_naming_a_folder_and_unknown_label_style_are_one_line(tiny_run, tmp_path) -> None:
    run, info = tiny_run
    images = Path(info["root"]) / "test" / "images"
    result = cli("predict", run, images, "--out", tmp_path)
    assert result.exit_code == 2
    assert f"--out {tmp_path}: is a folder" in ANSI.sub("", result.output).replace("\n", "")
    result = cli("predict", run, images, "--out", tmp_path / "x.csv", "--labels", "wnids")
    assert result.exit_code == 2 and "--labels: 'wnids' is not one of names, ids" in ANSI.sub("", result.output)


def test_probs_for_keypoints_and_ids_without_ids_are_refused(synthetic, make_recipe, tmp_path) -> None:
    info = synthetic("keypoints")
    recipe = make_recipe(tmp_path, info, train={"epochs": 1, "device": "cpu", "max_batches": 1})
    run_recipe(load_recipe(recipe), tmp_path / "run", quiet=True)
    images = Path(info["root"]) / "test.csv"
    result = cli("predict", tmp_path / "run", images, "--out", tmp_path / "p.csv", "--probs")
    assert result.exit_code == 2
    assert "--probs: a keypoints model has no class probabilities" in ANSI.sub("", result.output)
    assert not (tmp_path / "p.csv").exists()
