"""Data formats (folder, csv, tinyimagenet) read from generated fixtures; the generators and
`cvtool data` themselves (layouts, determinism, atomic replacement, learnable content)."""

from __future__ import annotations

import csv
import hashlib
import re
from pathlib import Path

import numpy as np
import pytest
import yaml
from PIL import Image
from typer.testing import CliRunner

from cvtool.cli.main import app
from cvtool.data import generate
from cvtool.data.formats import read_dataset
from cvtool.errors import CvtoolError
from cvtool.recipe.load import recipe_from_dict
from cvtool.recipe.schema import DataConfig

CASES = [("multiclass", "folder"), ("multiclass", "csv"), ("multiclass", "tinyimagenet"),
         ("binary", None), ("multilabel", None), ("keypoints", None)]
ANSI = re.compile(r"\x1b\[[0-9;]*m")


def config(info: dict, **changes) -> DataConfig:
    return DataConfig(**{**info["data"], **changes})


def read_rows(path: Path) -> list[dict[str, str]]:
    with path.open(newline="") as handle:
        return list(csv.DictReader(handle))


@pytest.mark.parametrize("task, fmt", CASES)
def test_every_format_reads_back(synthetic, task: str, fmt: str | None) -> None:
    info = synthetic(task, fmt)
    data = read_dataset(config(info), task, seed=0)
    assert {name: len(split) for name, split in data.splits.items()} == info["splits"]
    if task == "keypoints":
        assert data.target_names == info["targets"] and data.class_names == []
    else:
        assert data.class_names == info["classes"]
    for split in data.splits.values():
        assert all(path.is_file() for path in split.paths)
    suffixes = {p.suffix for split in data.splits.values() for p in split.paths}
    assert suffixes == ({".JPEG"} if fmt == "tinyimagenet" else {".png", ".jpg"})


def test_folder_labels_follow_the_class_folders(synthetic) -> None:
    info = synthetic("multiclass", "folder")
    data = read_dataset(config(info), "multiclass", seed=0)
    for split in data.splits.values():
        folders = [path.parent.name for path in split.paths]
        assert folders == [data.class_names[t] for t in split.targets]
        assert split.targets.dtype == np.int64


def test_tinyimagenet_native_layout_and_words(synthetic) -> None:
    info = synthetic("multiclass", "tinyimagenet")
    root = Path(info["root"])
    wnids = (root / "wnids.txt").read_text().split()
    words = dict(line.split("\t") for line in (root / "words.txt").read_text().splitlines())
    data = read_dataset(config(info), "multiclass", seed=0)
    assert data.class_names == [words[w].split(",")[0] for w in wnids]
    train = data.splits["train"]
    assert all(p.parent.name == "images" and p.parent.parent.name == wnids[t] for p, t in zip(train.paths, train.targets, strict=True))
    annotations = dict(line.split("\t")[:2] for line in (root / "val/val_annotations.txt").read_text().splitlines())
    val = data.splits["val"]
    assert [wnids[t] for t in val.targets] == [annotations[p.name] for p in val.paths]
    assert data.splits["test"].targets is None  # tiny-imagenet's test images are unlabelled


def test_multilabel_multi_hot(synthetic) -> None:
    info = synthetic("multilabel")
    data = read_dataset(config(info), "multilabel", seed=0)
    rows = read_rows(Path(info["root"]) / "val.csv")
    val = data.splits["val"]
    assert val.targets.dtype == np.float32 and val.targets.shape == (len(rows), len(data.class_names))
    for row, path, target in zip(rows, val.paths, val.targets, strict=True):
        assert path.name == row["image"]
        assert {data.class_names[i] for i in np.flatnonzero(target)} == set(row["tags"].split())
    counts = data.splits["train"].targets.sum(axis=0)
    assert counts.min() >= 2 and counts.max() / counts.min() > 2  # every tag present, imbalanced


def test_keypoint_columns_in_order(synthetic) -> None:
    info = synthetic("keypoints")
    data = read_dataset(config(info), "keypoints", seed=0)
    columns = [f"Point_M{p}_{axis}" for p in range(3) for axis in "XY"]
    assert data.target_names == columns
    rows = read_rows(Path(info["root"]) / "train.csv")
    expected = np.array([[float(row[c]) for c in columns] for row in rows], np.float32)
    np.testing.assert_array_equal(data.splits["train"].targets, expected)
    reordered = columns[2:] + columns[:2]
    explicit = read_dataset(config(info, target_prefix=None, target_columns=reordered), "keypoints", seed=0)
    assert explicit.target_names == reordered
    np.testing.assert_array_equal(explicit.splits["train"].targets, expected[:, [2, 3, 4, 5, 0, 1]])


def test_val_fraction_is_seeded_and_stratified(synthetic) -> None:
    info = synthetic("multiclass", "folder", n=120)
    cfg = config(info, val=None, val_fraction=0.25)
    first, again, other = (read_dataset(cfg, "multiclass", seed=s) for s in (3, 3, 4))
    assert first.splits["val"].paths == again.splits["val"].paths
    assert first.splits["val"].paths != other.splits["val"].paths
    full = read_dataset(config(info), "multiclass", seed=0).splits["train"]
    train, val = first.splits["train"], first.splits["val"]
    assert sorted(train.paths + val.paths) == sorted(full.paths) and not set(train.paths) & set(val.paths)
    per_class = np.bincount(full.targets) * 0.25
    assert np.abs(np.bincount(val.targets, minlength=len(per_class)) - per_class).max() <= 1


@pytest.mark.parametrize("bad", ["../../etc/passwd", "/etc/passwd", "images/../../outside.png"])
def test_csv_paths_cannot_leave_the_root(tmp_path: Path, bad: str) -> None:
    (tmp_path / "images").mkdir()
    Image.new("RGB", (4, 4)).save(tmp_path / "images/ok.png")
    (tmp_path / "train.csv").write_text(f"image,label\nok.png,a\n{bad},b\n")
    with pytest.raises(CvtoolError, match="escapes the data root"):
        read_dataset(DataConfig(format="csv", root=tmp_path, val=None), "multiclass", seed=0)


def test_digits_is_the_real_dataset(digits_dir: Path) -> None:
    data = read_dataset(DataConfig(root=digits_dir, test="test"), "multiclass", seed=0)
    sizes = {name: len(split) for name, split in data.splits.items()}
    assert sum(sizes.values()) == 1797 and data.class_names == [str(d) for d in range(10)]
    assert 0.68 < sizes["train"] / 1797 < 0.72 and abs(sizes["val"] - sizes["test"]) <= 10
    for split in data.splits.values():  # stratified: every digit about equally often
        counts = np.bincount(split.targets, minlength=10)
        assert counts.max() - counts.min() <= 0.1 * len(split) + 2
    from sklearn.datasets import load_digits

    digits = load_digits()
    path = data.splits["val"].paths[0]
    img = Image.open(path)
    assert img.mode == "L" and img.size == (8, 8)
    expected = np.rint(digits.images[int(path.stem)] * 255 / 16).astype(np.uint8)
    np.testing.assert_array_equal(np.asarray(img), expected)
    assert int(path.parent.name) == digits.target[int(path.stem)]


def tree_digest(root: Path) -> dict[str, str]:
    return {str(p.relative_to(root)): hashlib.sha256(p.read_bytes()).hexdigest()
            for p in sorted(root.rglob("*")) if p.is_file() and p.name != generate.MARKER}


def test_generation_is_deterministic_and_replaces_cleanly(tmp_path: Path) -> None:
    first = generate.write_synthetic(tmp_path / "a", "multilabel", n=30, size=12, seed=5)
    generate.write_synthetic(tmp_path / "b", "multilabel", n=30, size=12, seed=5)
    assert tree_digest(tmp_path / "a") == tree_digest(tmp_path / "b")
    (tmp_path / "a" / "cvtool-stats.json").write_text("{}")
    again = generate.write_synthetic(tmp_path / "a", "multilabel", n=30, size=12, seed=5)
    assert again == first and not (tmp_path / "a" / "cvtool-stats.json").exists()
    assert sorted(p.name for p in tmp_path.iterdir()) == ["a", "b"]  # no temp folders left


def test_generation_refuses_foreign_folders_and_leaves_no_half_tree(tmp_path: Path, monkeypatch) -> None:
    (tmp_path / "mine").mkdir()
    (tmp_path / "mine" / "precious.txt").write_text("keep")
    with pytest.raises(CvtoolError, match="not a dataset cvtool generated"):
        generate.write_digits(tmp_path / "mine")
    assert (tmp_path / "mine" / "precious.txt").read_text() == "keep"

    def broken(*args, **kwargs):
        raise RuntimeError("disk full")

    monkeypatch.setattr(generate, "_tinyimagenet", broken)
    with pytest.raises(RuntimeError):
        generate.write_synthetic(tmp_path / "half", "multiclass", n=20, size=8, format="tinyimagenet")
    assert sorted(p.name for p in tmp_path.iterdir()) == ["mine"]
    with pytest.raises(CvtoolError, match="format folder, not csv"):
        generate.write_synthetic(tmp_path / "x", "binary", format="csv")


def test_synthetic_content_matches_labels(synthetic) -> None:
    """Learnable: colour alone separates the classes, tags are visible, marks sit on the points."""
    info = synthetic("multiclass", "folder")
    data = read_dataset(config(info), "multiclass", seed=0)
    colours = np.array([generate.SHAPES[name] for name in data.class_names], np.float64)
    for path, target in zip(data.splits["val"].paths, data.splits["val"].targets, strict=True):
        pixels = np.asarray(Image.open(path).convert("RGB"), np.float64).reshape(-1, 3)
        bright = pixels[pixels.max(axis=1) > 120]
        assert np.linalg.norm(colours - bright.mean(axis=0), axis=1).argmin() == target
    kp = synthetic("keypoints")
    kp_data = read_dataset(config(kp), "keypoints", seed=0)
    train = kp_data.splits["train"]
    for path, target in zip(train.paths[:20], train.targets[:20], strict=True):
        if path.suffix == ".png":
            pixels = np.asarray(Image.open(path).convert("RGB"))
            for point, colour in enumerate(generate.POINT_COLOURS):
                x, y = int(target[2 * point]), int(target[2 * point + 1])  # pixel centres x.5
                np.testing.assert_array_equal(pixels[y, x], colour)


def test_cli_writes_datasets_and_prints_a_recipe(tmp_path: Path) -> None:
    runner = CliRunner()
    result = runner.invoke(app, ["data", "synthetic", str(tmp_path / "kp"), "--task", "keypoints",
                                 "--n", "24", "--size", "12", "--seed", "1"])
    assert result.exit_code == 0, result.output
    output = ANSI.sub("", result.output)
    snippet = yaml.safe_load(output.split("recipe snippet:")[1])
    assert snippet["task"] == "keypoints" and snippet["data"]["target_prefix"] == "Point_"
    recipe = recipe_from_dict({"name": "kp", **snippet})
    assert len(read_dataset(recipe.data, recipe.task, seed=0).splits["train"]) > 10
    result = runner.invoke(app, ["data", "digits", str(tmp_path / "digits")])
    assert result.exit_code == 0 and "10 classes: 0, 1, 2" in ANSI.sub("", result.output)
    assert sum(1 for _ in (tmp_path / "digits").rglob("*.png")) == 1797
    result = runner.invoke(app, ["data", "synthetic", str(tmp_path / "x"), "--task", "segmentation"])
    assert result.exit_code == 2 and "unknown task" in result.output


def test_tab_separated_keypoints_read_like_the_csv(synthetic, tmp_path: Path) -> None:
    """MADE's landmarks file is tab-separated: the delimiter is detected from the header."""
    import shutil

    from cvtool.data.formats import read_dataset
    from cvtool.recipe.schema import DataConfig

    data = synthetic("keypoints", n=40, size=16)
    root = tmp_path / "tsv"
    shutil.copytree(data["root"], root)
    for split in ("train", "val", "test"):
        text = (root / f"{split}.csv").read_text()
        (root / f"{split}.csv").write_text(text.replace(",", "\t"))
    cfg = {**data["data"], "root": str(data["root"])}
    expected = read_dataset(DataConfig(**cfg), "keypoints", 0)
    got = read_dataset(DataConfig(**{**cfg, "root": str(root)}), "keypoints", 0)
    assert got.target_names == expected.target_names
    np.testing.assert_array_equal(got.splits["train"].targets, expected.splits["train"].targets)
    assert [p.name for p in got.splits["val"].paths] == [p.name for p in expected.splits["val"].paths]
