"""`cvtool export --onnx`: per-task parity (onnxruntime vs PyTorch on real images at batch 1 and 7),
raw-input graphs, self-describing metadata, one-line errors for models that cannot export.

Runs and exports are built once per test session under the pytest base temp folder by the
conftest helpers `trained_run` and `onnx_file` (shared with test_predict.py and test_bench.py).
"""

from __future__ import annotations

import json
from collections.abc import Callable
from pathlib import Path
from typing import Any

import numpy as np
import onnx
import pytest
import torch
from conftest import SETUPS, STATS, TASKS, onnx_file, shared_dir, trained_run
from torch import nn
from typer.testing import CliRunner

import cvtool.inference.export as export_module
from cvtool.cli.main import app
from cvtool.inference.export import export_onnx
from cvtool.model_card import RAW, ModelCard, card_from_checkpoint
from cvtool.runs.model import load_model


@pytest.mark.parametrize("task", [t for t in TASKS if t != "multilabel"])
def test_export_passes_parity_per_task(task: str, tmp_path_factory: pytest.TempPathFactory,
                                       synthetic: Callable[..., dict]) -> None:
    run = trained_run(tmp_path_factory, synthetic, task)
    out = shared_dir(tmp_path_factory) / f"{task}.onnx"
    report = export_onnx(run, out, **SETUPS[task]["export"])
    print(f"{task}: " + ", ".join(f"batch {c.batch} {c.input_shape}: {c.max_abs_diff:.3g}" for c in report.parity))
    assert out.is_file() and report.path == out
    assert [c.batch for c in report.parity] == [1, 7]
    assert all(c.max_abs_diff <= 1e-4 for c in report.parity)
    assert "val" in report.images_from
    model = onnx.load(out)
    batch_dim = model.graph.input[0].type.tensor_type.shape.dim[0]
    assert batch_dim.dim_param and not batch_dim.dim_value  # dynamic batch axis
    assert [o.name for o in model.graph.output] == ["logits"]
    assert not list(out.parent.glob(f".{out.name}.*"))  # no temp file left behind


def test_raw_input_graph_takes_any_size_uint8(tmp_path_factory: pytest.TempPathFactory,
                                              synthetic: Callable[..., dict]) -> None:
    out = onnx_file(tmp_path_factory, synthetic, "keypoints")
    model = onnx.load(out)
    images = model.graph.input[0]
    dims = images.type.tensor_type.shape.dim
    assert images.name == "images" and images.type.tensor_type.elem_type == onnx.TensorProto.UINT8
    assert all(d.dim_param for d in dims[:3]) and dims[3].dim_value == 3  # N, H, W dynamic; C fixed
    card = ModelCard.from_metadata({p.key: p.value for p in model.metadata_props}, str(out))
    assert card.raw_input and card.input_layout == RAW
    # a re-check at sizes the parity check did not use (resize + normalize inside the graph)
    from cvtool.inference.onnx_runtime import create_session

    loaded = load_model(trained_run(tmp_path_factory, synthetic, "keypoints"))
    wrapper = export_module.RawInputModel(loaded.model, card.mean, card.std, card.image_size).eval()
    rng = np.random.default_rng(0)
    for shape in [(1, 16, 16, 3), (3, 21, 40, 3), (2, 9, 11, 3)]:
        pixels = rng.integers(0, 256, shape, dtype=np.uint8)
        (got,) = create_session(out).run(["logits"], {"images": pixels})
        with torch.inference_mode():
            want = wrapper(torch.from_numpy(pixels)).numpy()
        assert np.abs(got - want).max() <= 1e-4, shape


def test_cli_export_with_opset_writes_self_describing_metadata(
        tmp_path_factory: pytest.TempPathFactory, synthetic: Callable[..., dict]) -> None:
    run = trained_run(tmp_path_factory, synthetic, "multilabel")
    out = shared_dir(tmp_path_factory) / "multilabel.onnx"
    result = CliRunner().invoke(app, ["export", str(run), "--onnx", str(out), "--opset", "18"])
    assert result.exit_code == 0, result.output
    assert "max abs diff" in result.output and "parity images: 7 val images" in result.output
    assert f"wrote {out}" in result.output and "opset 18" in result.output
    model = onnx.load(out)
    assert next(o.version for o in model.opset_import if o.domain in ("", "ai.onnx")) == 18
    props = {p.key: p.value for p in model.metadata_props}
    values = {key: json.loads(value) for key, value in props.items()}  # every value is JSON
    loaded = load_model(run)
    assert values["task"] == "multilabel"
    assert values["class_names"] == loaded.meta.class_names
    assert values["target_names"] == []
    assert values["image_size"] == 16 and values["channels"] == 3
    assert values["mean"] == pytest.approx(STATS["mean"]) and values["std"] == pytest.approx(STATS["std"])
    assert values["thresholds"] is None and values["default_threshold"] == 0.5
    assert values["flip_pairs"] is None
    assert values["recipe_name"] == "onnx-multilabel"
    assert values["cvtool_version"]
    assert values["input_layout"].startswith("NCHW float32")
    assert ModelCard.from_metadata(props, str(out)) == card_from_checkpoint(
        loaded.meta, loaded.recipe, values["source"])


def test_card_round_trips_tuned_thresholds_and_flip_pairs() -> None:
    card = ModelCard("multilabel", ["a", "b"], [], 16, 3, [0.5] * 3, [0.25] * 3, 2, [0.2, 0.7], 0.5,
                     [[0, 1]], "r")
    back = ModelCard.from_metadata(card.to_metadata(), "x.onnx")
    assert back == card
    assert back.labels().thresholds.tolist() == pytest.approx([0.2, 0.7])


@torch.library.custom_op("cvtooltest::wobble", mutates_args=())
def wobble(x: torch.Tensor) -> torch.Tensor:
    return x * 2


@wobble.register_fake
def _wobble_shape(x: torch.Tensor) -> torch.Tensor:
    return torch.empty_like(x)


class Wobble(nn.Module):
    """A layer calling an operator that has no ONNX translation."""

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return wobble(x)


def test_unsupported_operator_is_one_line_naming_op_and_layer(
        tmp_path: Path, monkeypatch: pytest.MonkeyPatch, tmp_path_factory: pytest.TempPathFactory,
        synthetic: Callable[..., dict]) -> None:
    def load_with_wobble(target: Any, which: str = "best", device: str = "cpu") -> Any:
        loaded = load_model(target, which, device)
        loaded.model.fc = nn.Sequential(loaded.model.fc, Wobble())
        return loaded

    monkeypatch.setattr(export_module, "load_model", load_with_wobble)
    out = tmp_path / "wobble.onnx"
    result = CliRunner().invoke(app, ["export", str(trained_run(tmp_path_factory, synthetic, "multiclass")),
                                      "--onnx", str(out)])
    assert result.exit_code == 2
    lines = result.output.strip().splitlines()
    assert len(lines) == 1, result.output
    assert "cvtooltest.wobble" in lines[0] and "'fc.1' (Wobble)" in lines[0]
    assert not out.exists()


def test_parity_above_tolerance_exits_2_and_writes_nothing(
        tmp_path: Path, monkeypatch: pytest.MonkeyPatch, tmp_path_factory: pytest.TempPathFactory,
        synthetic: Callable[..., dict]) -> None:
    good = onnx.load(onnx_file(tmp_path_factory, synthetic, "multiclass"))
    bias = next(t for t in good.graph.initializer if t.name.endswith("fc.bias"))
    values = onnx.numpy_helper.to_array(bias) + 0.01  # the graph now disagrees with PyTorch
    bias.CopyFrom(onnx.numpy_helper.from_array(values, bias.name))
    monkeypatch.setattr(export_module, "to_onnx", lambda *args, **kwargs: good)
    out = tmp_path / "bad.onnx"
    result = CliRunner().invoke(app, ["export", str(trained_run(tmp_path_factory, synthetic, "multiclass")),
                                      "--onnx", str(out)])
    assert result.exit_code == 2
    assert "max abs difference 0.01" in result.output and "exceeds --tolerance 0.0001" in result.output
    assert len(result.output.strip().splitlines()) == 1
    assert not out.exists() and not list(tmp_path.iterdir())


def test_opset_the_exporter_cannot_reach_is_refused(
        tmp_path: Path, monkeypatch: pytest.MonkeyPatch, tmp_path_factory: pytest.TempPathFactory,
        synthetic: Callable[..., dict]) -> None:
    """The exporter silently keeps opset 18 when it cannot convert down; cvtool refuses instead."""
    produced = onnx.load(onnx_file(tmp_path_factory, synthetic, "multiclass"))

    class Program:
        model_proto = produced

    monkeypatch.setattr(torch.onnx, "export", lambda *args, **kwargs: Program())
    result = CliRunner().invoke(app, ["export", str(trained_run(tmp_path_factory, synthetic, "multiclass")),
                                      "--onnx", str(tmp_path / "m.onnx"), "--opset", "9"])
    assert result.exit_code == 2 and "--opset 9: the exporter could not convert" in result.output
    assert not (tmp_path / "m.onnx").exists()


@pytest.mark.parametrize("args, message", [
    (["--onnx", "model.pt"], "must end in .onnx"),
    (["--onnx", "m.onnx", "--checkpoint", "epoch_099"], "no checkpoint 'epoch_099'"),
    (["--onnx", "m.onnx", "--tolerance", "0"], "must be positive"),
])
def test_export_mistakes_are_one_red_line(args: list[str], message: str, tmp_path: Path,
                                          tmp_path_factory: pytest.TempPathFactory,
                                          synthetic: Callable[..., dict]) -> None:
    run = trained_run(tmp_path_factory, synthetic, "multiclass")
    args = [a if not a.endswith((".onnx", ".pt")) else str(tmp_path / a) for a in args]
    result = CliRunner().invoke(app, ["export", str(run), *args])
    assert result.exit_code == 2
    assert message in result.output and len(result.output.strip().splitlines()) == 1, result.output
