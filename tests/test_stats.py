"""`cvtool stats` and cvtool.data.stats: numbers checked against independent numpy computations,
class weights, unreadable files, and `normalize: auto | imagenet | none | {mean, std}`."""

from __future__ import annotations

import csv
import json
import shutil
from collections import Counter
from pathlib import Path

import numpy as np
import pytest
from PIL import Image
from typer.testing import CliRunner

from cvtool.cli.main import app
from cvtool.data import stats
from cvtool.data.generate import write_synthetic
from cvtool.data.stats import (
    STATS_FILE,
    class_weights,
    compute_stats,
    pos_weight,
    resolve_normalization,
    stats_fit,
)
from cvtool.errors import CvtoolError
from cvtool.recipe.schema import DataConfig
from cvtool.runs.recipes import load_recipe

runner = CliRunner()


def run_stats(*args: str) -> dict:
    """`cvtool stats ARGS -q --out FILE` -> the JSON it wrote (the command must succeed)."""
    out = Path(args[0]).parent / f"{Path(args[0]).name}-stats-{abs(hash(args))}.json"
    result = runner.invoke(app, ["stats", *args, "-q", "--out", str(out)])
    assert result.exit_code == 0, result.output
    return json.loads(out.read_text())


def numpy_stats(paths: list[Path], mode: str, size: int | None = None) -> tuple[np.ndarray, np.ndarray]:
    """Per-channel mean and std of all pixels of `paths`, in [0, 1] units (all images in memory)."""
    arrays = []
    for path in paths:
        img = Image.open(path).convert(mode)
        if size is not None:
            img = img.resize((size, size), Image.BILINEAR)
        arr = np.asarray(img, np.float64) / 255.0
        arrays.append(arr.reshape(-1, 1 if arr.ndim == 2 else arr.shape[2]))
    pixels = np.concatenate(arrays)
    return pixels.mean(axis=0), pixels.std(axis=0)


def test_digits_stats_match_numpy(digits_dir: Path) -> None:
    train_paths = sorted((digits_dir / "train").rglob("*.png"))
    mean, std = numpy_stats(train_paths, "L")
    grey = run_stats(str(digits_dir), "--channels", "1")
    assert grey["channels"]["images"] == len(train_paths) and grey["channels"]["pixels"] == 64 * len(train_paths)
    np.testing.assert_allclose(grey["channels"]["mean"], mean, atol=1e-4)
    np.testing.assert_allclose(grey["channels"]["std"], std, atol=1e-4)
    rgb = run_stats(str(digits_dir))  # default 3 channels: the grey values three times
    np.testing.assert_allclose(rgb["channels"]["mean"], np.repeat(mean, 3), atol=1e-4)
    np.testing.assert_allclose(rgb["channels"]["std"], np.repeat(std, 3), atol=1e-4)
    mean16, std16 = numpy_stats(train_paths, "L", size=16)
    resized = run_stats(str(digits_dir), "--channels", "1", "--image-size", "16")
    np.testing.assert_allclose(resized["channels"]["mean"], mean16, atol=1e-4)
    np.testing.assert_allclose(resized["channels"]["std"], std16, atol=1e-4)
    assert resized["computed_for"]["image_size"] == 16 and grey["computed_for"]["image_size"] is None


def test_digits_counts_and_class_weights(digits_dir: Path) -> None:
    result = run_stats(str(digits_dir), "--channels", "1")
    on_disk = {split: Counter(p.parent.name for p in (digits_dir / split).rglob("*.png"))
               for split in ("train", "val", "test")}
    assert result["splits"] == {split: sum(c.values()) for split, c in on_disk.items()}
    classes = result["classes"]
    assert classes["names"] == [str(d) for d in range(10)]
    counts = np.array([on_disk["train"][str(d)] for d in range(10)])
    assert classes["counts"]["train"] == counts.tolist()
    assert classes["counts"]["val"] == [on_disk["val"][str(d)] for d in range(10)]
    assert classes["imbalance_ratio"] == pytest.approx(counts.max() / counts.min())
    inverse = counts.sum() / (10 * counts)  # scikit-learn's "balanced"
    from sklearn.utils.class_weight import compute_class_weight

    labels = np.repeat(np.arange(10), counts)
    np.testing.assert_allclose(inverse, compute_class_weight("balanced", classes=np.arange(10), y=labels))
    np.testing.assert_allclose(classes["weights"]["inverse"], inverse)
    np.testing.assert_allclose(classes["weights"]["sqrt_inverse"], np.sqrt(inverse) / np.sqrt(inverse).mean())
    assert result["sizes"]["train"] == {"8x8": int(counts.sum())} and result["modes"]["test"] == {"L": 269}
    assert result["unreadable"] == []


def test_class_weight_and_pos_weight_functions() -> None:
    counts = np.array([10, 30, 60])
    np.testing.assert_allclose(class_weights(counts, 100, "inverse"), [100 / 30, 100 / 90, 100 / 180])
    root = class_weights(counts, 100, "sqrt_inverse")
    assert root.mean() == pytest.approx(1.0) and root[0] / root[2] == pytest.approx(np.sqrt(6))
    assert class_weights(counts, 100, "none") is None
    assert np.isfinite(class_weights(np.array([0, 5]), 5, "inverse")).all()
    with pytest.raises(CvtoolError, match="unknown mode"):
        class_weights(counts, 100, "balanced")
    assert pos_weight(np.array([0, 0, 0, 1])) == 3.0
    assert pos_weight(np.array([[1.0, 0.0], [0.0, 0.0]])) == 3.0
    with pytest.raises(CvtoolError, match="0 positive"):
        pos_weight(np.zeros(4))


def test_task_specific_stats(synthetic) -> None:
    binary = synthetic("binary")
    result = compute_stats(DataConfig(**binary["data"]), "binary", 0, None, False)
    negatives, positives = (len(list((Path(binary["root"]) / "train" / c).iterdir())) for c in ("clear", "spot"))
    assert result["classes"]["counts"]["train"] == [negatives, positives]
    assert result["classes"]["pos_weight"] == pytest.approx(negatives / positives)

    multilabel = synthetic("multilabel")
    result = compute_stats(DataConfig(**multilabel["data"]), "multilabel", 0, 12, False)
    with (Path(multilabel["root"]) / "train.csv").open() as handle:
        tags = Counter(tag for row in csv.DictReader(handle) for tag in row["tags"].split())
    assert result["classes"]["count_of"] == "positives"
    assert result["classes"]["counts"]["train"] == [tags[name] for name in result["classes"]["names"]]
    assert result["classes"]["imbalance_ratio"] == pytest.approx(max(tags.values()) / min(tags.values()))

    keypoints = synthetic("keypoints")
    result = compute_stats(DataConfig(**keypoints["data"]), "keypoints", 0, None, False)
    with (Path(keypoints["root"]) / "train.csv").open() as handle:
        rows = list(csv.DictReader(handle))
    assert [t["name"] for t in result["targets"]] == keypoints["targets"]
    for target in result["targets"]:
        values = np.array([float(row[target["name"]]) for row in rows])
        assert (target["min"], target["max"]) == (values.min(), values.max())
        assert target["mean"] == pytest.approx(values.mean())
    assert "classes" not in result and len(result["sizes"]["train"]) > 1  # varying sizes


def test_parallel_and_inline_agree(synthetic) -> None:
    cfg = DataConfig(**synthetic("multiclass", "tinyimagenet")["data"])
    inline = compute_stats(cfg, "multiclass", 0, 10, False, workers=1)
    parallel = compute_stats(cfg, "multiclass", 0, 10, True, workers=2)
    assert inline == parallel


def test_unreadable_files_are_listed_with_reasons(synthetic, tmp_path: Path) -> None:
    root = tmp_path / "data"
    shutil.copytree(synthetic("multiclass", "folder")["root"], root)
    (root / "train/circle/empty.png").write_bytes(b"")
    (root / "train/square/notes.jpg").write_text("not an image")
    good = next((root / "val/cross").glob("*.png"))
    (root / "val/cross/cut.png").write_bytes(good.read_bytes()[:80])
    result = runner.invoke(app, ["stats", str(root), "-q"])
    assert result.exit_code == 0, result.output
    assert "unreadable files" in result.output and "empty file" in result.output
    saved = json.loads((root / STATS_FILE).read_text())  # default place: the data root
    bad = {row["path"]: row for row in saved["unreadable"]}
    assert set(bad) == {"train/circle/empty.png", "train/square/notes.jpg", "val/cross/cut.png"}
    assert bad["train/circle/empty.png"]["reason"] == "empty file"
    assert bad["train/square/notes.jpg"]["reason"] == "not a recognised image format"
    assert bad["val/cross/cut.png"]["split"] == "val" and bad["val/cross/cut.png"]["reason"]
    assert saved["channels"]["images"] == saved["splits"]["train"] - 2


@pytest.mark.parametrize("args, message", [
    (["--image-size", "big"], "--image-size big"),
    (["--image-size", "0"], "--image-size 0"),
    (["--format", "parquet"], "--format parquet"),
    (["--channels", "2"], "--channels 2"),
    (["--task", "segmentation"], "unknown task 'segmentation'"),
    (["--recipe", "missing.yaml"], "recipe file not found"),
    (["--format", "csv"], "CSV file not found"),
])
def test_bad_input_is_one_line_and_exit_2(synthetic, args: list[str], message: str) -> None:
    result = runner.invoke(app, ["stats", synthetic("multiclass", "folder")["root"], *args])
    assert result.exit_code == 2
    assert message in result.output and len(result.output.strip().splitlines()) == 1


def test_missing_data_root(tmp_path: Path) -> None:
    result = runner.invoke(app, ["stats", str(tmp_path / "nowhere")])
    assert result.exit_code == 2 and "folder not found" in result.output


def test_recipe_settings_and_data_override(synthetic, make_recipe, tmp_path: Path) -> None:
    info = synthetic("multilabel")
    recipe = make_recipe(tmp_path, info, data={"root": str(tmp_path / "elsewhere"), "image_size": 10})
    result = runner.invoke(app, ["stats", info["root"], "--recipe", str(recipe), "--out", str(tmp_path / "s.json")])
    assert result.exit_code == 0, result.output
    saved = json.loads((tmp_path / "s.json").read_text())
    assert saved["computed_for"]["image_size"] == 10 and saved["computed_for"]["format"] == "csv"
    assert saved["computed_for"]["task"] == "multilabel" and saved["computed_for"]["root"] == info["root"]


def test_normalize_auto_creates_then_reuses(tmp_path: Path, monkeypatch) -> None:
    info = write_synthetic(tmp_path / "data", "multiclass", n=40, size=12)
    cfg = DataConfig(**{**info["data"], "normalize": "auto", "image_size": 12})
    mean, std = resolve_normalization(cfg, "multiclass", 0)
    saved = json.loads((tmp_path / "data" / STATS_FILE).read_text())
    made_for = saved["computed_for"]
    assert (made_for["channels"], made_for["image_size"], made_for["train"]) == (3, 12, "train")
    assert saved["splits"] == {"train": info["splits"]["train"]}  # on demand: train split only
    paths = read_train_paths(cfg)
    expected_mean, expected_std = numpy_stats(paths, "RGB")  # native 12 px == image_size
    np.testing.assert_allclose(mean, expected_mean, atol=1e-4)
    np.testing.assert_allclose(std, expected_std, atol=1e-4)

    def no_compute(*args, **kwargs):
        raise AssertionError("the stats file should have been reused")

    monkeypatch.setattr(stats, "compute_stats", no_compute)
    assert resolve_normalization(cfg, "multiclass", 0) == (mean, std)
    monkeypatch.undo()
    grey = cfg.model_copy(update={"channels": 1})
    grey_mean, _ = resolve_normalization(grey, "multiclass", 0)  # another channel count: recomputed
    assert len(grey_mean) == 1
    assert json.loads((tmp_path / "data" / STATS_FILE).read_text())["computed_for"]["channels"] == 1


def read_train_paths(cfg: DataConfig) -> list[Path]:
    from cvtool.data.formats import read_dataset

    return read_dataset(cfg, "multiclass", 0).splits["train"].paths


def test_auto_reuses_what_cvtool_stats_wrote(tmp_path: Path, make_recipe, monkeypatch) -> None:
    info = write_synthetic(tmp_path / "data", "binary", n=40, size=12)
    recipe_path = make_recipe(tmp_path, info, data={"normalize": "auto", "image_size": 12})
    assert runner.invoke(app, ["stats", info["root"], "-q"]).exit_code == 0  # native size == 12 px
    monkeypatch.setattr(stats, "compute_stats", lambda *a, **k: pytest.fail("recomputed"))
    recipe = load_recipe(recipe_path)
    mean, _ = resolve_normalization(recipe.data, recipe.task, recipe.seed)
    assert mean == json.loads((tmp_path / "data" / STATS_FILE).read_text())["channels"]["mean"]


def test_stats_fit_checks_what_the_file_was_computed_for(synthetic) -> None:
    from cvtool.data.formats import read_dataset

    cfg = DataConfig(**{**synthetic("multiclass", "csv")["data"], "image_size": 10})
    result = compute_stats(cfg, "multiclass", 0, 10, False, splits=("train",))
    train = read_dataset(cfg, "multiclass", 0).splits["train"]
    assert stats_fit(result, cfg, "multiclass", 0, train)
    assert not stats_fit(result, cfg, "multiclass", 0, train.subset(np.arange(len(train) - 1), "train"))
    for change in ({"channels": 1}, {"image_size": 12}, {"train": "val"}, {"val_fraction": 0.2},
                   {"images_dir": "other"}):
        assert not stats_fit(result, cfg.model_copy(update=change), "multiclass", 0, train)
    split = cfg.model_copy(update={"val": None, "val_fraction": 0.2})
    seeded = compute_stats(split, "multiclass", 1, 10, False, splits=("train",))
    drawn = read_dataset(split, "multiclass", 1).splits["train"]
    assert stats_fit(seeded, split, "multiclass", 1, drawn) and not stats_fit(seeded, split, "multiclass", 2, drawn)


def test_auto_recomputes_when_images_change_but_their_count_does_not(tmp_path: Path) -> None:
    import os

    info = write_synthetic(tmp_path / "data", "multiclass", n=40, size=12)
    cfg = DataConfig(**{**info["data"], "normalize": "auto", "image_size": 12})
    first, _ = resolve_normalization(cfg, "multiclass", 0)
    paths = read_train_paths(cfg)
    for path in paths[: len(paths) // 2]:  # same names, same count, other pixels
        Image.new("RGB", (12, 12), (255, 255, 255)).save(path)
        stat = path.stat()
        os.utime(path, ns=(stat.st_atime_ns, stat.st_mtime_ns + 10**9))  # a clock too coarse: still newer
    mean, std = resolve_normalization(cfg, "multiclass", 0)
    expected_mean, expected_std = numpy_stats(paths, "RGB")
    np.testing.assert_allclose(mean, expected_mean, atol=1e-4)
    np.testing.assert_allclose(std, expected_std, atol=1e-4)
    assert not np.allclose(mean, first, atol=1e-3)


def test_a_fold_run_normalizes_with_its_own_training_part(tmp_path: Path, make_recipe) -> None:
    """The held-out fold must not leak into the statistics the fold run is normalized with."""
    import torch

    from cvtool.data.folds import assign_folds
    from cvtool.data.formats import read_dataset

    info = write_synthetic(tmp_path / "data", "multiclass", n=60, size=12)
    recipe = make_recipe(tmp_path, info, data={"normalize": "auto", "image_size": 12, "folds": {"k": 3}},
                         train={"epochs": 1, "device": "cpu", "max_batches": 1})
    result = runner.invoke(app, ["train", str(recipe), "--fold", "1", "--out", str(tmp_path / "folds"), "--quiet"])
    assert result.exit_code == 0, result.output
    cfg = load_recipe(recipe).data
    train = read_dataset(cfg, "multiclass", 0).splits["train"]
    kept = [p for p, fold in zip(train.paths, assign_folds(train, cfg, "multiclass", 0), strict=True) if fold != 1]
    expected_mean, expected_std = numpy_stats(kept, "RGB")
    meta = torch.load(tmp_path / "folds" / "fold_1" / "checkpoints" / "best.pt", weights_only=True)["meta"]
    np.testing.assert_allclose(meta["mean"], expected_mean, atol=1e-4)
    np.testing.assert_allclose(meta["std"], expected_std, atol=1e-4)
    whole, _ = numpy_stats(list(train.paths), "RGB")
    assert not np.allclose(meta["mean"], whole, atol=1e-5)  # the test can tell the two apart
    assert (tmp_path / "data" / "cvtool-stats.fold1.json").is_file()


@pytest.mark.parametrize("normalize, channels, expected", [
    ("imagenet", 3, ([0.485, 0.456, 0.406], [0.229, 0.224, 0.225])),
    ("imagenet", 1, ([(0.485 + 0.456 + 0.406) / 3], [(0.229 + 0.224 + 0.225) / 3])),
    ("none", 3, ([0.0] * 3, [1.0] * 3)),
    ("none", 1, ([0.0], [1.0])),
    ({"mean": [0.1, 0.2, 0.3], "std": [0.4, 0.5, 0.6]}, 3, ([0.1, 0.2, 0.3], [0.4, 0.5, 0.6])),
    ({"mean": [0.5], "std": [0.25]}, 3, ([0.5] * 3, [0.25] * 3)),
])
def test_fixed_normalizations(tmp_path: Path, normalize, channels: int, expected) -> None:
    cfg = DataConfig(root=tmp_path, normalize=normalize, channels=channels)
    mean, std = resolve_normalization(cfg, "multiclass", 0)
    np.testing.assert_allclose(mean, expected[0])
    np.testing.assert_allclose(std, expected[1])
    assert not (tmp_path / STATS_FILE).exists()


def test_explicit_normalization_must_fit_the_channels(tmp_path: Path) -> None:
    cfg = DataConfig(root=tmp_path, channels=1, normalize={"mean": [0.1, 0.2, 0.3], "std": [1, 1, 1]})
    with pytest.raises(CvtoolError, match="3 mean/std values for 1 channels"):
        resolve_normalization(cfg, "multiclass", 0)
