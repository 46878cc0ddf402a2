"""Sample tables are validated before any image is decoded (one line naming file, row and column),
and images are decoded as a viewer shows them (EXIF orientation)."""

from __future__ import annotations

import csv
import json
import re
import shutil
from pathlib import Path

import numpy as np
import pytest
from PIL import Image
from typer.testing import CliRunner

from cvtool.cli.main import app
from cvtool.data.formats import read_dataset
from cvtool.data.images import decode, image_size_of
from cvtool.errors import CvtoolError
from cvtool.fileio import write_json
from cvtool.recipe.schema import DataConfig

ANSI = re.compile(r"\x1b\[[0-9;]*m")


def copy_of(synthetic, task: str, tmp_path: Path) -> dict:
    """A private copy of a session dataset (they are shared read-only)."""
    info = synthetic(task)
    root = tmp_path / task
    shutil.copytree(info["root"], root)
    return {**info, "root": str(root), "data": {**info["data"], "root": str(root)}}


def edit_csv(path: Path, edit) -> None:
    with path.open(newline="") as handle:
        rows = list(csv.reader(handle))
    rows = edit(rows)
    with path.open("w", newline="") as handle:
        csv.writer(handle).writerows(rows)


def read(info: dict, task: str, **changes) -> object:
    return read_dataset(DataConfig(**{**info["data"], **changes}), task, seed=0)


@pytest.mark.parametrize(("cell", "what"), [("nan", "'nan' is not a finite number"), ("inf", "'inf' is not a finite number"),
                                            ("", "empty"), ("abc", "'abc' is not a finite number")])
def test_keypoint_value_nan_inf_or_empty_names_row_and_column(synthetic, tmp_path, cell, what) -> None:
    info = copy_of(synthetic, "keypoints", tmp_path)
    train = Path(info["root"]) / "train.csv"

    def put(rows):
        rows[3][2] = cell  # line 4, the second target column
        return rows

    edit_csv(train, put)
    column = info["targets"][1]
    with pytest.raises(CvtoolError) as exc:
        read(info, "keypoints")
    assert str(exc.value) == f"{train}:4: column '{column}': keypoint value {what}"


def test_duplicate_image_refused_unless_kept(synthetic, tmp_path) -> None:
    info = copy_of(synthetic, "multilabel", tmp_path)
    train = Path(info["root"]) / "train.csv"
    edit_csv(train, lambda rows: [*rows, rows[2]])
    lines = train.read_text().splitlines()
    name = lines[2].split(",")[0]
    with pytest.raises(CvtoolError) as exc:
        read(info, "multilabel")
    assert str(exc.value) == (f"{train}:{len(lines)}: column 'image': image '{name}' already on line 3 "
                              "(remove it, or set data.duplicates: keep)")
    kept = read(info, "multilabel", duplicates="keep")
    assert len(kept.splits["train"]) == len(lines) - 1


def test_comma_separated_tags_get_a_hint(synthetic, tmp_path) -> None:
    info = copy_of(synthetic, "multilabel", tmp_path)
    train = Path(info["root"]) / "train.csv"
    first, second = info["classes"][:2]

    def commas(rows):
        rows[1][1] = f"{first},{second}"
        return rows

    edit_csv(train, commas)
    with pytest.raises(CvtoolError) as exc:
        read(info, "multilabel")
    assert str(exc.value) == (f"{train}:2: column 'tags': tags '{first},{second}' contain a comma; "
                              f"tags are space-separated ('{first} {second}')")


@pytest.mark.parametrize("task", ["multilabel", "keypoints"])
def test_train_csv_without_its_label_column_is_one_line(synthetic, tmp_path, task) -> None:
    info = copy_of(synthetic, task, tmp_path)
    train = Path(info["root"]) / "train.csv"
    edit_csv(train, lambda rows: [row[:1] for row in rows])
    column, key = ("tags", "data.tags_column") if task == "multilabel" else (info["targets"][0], "data.target_columns")
    changes = {"target_columns": info["targets"], "target_prefix": None} if task == "keypoints" else {}
    with pytest.raises(CvtoolError, match=re.escape(f"{train}: no column '{column}' ({key}); columns: image")):
        read(info, task, **changes)
    test = Path(info["root"]) / "test.csv"  # a test CSV without labels is a competition's test set
    shutil.copy(train, test)
    shutil.copy(Path(synthetic(task)["root"]) / "train.csv", train)
    assert read(info, task, **changes).splits["test"].targets is None


def test_stats_on_a_csv_without_its_tags_column_says_so(synthetic, tmp_path) -> None:
    info = copy_of(synthetic, "multilabel", tmp_path)
    train = Path(info["root"]) / "train.csv"
    edit_csv(train, lambda rows: [row[:1] for row in rows])
    result = CliRunner().invoke(app, ["stats", info["root"], "--format", "csv", "--task", "multilabel",
                                      "--out", str(tmp_path / "stats.json")])
    assert result.exit_code == 2, result.output
    assert f"{train}: no column 'tags' (data.tags_column)" in ANSI.sub("", result.output).replace("\n", "")


def test_csv_with_a_header_and_no_rows_is_one_line(synthetic, tmp_path) -> None:
    info = copy_of(synthetic, "multilabel", tmp_path)
    val = Path(info["root"]) / "val.csv"
    edit_csv(val, lambda rows: rows[:1])
    with pytest.raises(CvtoolError) as exc:
        read(info, "multilabel")
    assert str(exc.value) == f"{val}: a header and no rows: the split has no images"


def rotated_jpeg(path: Path, orientation: int = 6) -> np.ndarray:
    """A 40 x 20 (w x h) JPEG whose EXIF says: rotate 90 degrees clockwise to view (orientation 6)."""
    arr = np.zeros((20, 40, 3), np.uint8)
    arr[:, :20] = (250, 10, 10)  # left half red, right half blue as stored
    arr[:, 20:] = (10, 10, 250)
    exif = Image.Exif()
    exif[0x0112] = orientation
    Image.fromarray(arr).save(path, quality=95, exif=exif)
    return arr


def test_exif_orientation_is_applied_when_decoding(tmp_path) -> None:
    path = tmp_path / "portrait.jpg"
    rotated_jpeg(path)
    pixels, original = decode(path, 3, None)
    assert original == (20, 40) and pixels.shape == (40, 20, 3)  # a viewer shows it 20 wide, 40 high
    assert pixels[5, 10, 0] > 200 and pixels[35, 10, 2] > 200  # stored left (red) is now on top
    assert image_size_of(path) == (20, 40)


def test_stats_training_sizes_see_the_upright_image(tmp_path) -> None:
    root = tmp_path / "data"
    for split in ("train", "val"):
        for label in ("a", "b"):
            (root / split / label).mkdir(parents=True)
            for i in range(2):
                rotated_jpeg(root / split / label / f"{i}.jpg")
    out = tmp_path / "stats.json"
    result = CliRunner().invoke(app, ["stats", str(root), "--image-size", "native", "--out", str(out)])
    assert result.exit_code == 0, result.output
    stats = json.loads(out.read_text())
    assert list(stats["sizes"]["train"]) == ["20x40"]


def test_write_json_turns_nan_into_null(tmp_path) -> None:
    out = tmp_path / "m.json"
    write_json(out, {"auc": float("nan"), "rows": [1.0, float("inf")], "array": np.array([np.nan, 2.0], np.float32)})
    assert json.loads(out.read_text()) == {"auc": None, "rows": [1.0, None], "array": [None, 2.0]}
    assert "NaN" not in out.read_text() and "Infinity" not in out.read_text()
