"""Numeric options against nan, inf and huge values: each is one line and exit code 2 (never a
submission of nan scores, a parity check that checks nothing, or a traceback)."""

from __future__ import annotations

from pathlib import Path

import numpy as np
import pytest
from conftest import one_line_error, trained_run
from typer.testing import CliRunner

from cvtool.cli.main import app
from cvtool.ensembles.members import normalized_weights

runner = CliRunner()


def invoke(*args: object):
    return runner.invoke(app, [str(a) for a in args])


@pytest.mark.parametrize("weights", ["nan,1", "inf,1", "1e400,1", "-inf,1", "0,0"])
def test_ensemble_weights_that_are_not_finite_or_sum_to_nothing_are_refused(
        weights: str, tmp_path_factory, synthetic, tmp_path: Path) -> None:
    run = trained_run(tmp_path_factory, synthetic, "multiclass")
    images = Path(synthetic("multiclass")["root"]) / "test"
    out = tmp_path / "submission.csv"
    line = one_line_error(invoke("predict", run, run, images, "--out", out, "--weights", weights))
    assert "--weights" in line and not out.exists()
    line = one_line_error(invoke("evaluate", run, run, "--weights", weights))
    assert "--weights" in line


def test_weights_whose_sum_overflows_keep_their_proportions() -> None:
    assert normalized_weights([1e308, 1e308], 2).tolist() == [0.5, 0.5]
    assert normalized_weights([3e307, 1e308], 2) == pytest.approx([0.230769, 0.769231], rel=1e-5)
    assert np.isclose(normalized_weights([5e-324, 0.0], 2).sum(), 1.0)


@pytest.mark.parametrize(("option", "value", "expected"), [
    ("--tolerance", "nan", "finite tolerance"), ("--tolerance", "inf", "finite tolerance"),
    ("--image-size", "100000000", "at most 8192"), ("--opset", "99999999999999999999", "knows opsets up to"),
])
def test_export_options(option: str, value: str, expected: str, tmp_path_factory, synthetic, tmp_path: Path) -> None:
    run = trained_run(tmp_path_factory, synthetic, "multiclass")
    out = tmp_path / "model.onnx"
    line = one_line_error(invoke("export", run, "--onnx", out, option, value))
    assert f"{option} {value}" in line and expected in line and not out.exists()


@pytest.mark.parametrize(("key", "value"), [
    ("seed", "99999999999999999999999"), ("data.image_size", "100000000"), ("data.decode_size", "100000000"),
    ("data.batch_size", "99999999999999999999999"), ("data.num_workers", "99999999999"),
])
def test_huge_recipe_numbers_are_refused_before_anything_runs(key: str, value: str, synthetic, make_recipe,
                                                              tmp_path: Path) -> None:
    recipe = make_recipe(tmp_path, synthetic("multiclass"))
    line = one_line_error(invoke("train", recipe, "--set", f"{key}={value}", "--out", tmp_path / "run"))
    assert f"{key}: expected a value" in line and not (tmp_path / "run").exists()


def test_lr_find_bench_and_data_bounds(synthetic, make_recipe, tmp_path: Path) -> None:
    recipe = make_recipe(tmp_path, synthetic("multiclass"))
    assert "both finite" in one_line_error(invoke("lr-find", recipe, "--end", "inf", "--out", tmp_path / "lr"))
    assert "--target nan" in one_line_error(invoke("bench", "train", recipe, "--target", "nan"))
    line = one_line_error(invoke("data", "synthetic", tmp_path / "big", "--task", "multiclass", "--size", "100000"))
    assert "8 to 8192 pixels" in line and not (tmp_path / "big").exists()
