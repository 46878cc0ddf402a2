"""`cvtool bench`: each command runs on tiny fixtures and prints its rows with targets. Speeds are
never asserted here (they live in `make bench`); only that the figures are produced."""

from __future__ import annotations

import json
from collections.abc import Callable
from pathlib import Path

import numpy as np
import pytest
from conftest import dataset, onnx_file, trained_run
from typer.testing import CliRunner

from cvtool.bench.startup import predict_imports_torch
from cvtool.cli.main import app

runner = CliRunner()
FLIP_AFFINE = [{"RandomHorizontalFlip": {"p": 0.5}},
               {"RandomAffine": {"degrees": 10, "translate": [0.1, 0.1], "scale": [0.9, 1.1]}}]


def rows(output: str) -> list[list[str]]:
    """The table's rows as cells (rich box characters stripped)."""
    return [[cell.strip() for cell in line.split("│")[1:-1]] for line in output.splitlines() if line.startswith("│")]


@pytest.mark.parametrize("on_device", ["false", "true"])
def test_bench_train_prints_loader_ceiling_and_ratio(on_device: str, synthetic, make_recipe, tmp_path: Path) -> None:
    recipe = make_recipe(tmp_path, synthetic("multiclass", n=80, size=16), data={"batch_size": 8},
                         augment=FLIP_AFFINE)
    result = runner.invoke(app, ["bench", "train", str(recipe), "--steps", "2", "--warmup", "1", "--rounds", "1",
                                 "--target", "0.9", "--set", "seed=3", "--set", f"data.on_device={on_device}",
                                 "--json", str(tmp_path / "bench.json")])
    assert result.exit_code == 0, result.output
    saved = json.loads((tmp_path / "bench.json").read_text())
    assert [f["name"] for f in saved["figures"]] == ["real loader", "compute ceiling (one fixed batch)",
                                                     "real loader / ceiling", "device-resident training split"]
    assert saved["figures"][3]["measured"] is (on_device == "true")  # which path was measured
    assert saved["notes"][0].startswith("data path: " + ("the training split kept on the device" if on_device == "true"
                                                         else "DataLoader (0 workers)"))
    assert saved["figures"][2]["target"] == 0.9 and saved["figures"][0]["unit"] == "images/s"
    table = {row[0]: row[1:] for row in rows(result.output)}
    assert table["real loader"][0].endswith("images/s")
    assert table["compute ceiling (one fixed batch)"][0].endswith("images/s")
    ratio, target, verdict = table["real loader / ceiling"]
    assert ratio.endswith("×") and target == "≥ 0.900×" and verdict in ("pass", "miss")
    assert "machine:" in result.output


def test_bench_train_refuses_a_warmup_longer_than_an_epoch(synthetic, make_recipe, tmp_path: Path) -> None:
    recipe = make_recipe(tmp_path, synthetic("multiclass", n=80, size=16), data={"batch_size": 16})
    result = runner.invoke(app, ["bench", "train", str(recipe), "--warmup", "50"])
    assert result.exit_code == 2 and "leaves none to time" in result.output


@pytest.mark.slow
def test_bench_predict_prints_every_inference_figure(tmp_path_factory: pytest.TempPathFactory,
                                                     synthetic: Callable[..., dict]) -> None:
    model = onnx_file(tmp_path_factory, synthetic, "multiclass")
    images = Path(dataset(synthetic, "multiclass")["root"]) / "test"
    result = runner.invoke(app, ["bench", "predict", str(model), "--images", str(images), "--batch-size", "4",
                                 "--repeats", "2", "--passes", "2", "--tta-images", "8"])
    assert result.exit_code == 0, result.output
    table = {row[0]: row[1:] for row in rows(result.output)}
    assert table["onnxruntime / torch eager"][1] == "≥ 1.000×"
    assert table["end-to-end / bare session"][1] == "≥ 0.800×"
    assert table["TTA 2 passes / 2 plain"][1] == "≤ 1.100×"
    for name in ("onnxruntime", "torch eager", "bare session.run", "end-to-end predict, files -> CSV",
                 "plain pass (torch)"):
        assert table[name][0].endswith("images/s")


def test_bench_predict_needs_the_checkpoint_behind_an_onnx(tmp_path: Path) -> None:
    from cvtool.bench.startup import tiny_onnx

    model, images = tiny_onnx(tmp_path)
    result = runner.invoke(app, ["bench", "predict", str(model), "--images", str(images)])
    assert result.exit_code == 2 and "give the run directory instead" in result.output


def test_bench_startup_prints_help_time_and_torch_check() -> None:
    result = runner.invoke(app, ["bench", "startup", "--runs", "1", "--no-train"])
    assert result.exit_code == 0, result.output
    table = {row[0]: row[1:] for row in rows(result.output)}
    assert table["cvtool --help"][0].endswith(" s") and table["cvtool --help"][1] == "≤ 0.300 s"
    assert table["predict .onnx imports torch"] == ["no", "no", "pass"]
    assert not any(name.startswith("train") for name in table)


@pytest.mark.slow
def test_bench_startup_times_a_fresh_and_a_cached_train_to_the_first_step(synthetic, make_recipe,
                                                                          tmp_path: Path) -> None:
    recipe = make_recipe(tmp_path, synthetic("multiclass", n=40, size=16), train={"epochs": 1})
    result = runner.invoke(app, ["bench", "startup", "--runs", "1", "--recipe", str(recipe),
                                 "--json", str(tmp_path / "startup.json")])
    assert result.exit_code == 0, result.output
    saved = {f["name"]: f for f in json.loads((tmp_path / "startup.json").read_text())["figures"]}
    fresh, cached = saved["train, fresh: start to first step"], saved["train, cached: start to first step"]
    assert 0 < saved["train, cached: fit to first step"]["measured"] < cached["measured"]
    assert fresh["measured"] > 0 and saved["train: last step to exit"]["measured"] > 0
    assert saved["train, cached: fit to first step"]["target"] == 1.0


def test_the_torch_probe_sees_torch_on_the_checkpoint_path(tmp_path_factory: pytest.TempPathFactory,
                                                          synthetic: Callable[..., dict]) -> None:
    run = trained_run(tmp_path_factory, synthetic, "multiclass")
    images = Path(dataset(synthetic, "multiclass")["root"]) / "test"
    assert "torch" in predict_imports_torch(run, images)


@pytest.mark.parametrize("channels, mean, std", [(3, [0.485, 0.456, 0.406], [0.229, 0.224, 0.225]), (1, [0.13], [0.31])])
def test_fast_normalization_equals_the_obvious_formula_bit_for_bit(channels, mean, std) -> None:
    from cvtool.data.images import normalize_batch

    batch = np.random.default_rng(1).integers(0, 256, (5, 9, 7, channels), np.uint8)
    x = batch.astype(np.float32) / np.float32(255.0)
    expected = np.ascontiguousarray(((x - np.asarray(mean, np.float32)) / np.asarray(std, np.float32)).transpose(0, 3, 1, 2))
    assert np.array_equal(normalize_batch(batch, mean, std).view(np.uint32), expected.view(np.uint32))
