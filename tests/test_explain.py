"""`cvtool explain`: Grad-CAM heat on a planted object, the target layer of torchvision, timm and
cvtool's own nets, and the one-line errors."""

from __future__ import annotations

import csv
import sys
from pathlib import Path

import numpy as np
import pytest
import torch
from conftest import one_line_error, trained_run, write_recipe
from PIL import Image, ImageDraw
from typer.testing import CliRunner

from cvtool.cli.main import app
from cvtool.errors import CvtoolError
from cvtool.evaluation.explain import find_target_layer
from cvtool.models.calibration import TemperatureScaled

runner = CliRunner()
SIZE, SIDE = 32, 8


def planted(root: Path) -> dict[str, tuple[int, int, int, int]]:
    """Binary folder data: 'spot' images hold a red 8x8 square, 'clear' ones a blue one, both at a
    random place on noise. Returns each spot image's box (x0, y0, x1, y1) in pixels."""
    rng = np.random.default_rng(0)
    colours = {"spot": (230, 40, 40), "clear": (40, 60, 230)}
    boxes = {}
    for split, count in (("train", 160), ("val", 40), ("test", 20)):
        for index in range(count):
            label = ("spot", "clear")[index % 2]
            img = Image.fromarray(rng.integers(0, 90, (SIZE, SIZE, 3), dtype=np.uint8))
            x, y = (int(v) for v in rng.integers(0, SIZE - SIDE, 2))
            ImageDraw.Draw(img).rectangle((x, y, x + SIDE - 1, y + SIDE - 1), fill=colours[label])
            (root / split / label).mkdir(parents=True, exist_ok=True)
            img.save(root / split / label / f"{index}.png")
            boxes[f"{split}/{label}/{index}.png"] = (x, y, x + SIDE, y + SIDE)
    return boxes


@pytest.mark.slow
def test_the_heat_of_the_spot_class_lies_on_the_planted_object(tmp_path: Path) -> None:
    from cvtool.cli.launch import run_recipe
    from cvtool.runs.recipes import load_recipe

    boxes = planted(tmp_path / "data")
    recipe = write_recipe(tmp_path, tmp_path / "data", task="binary", name="spots",
                          data={"image_size": SIZE, "batch_size": 32, "test": "test"},
                          model={"arch": "simplenet", "blocks": [16, 32]}, optim={"name": "adam", "lr": 0.01},
                          train={"epochs": 4, "loggers": ["csv"]})
    run_recipe(load_recipe(recipe), tmp_path / "run", overwrite=True, quiet=True)
    result = runner.invoke(app, ["explain", str(tmp_path / "run"), str(tmp_path / "data" / "test" / "spot"),
                                 "--class", "spot", "--out", str(tmp_path / "cam")])
    assert result.exit_code == 0, result.output
    with (tmp_path / "cam" / "explain.csv").open(newline="") as handle:
        rows = list(csv.DictReader(handle))
    assert len(rows) == 10 and {row["class"] for row in rows} == {"spot"}
    inside = 0
    for row in rows:
        x0, y0, x1, y1 = boxes[Path(row["image"]).resolve().relative_to((tmp_path / "data").resolve()).as_posix()]
        x, y = float(row["heat_x"]) * SIZE, float(row["heat_y"]) * SIZE
        inside += x0 <= x <= x1 and y0 <= y <= y1
    assert inside / len(rows) >= 0.9, rows
    overlay = Image.open(tmp_path / "cam" / rows[0]["overlay"])
    assert overlay.size == (224, 224) and overlay.mode == "RGB"


def test_the_target_layer_is_the_last_spatial_map() -> None:
    import torchvision

    from cvtool.models import build_model
    from cvtool.recipe.model_config import ModelConfig

    example = torch.zeros(1, 3, 32, 32)
    resnet = torchvision.models.resnet18(num_classes=3).eval()
    assert find_target_layer(resnet, torch.zeros(1, 3, 64, 64)) == "layer4"
    assert find_target_layer(resnet, example) == "layer3"  # at 32 px layer4 is down to 1x1
    simple = build_model(ModelConfig(arch="simplenet", blocks=[8, 16]), 3, 3, 32).eval()
    assert find_target_layer(simple, example) == "blocks"
    assert find_target_layer(TemperatureScaled(simple, [2.0]).eval(), example) == "model.blocks"


def test_timm_nets_and_transformers(tmp_path: Path) -> None:
    timm = pytest.importorskip("timm")
    net = timm.create_model("resnet18", pretrained=False, num_classes=3).eval()
    assert find_target_layer(net, torch.zeros(1, 3, 64, 64)) == "layer4"
    vit = timm.create_model("vit_tiny_patch16_224", pretrained=False, num_classes=3, img_size=32).eval()
    with pytest.raises(CvtoolError, match="--layer"):
        find_target_layer(vit, torch.zeros(1, 3, 32, 32))


def test_explain_a_torchvision_run_for_a_named_class(tmp_path: Path, tmp_path_factory, synthetic) -> None:
    run = trained_run(tmp_path_factory, synthetic, "binary")  # resnet18 at 32 px
    images = Path(synthetic("binary", n=40)["root"]) / "test"
    result = runner.invoke(app, ["explain", str(run), str(images), "--class", "clear", "--out", str(tmp_path)])
    assert result.exit_code == 0, result.output
    with (tmp_path / "explain.csv").open(newline="") as handle:
        rows = list(csv.DictReader(handle))
    assert rows and {row["class"] for row in rows} == {"clear"}
    assert all((tmp_path / row["overlay"]).is_file() for row in rows)


def test_explain_mistakes_are_one_line(tmp_path: Path, tmp_path_factory, synthetic, monkeypatch) -> None:
    run = trained_run(tmp_path_factory, synthetic, "multiclass")
    images = str(Path(synthetic("multiclass")["root"]) / "test")
    line = one_line_error(runner.invoke(app, ["explain", str(run), images, "--class", "hexagon", "-o", str(tmp_path)]))
    assert "--class hexagon: not a class" in line
    line = one_line_error(runner.invoke(app, ["explain", str(run), str(tmp_path / "none.png"), "-o", str(tmp_path)]))
    assert "no such image" in line
    line = one_line_error(runner.invoke(app, ["explain", str(run), images, "--layer", "nope", "-o", str(tmp_path)]))
    assert "--layer nope" in line
    keypoints = trained_run(tmp_path_factory, synthetic, "keypoints")
    assert "no class to explain" in one_line_error(runner.invoke(app, ["explain", str(keypoints), images]))
    monkeypatch.setitem(sys.modules, "pytorch_grad_cam", None)
    assert 'pip install "cvtool[explain]"' in one_line_error(runner.invoke(app, ["explain", str(run), images]))


def test_report_shows_the_most_confident_errors(tmp_path: Path, tmp_path_factory, synthetic, monkeypatch) -> None:
    run = trained_run(tmp_path_factory, synthetic, "multiclass")
    result = runner.invoke(app, ["report", str(run), "--out", str(tmp_path / "report.md")])
    assert result.exit_code == 0, result.output
    assert (tmp_path / "report_files" / "01_onnx-multiclass_errors.png").is_file()
    assert "Grad-CAM of the most confident errors" in (tmp_path / "report.md").read_text()
    monkeypatch.setitem(sys.modules, "pytorch_grad_cam", None)
    result = runner.invoke(app, ["report", str(run), "--out", str(tmp_path / "plain.md")])
    assert result.exit_code == 0 and not (tmp_path / "plain_files" / "01_onnx-multiclass_errors.png").exists()
