"""`cvtool doctor`: planted duplicates across splits (exact, re-encoded, resized), planted quality
outliers, planted label flips ranked by confident learning, `--fix` and `data.exclude`."""

from __future__ import annotations

import io
import json
import shutil
import sys
from pathlib import Path

import numpy as np
import pytest
from conftest import one_line_error, snapshot, write_recipe
from PIL import Image, ImageDraw, ImageFilter
from typer.testing import CliRunner

from cvtool.cli.main import app
from cvtool.data.formats import read_dataset
from cvtool.errors import CvtoolError
from cvtool.recipe.schema import DataConfig
from cvtool.tasks import get_task

runner = CliRunner()
CLASSES = ("a", "b", "c")
SIZE = 64


def natural(rng: np.random.Generator, size: int = SIZE) -> Image.Image:
    """A smooth colour field with three shapes and pixel noise: unrelated images look unrelated."""
    img = Image.fromarray(rng.integers(0, 256, (4, 4, 3), dtype=np.uint8)).resize((size, size), Image.BICUBIC)
    draw = ImageDraw.Draw(img)
    for _ in range(3):
        x0, y0 = (int(v) for v in rng.integers(0, size - 8, 2))
        side = int(rng.integers(8, size // 2))
        colour = tuple(int(v) for v in rng.integers(0, 256, 3))
        (draw.ellipse if rng.random() < 0.5 else draw.rectangle)((x0, y0, x0 + side, y0 + side), fill=colour)
    noisy = np.asarray(img).astype(np.int16) + rng.integers(-12, 13, (size, size, 3))
    return Image.fromarray(np.clip(noisy, 0, 255).astype(np.uint8))


def jpeg(img: Image.Image, quality: int, size: int | None = None) -> bytes:
    if size is not None:
        img = img.resize((size, size), Image.BICUBIC)
    buffer = io.BytesIO()
    img.save(buffer, format="JPEG", quality=quality)
    return buffer.getvalue()


def planted_dataset(root: Path) -> tuple[list[tuple[str, str]], dict[str, str]]:
    """A folder dataset of distinct images with 20 planted train<->val/test copies (7 exact, 7
    re-encoded JPEG, 6 resized + JPEG) and 6 planted quality outliers in train.
    Returns the planted pairs (relative names) and {outlier name: expected issue}."""
    rng = np.random.default_rng(7)
    counts = {"train": 120, "val": 30, "test": 40}
    names: dict[str, list[str]] = {}
    for split, count in counts.items():
        names[split] = []
        for index in range(count):
            label = CLASSES[index % 3]
            folder = root / split / label
            folder.mkdir(parents=True, exist_ok=True)
            natural(rng).save(folder / f"{split}{index:03d}.png")
            names[split].append(f"{split}/{label}/{split}{index:03d}.png")
    pairs = []
    for k in range(20):
        source = names["train"][k * 5]
        split = "test" if k % 2 == 0 else "val"
        label = source.split("/")[1]
        target = f"{split}/{label}/copy{k:02d}" + (".png" if k < 7 else ".jpg")
        if k < 7:
            shutil.copyfile(root / source, root / target)
        else:
            img = Image.open(root / source).convert("RGB")
            size = None if k < 14 else (48 if k % 2 else 96)
            (root / target).write_bytes(jpeg(img, quality=int(rng.integers(55, 85)), size=size))
        pairs.append((source, target))
    blurred = Image.open(root / names["train"][1]).filter(ImageFilter.GaussianBlur(4))
    outliers = {"black": (Image.new("RGB", (SIZE, SIZE)), "near-constant"),
                "dim": (Image.fromarray((np.asarray(natural(rng)) * 0.12).astype(np.uint8)), "dark"),
                "glare": (Image.fromarray(255 - (np.asarray(natural(rng)) * 0.12).astype(np.uint8)), "bright"),
                "blurred": (blurred, "blurry"), "strip": (natural(rng).resize((SIZE * 4, SIZE // 4)), "extreme aspect ratio"),
                "speck": (natural(rng).resize((12, 12)), "tiny")}
    expected = {}
    for stem, (img, issue) in outliers.items():
        img.save(root / "train" / "a" / f"{stem}.png")
        expected[f"train/a/{stem}.png"] = issue
    return pairs, expected


@pytest.fixture(scope="module")
def doctored(tmp_path_factory: pytest.TempPathFactory) -> dict:
    """The planted dataset, `cvtool doctor --fix` run once on it."""
    tmp = tmp_path_factory.mktemp("doctor")
    root = tmp / "data"
    pairs, outliers = planted_dataset(root)
    recipe = write_recipe(tmp, root, data={"image_size": 32, "test": "test"})
    before = snapshot(root)
    result = runner.invoke(app, ["doctor", str(root), "--recipe", str(recipe), "--out", str(tmp / "out"), "--fix"])
    assert result.exit_code == 0, result.output
    report = json.loads((tmp / "out" / "doctor.json").read_text())
    return {"tmp": tmp, "root": root, "pairs": pairs, "outliers": outliers, "report": report, "recipe": recipe,
            "output": result.output, "unchanged": snapshot(root) == before}


def test_planted_duplicates_across_splits_are_found_without_false_groups(doctored: dict) -> None:
    groups = [{image["image"] for image in group["images"]} for group in doctored["report"]["duplicates"]["groups"]]
    found = sum(any({a, b} <= group for group in groups) for a, b in doctored["pairs"])
    assert found / len(doctored["pairs"]) >= 0.95, (found, groups)
    planted = [set(pair) for pair in doctored["pairs"]]
    assert all(group in planted for group in groups), [g for g in groups if g not in planted]
    leaking = [group for group in doctored["report"]["duplicates"]["groups"] if group["leaks"]]
    assert len(leaking) == len(groups) == 20
    assert sum(group["exact"] for group in leaking) == 7
    assert "20 of them across splits" in doctored["output"]


def test_quality_outliers_are_flagged_with_their_issue_and_nothing_else(doctored: dict) -> None:
    flagged: dict[str, set[str]] = {}
    for issue in doctored["report"]["quality"]:
        flagged.setdefault(issue["image"], set()).add(issue["issue"])
    for name, issue in doctored["outliers"].items():
        assert issue in flagged.get(name, set()), (name, flagged.get(name))
    assert set(flagged) == set(doctored["outliers"]), set(flagged) - set(doctored["outliers"])


def test_fix_writes_an_exclude_list_that_the_recipe_applies_and_the_data_is_untouched(doctored: dict) -> None:
    assert doctored["unchanged"]
    exclude = doctored["tmp"] / "out" / "exclude.txt"
    listed = [line for line in exclude.read_text().splitlines() if line and not line.startswith("#")]
    assert sorted(listed) == sorted(source for source, _ in doctored["pairs"])  # the held-out copies stay
    cfg = DataConfig(root=doctored["root"], test="test", exclude=exclude)
    info = read_dataset(cfg, "multiclass", 0)
    assert len(info.splits["train"]) == 126 - 20 and len(info.splits["test"]) == 50
    report_files = {p.name for p in (doctored["tmp"] / "out").iterdir()}
    assert {"doctor.md", "doctor.html", "doctor.json", "doctor_files"} <= report_files
    assert "data:image/png;base64," in (doctored["tmp"] / "out" / "doctor.html").read_text()


def test_a_missing_exclude_file_is_one_line(tmp_path: Path, synthetic) -> None:
    data = synthetic("multiclass")
    with pytest.raises(CvtoolError, match="data.exclude: file not found"):
        read_dataset(DataConfig(**{**data["data"], "exclude": tmp_path / "none.txt"}), "multiclass", 0)


def test_group_csv_for_kfold_marks_duplicates_with_one_group(tmp_path: Path, synthetic) -> None:
    data = synthetic("multiclass", format="csv", n=60)
    root = tmp_path / "data"
    shutil.copytree(data["root"], root)
    first = (root / "train.csv").read_text().splitlines()[1].split(",")[0]
    shutil.copyfile(root / "images" / first, root / "images" / "again.png")
    with (root / "train.csv").open("a") as handle:
        handle.write(f"again.png,{(root / 'train.csv').read_text().splitlines()[1].split(',')[1]}\n")
    recipe = write_recipe(tmp_path, {**data, "data": {**data["data"], "root": str(root)}})
    result = runner.invoke(app, ["doctor", str(root), "-r", str(recipe), "-o", str(tmp_path / "out"), "--fix"])
    assert result.exit_code == 0, result.output
    rows = [line.split(",") for line in (tmp_path / "out" / "train.csv").read_text().splitlines()]
    assert rows[0][-1] == "doctor_group"
    group = {row[0]: row[-1] for row in rows[1:]}
    assert group[first] == group["again.png"] and len(set(group.values())) == len(group) - 1
    cfg = DataConfig(**{**data["data"], "root": root, "train": str((tmp_path / "out" / "train.csv").resolve()),
                        "folds": {"k": 3, "group_column": "doctor_group"}})
    from cvtool.data.folds import assign_folds

    split = read_dataset(cfg, "multiclass", 0).splits["train"]
    folds = dict(zip((p.name for p in split.paths), assign_folds(split, cfg, "multiclass", 0), strict=True))
    assert folds[first] == folds["again.png"]


def flip(labels: np.ndarray, rng: np.random.Generator, classes: int) -> np.ndarray:
    """5 % of the labels changed to another class; returns the flipped rows."""
    rows = rng.choice(len(labels), size=round(0.05 * len(labels)), replace=False)
    labels[rows] = (labels[rows] + rng.integers(1, classes, len(rows))) % classes
    return rows


def top_tenth_share(scores: np.ndarray, planted: np.ndarray) -> float:
    top = np.argsort(scores, kind="stable")[: round(0.1 * len(scores))]
    return len(set(top.tolist()) & set(planted.tolist())) / len(planted)


def pixel_features(synthetic, task: str) -> tuple[np.ndarray, np.ndarray]:
    from cvtool.data.images import decode

    data = synthetic(task, n=400, size=16, seed=5)
    split = read_dataset(DataConfig(**data["data"]), task, 0).splits["train"]
    features = np.stack([decode(p, 3, 8)[0].reshape(-1) for p in split.paths]).astype(np.float64) / 255.0
    return features, np.asarray(split.targets).copy()


def test_confident_learning_ranks_flipped_classes_in_the_top_tenth(synthetic) -> None:
    """OOF probabilities of a scikit-learn model on pixel features, 5 % of labels flipped."""
    from sklearn.linear_model import LogisticRegression
    from sklearn.model_selection import cross_val_predict

    features, labels = pixel_features(synthetic, "multiclass")
    planted = flip(labels, np.random.default_rng(0), 4)
    probs = cross_val_predict(LogisticRegression(C=1.0, max_iter=500), features, labels, cv=5, method="predict_proba")
    scores, flagged = get_task("multiclass").label_issues(labels, probs)
    assert top_tenth_share(scores, planted) >= 0.6
    assert flagged[planted].mean() >= 0.6 and flagged.sum() <= 3 * len(planted)


def test_confident_learning_ranks_flipped_tags_in_the_top_tenth(synthetic) -> None:
    from sklearn.linear_model import LogisticRegression
    from sklearn.model_selection import cross_val_predict
    from sklearn.multiclass import OneVsRestClassifier

    features, tags = pixel_features(synthetic, "multilabel")
    rng = np.random.default_rng(1)
    planted = rng.choice(len(tags), size=round(0.05 * len(tags)), replace=False)
    columns = rng.integers(0, tags.shape[1], len(planted))
    tags[planted, columns] = 1.0 - tags[planted, columns]  # one tag added or dropped per image
    model = OneVsRestClassifier(LogisticRegression(C=1.0, max_iter=500))
    probs = cross_val_predict(model, features, tags.astype(int), cv=5, method="predict_proba")
    scores, _ = get_task("multilabel").label_issues(tags, probs)
    assert top_tenth_share(scores, planted) >= 0.6


def test_doctor_without_the_extra_is_one_line(tmp_path: Path, synthetic, monkeypatch) -> None:
    data = synthetic("multiclass")
    monkeypatch.setitem(sys.modules, "imagehash", None)  # `import imagehash` raises ImportError
    recipe = write_recipe(tmp_path, data)
    line = one_line_error(runner.invoke(app, ["doctor", data["root"], "-r", str(recipe), "-o", str(tmp_path / "o")]))
    assert 'pip install "cvtool[doctor]"' in line
    line = one_line_error(runner.invoke(app, ["doctor", data["root"], "-o", str(tmp_path / "o")]))
    assert "--recipe" in line


@pytest.mark.slow
def test_doctor_oof_ranks_the_flipped_labels_of_a_fold_set(tmp_path: Path, tmp_path_factory) -> None:
    """End to end: `cvtool train --fold all` on data with 5 % flipped labels, then `doctor --oof`."""
    from conftest import flipped_fold_set

    folds = flipped_fold_set(tmp_path_factory)
    result = runner.invoke(app, ["doctor", str(folds["root"]), "--oof", str(folds["run"]), "-o", str(tmp_path)])
    assert result.exit_code == 0, result.output
    ranking = json.loads((tmp_path / "doctor.json").read_text())["labels"]["ranking"]
    top = {Path(row["image"]).name for row in ranking[: round(0.1 * len(ranking))]}
    assert len(top & set(folds["flipped"])) / len(folds["flipped"]) >= 0.6
    first = ranking[0]
    assert first["given"] != first["suggested"] and first["flagged"]
    assert "likely label errors" in result.output and "Label issues" in (tmp_path / "doctor.md").read_text()
