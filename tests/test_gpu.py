"""CUDA-only paths (device auto, AMP, channels_last); skipped on machines without CUDA."""

from __future__ import annotations

import json
from pathlib import Path

import pytest
import torch
from typer.testing import CliRunner

from cvtool.cli.main import app
from cvtool.engine.loop import amp_dtype, select_device
from cvtool.runs.model import load_model

pytestmark = [pytest.mark.gpu, pytest.mark.skipif(not torch.cuda.is_available(), reason="needs CUDA")]
runner = CliRunner()


def test_auto_device_and_amp_pick_cuda() -> None:
    device = select_device("auto")
    assert device.type == "cuda"
    assert amp_dtype(device, "auto") in (torch.bfloat16, torch.float16)
    assert amp_dtype(device, "none") is None


@pytest.mark.parametrize("amp", ["auto", "fp16", "bf16"])
def test_train_with_amp_and_channels_last_then_evaluate_on_cpu(amp: str, synthetic, make_recipe,
                                                              tmp_path: Path) -> None:
    if amp == "bf16" and not torch.cuda.is_bf16_supported():
        pytest.skip("no bf16 on this GPU")
    data = synthetic("multiclass", n=80, size=16)
    recipe = make_recipe(tmp_path, data, model={"arch": "resnet18", "small_input": {"stride1": 1}},
                         train={"epochs": 2, "device": "auto", "amp": amp, "channels_last": "auto"},
                         data={"image_size": 32})
    run = tmp_path / amp
    result = runner.invoke(app, ["train", str(recipe), "--out", str(run), "--quiet"])
    assert result.exit_code == 0, result.output
    summary = json.loads((run / "summary.json").read_text())
    assert summary["device"].startswith("cuda")
    assert 0.0 <= summary["val"]["accuracy"] <= 1.0
    loaded = load_model(run, device="cpu")
    assert next(loaded.model.parameters()).device.type == "cpu"
    evaluated = runner.invoke(app, ["evaluate", str(run), "--quiet"])
    assert evaluated.exit_code == 0, evaluated.output
