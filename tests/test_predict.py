"""`cvtool predict`: the same submission CSV from an .onnx export and from its checkpoint for every
task, header per task, --columns, CSV inputs (MADE style), bad images, TTA, and the ONNX path
running with torch made unimportable. Runs and exports come from tests/test_export.py helpers."""

from __future__ import annotations

import csv
import shutil
import subprocess
import sys
import textwrap
from collections.abc import Callable
from pathlib import Path

import onnx
import pytest
from conftest import TASKS, dataset, onnx_file, trained_run
from typer.testing import CliRunner

from cvtool.cli.main import app


def read_csv(path: Path) -> list[list[str]]:
    with path.open(newline="", encoding="utf-8") as handle:
        return list(csv.reader(handle))


def invoke(*args: object) -> object:
    return CliRunner().invoke(app, ["predict", *map(str, args)])


def split_inputs(synthetic: Callable[..., dict], task: str) -> Path:
    """The dataset's test split: a class folder tree, or the CSV with an `image` column."""
    info = dataset(synthetic, task)
    root = Path(info["root"])
    return root / "test.csv" if info["format"] == "csv" else root / "test"


def expected_header(synthetic: Callable[..., dict], task: str) -> list[str]:
    info = dataset(synthetic, task)
    classes = info.get("classes", [])  # with --probs: one column per class
    return {"multiclass": ["image", "label", *classes], "binary": ["image", "score"],
            "multilabel": ["image", "tags", *classes], "keypoints": ["image", *info.get("targets", [])]}[task]


def assert_same_csv(left: list[list[str]], right: list[list[str]], tolerance: float = 1e-4) -> float:
    """Same header, keys and labels; numbers within `tolerance`. Returns the largest difference."""
    assert left[0] == right[0] and len(left) == len(right)
    worst = 0.0
    for a_row, b_row in zip(left[1:], right[1:], strict=True):
        assert len(a_row) == len(b_row)
        for a, b in zip(a_row, b_row, strict=True):
            try:
                worst = max(worst, abs(float(a) - float(b)))
            except ValueError:
                assert a == b
    assert worst <= tolerance
    return worst


@pytest.mark.parametrize("task", TASKS)
def test_onnx_and_checkpoint_write_the_same_csv(task: str, tmp_path: Path, tmp_path_factory: pytest.TempPathFactory,
                                                synthetic: Callable[..., dict]) -> None:
    model, run = onnx_file(tmp_path_factory, synthetic, task), trained_run(tmp_path_factory, synthetic, task)
    images = split_inputs(synthetic, task)
    outputs = {}
    for name, source in (("onnx", model), ("checkpoint", run)):
        outputs[name] = tmp_path / f"{name}.csv"
        result = invoke(source, images, "--out", outputs[name], "--probs", "--batch-size", 5)
        assert result.exit_code == 0, result.output
        assert f"wrote {outputs[name]}" in result.output
    onnx_rows, ckpt_rows = read_csv(outputs["onnx"]), read_csv(outputs["checkpoint"])
    assert onnx_rows[0] == expected_header(synthetic, task)
    worst = assert_same_csv(onnx_rows, ckpt_rows)
    print(f"{task}: {len(onnx_rows) - 1} rows, largest difference {worst:.2g}")
    keys = [row[0] for row in onnx_rows[1:]]
    if images.suffix == ".csv":  # input order
        assert keys == [row[0] for row in read_csv(images)[1:]]
    else:  # recursive, sorted by relative path
        assert keys == sorted(keys) and all("/" in key for key in keys)


def test_columns_rename_the_header(tmp_path: Path, tmp_path_factory: pytest.TempPathFactory,
                                   synthetic: Callable[..., dict]) -> None:
    model = onnx_file(tmp_path_factory, synthetic, "keypoints")
    names = ["file_name", *(f"p{i}" for i in range(6))]
    out = tmp_path / "sub.csv"
    result = invoke(model, split_inputs(synthetic, "keypoints"), "--out", out, "--columns", ",".join(names))
    assert result.exit_code == 0, result.output
    assert read_csv(out)[0] == names
    wrong = invoke(model, split_inputs(synthetic, "keypoints"), "--out", tmp_path / "x.csv", "--columns", "a,b")
    assert wrong.exit_code == 2 and len(wrong.output.strip().splitlines()) == 1
    assert "--columns: 2 names for 7 columns (image,Point_M0_X," in wrong.output
    assert not (tmp_path / "x.csv").exists()


def test_made_style_csv_keeps_input_order_and_column(tmp_path: Path, tmp_path_factory: pytest.TempPathFactory,
                                                     synthetic: Callable[..., dict]) -> None:
    """test_points.csv beside images/, an own image column name, rows in the CSV's order."""
    info = dataset(synthetic, "keypoints")
    names = [row[0] for row in read_csv(Path(info["root"]) / "test.csv")[1:]][::-1]
    (tmp_path / "test" / "images").mkdir(parents=True)
    for name in names:
        shutil.copy(Path(info["root"]) / "images" / name, tmp_path / "test" / "images" / name)
    points = tmp_path / "test" / "test_points.csv"
    points.write_text("file_name,extra\n" + "".join(f"{n},x\n" for n in names), encoding="utf-8")
    model = onnx_file(tmp_path_factory, synthetic, "keypoints")
    out = tmp_path / "submission.csv"
    result = invoke(model, points, "--image-column", "file_name", "--out", out)
    assert result.exit_code == 0, result.output
    rows = read_csv(out)
    assert rows[0][0] == "file_name" and [r[0] for r in rows[1:]] == names
    pixels = [float(v) for row in rows[1:] for v in row[1:]]
    assert min(pixels) > -8 and max(pixels) < 32  # original-image pixels (images are 12-20 px)
    again = invoke(model, points, "--image-column", "file_name", "--images-dir", tmp_path / "test" / "images",
                   "--out", tmp_path / "again.csv")
    assert again.exit_code == 0 and read_csv(tmp_path / "again.csv") == rows
    missing = invoke(model, points, "--image-column", "fname", "--out", tmp_path / "y.csv")
    assert missing.exit_code == 2 and "no column 'fname' (did you mean file_name?)" in missing.output


def test_bad_image_fails_naming_it_or_is_skipped_and_reported(
        tmp_path: Path, tmp_path_factory: pytest.TempPathFactory, synthetic: Callable[..., dict]) -> None:
    model = onnx_file(tmp_path_factory, synthetic, "multiclass")
    folder = tmp_path / "images"
    shutil.copytree(split_inputs(synthetic, "multiclass"), folder)
    (folder / "zz_broken.png").write_bytes(b"\x89PNG\r\n\x1a\n not really a png")
    good = len(list(folder.rglob("*.*"))) - 1
    failed = invoke(model, folder, "--out", tmp_path / "fail.csv")
    assert failed.exit_code == 2 and len(failed.output.strip().splitlines()) == 1
    assert "zz_broken.png: unreadable image" in failed.output
    assert not (tmp_path / "fail.csv").exists()
    skipped = invoke(model, folder, "--out", tmp_path / "skip.csv", "--on-bad-image", "skip")
    assert skipped.exit_code == 0, skipped.output
    assert "1 unreadable image skipped:" in skipped.output and "zz_broken.png" in skipped.output
    rows = read_csv(tmp_path / "skip.csv")
    assert len(rows) == good + 1 and all("zz_broken" not in row[0] for row in rows)


def test_tta_runs_on_the_checkpoint_and_is_refused_for_onnx(
        tmp_path: Path, tmp_path_factory: pytest.TempPathFactory, synthetic: Callable[..., dict]) -> None:
    run, images = trained_run(tmp_path_factory, synthetic, "multiclass"), split_inputs(synthetic, "multiclass")
    plain = invoke(run, images, "--out", tmp_path / "plain.csv")
    tta = invoke(run, images, "--out", tmp_path / "tta.csv", "--tta", 2)
    assert plain.exit_code == 0 and tta.exit_code == 0, tta.output
    # the recipe has no augmentations, so its TTA passes are the plain pass: same labels
    assert read_csv(tmp_path / "tta.csv") == read_csv(tmp_path / "plain.csv")
    refused = invoke(onnx_file(tmp_path_factory, synthetic, "multiclass"), images, "--out", tmp_path / "x.csv",
                     "--tta", 2)
    assert refused.exit_code == 2 and "--tta needs the PyTorch model" in refused.output


def test_predict_mistakes_are_one_red_line(tmp_path: Path, tmp_path_factory: pytest.TempPathFactory,
                                           synthetic: Callable[..., dict]) -> None:
    model = onnx_file(tmp_path_factory, synthetic, "binary")
    images = split_inputs(synthetic, "binary")
    plain = tmp_path / "plain.onnx"
    graph = onnx.helper.make_graph([onnx.helper.make_node("Identity", ["images"], ["logits"])], "g",
                                   [onnx.helper.make_tensor_value_info("images", onnx.TensorProto.FLOAT, [1])],
                                   [onnx.helper.make_tensor_value_info("logits", onnx.TensorProto.FLOAT, [1])])
    onnx.save(onnx.helper.make_model(graph, ir_version=9, opset_imports=[onnx.helper.make_opsetid("", 18)]), plain)
    (tmp_path / "empty").mkdir()
    cases = [
        ((model, tmp_path / "nowhere"), "no such folder or CSV file"),
        ((model, tmp_path / "empty"), "no images found"),
        ((model, images, "--on-bad-image", "ignore"), "--on-bad-image: 'ignore' is not one of fail, skip"),
        ((model, images, "--batch-size", 0), "--batch-size: needs at least 1"),
        ((plain, images), "no cvtool metadata"),
        ((tmp_path / "missing.onnx", images), "ONNX model not found"),
    ]
    for args, message in cases:
        result = invoke(*args, "--out", tmp_path / "out.csv")
        assert result.exit_code == 2, (args, result.output)
        assert message in result.output and len(result.output.strip().splitlines()) == 1, result.output
    assert not (tmp_path / "out.csv").exists()


GUARD = textwrap.dedent("""
    import sys

    attempts = []

    class BlockTorch:
        def find_spec(self, name, path=None, target=None):
            if name.split(".")[0] in ("torch", "torchvision"):
                attempts.append(name)
                raise ImportError(f"torch is unimportable in this test ({name})")
            return None

    sys.meta_path.insert(0, BlockTorch())
    from typer.testing import CliRunner

    from cvtool.cli.main import app

    result = CliRunner().invoke(app, ["predict", *sys.argv[1:]])
    print(result.output)
    loaded = sorted(m for m in sys.modules if m.split(".")[0] in ("torch", "torchvision"))
    print("ATTEMPTS", attempts, "LOADED", loaded)
    sys.exit(result.exit_code or (3 if attempts or loaded else 0))
""")


def test_onnx_predict_runs_with_torch_unimportable(tmp_path: Path, tmp_path_factory: pytest.TempPathFactory,
                                                   synthetic: Callable[..., dict]) -> None:
    model = onnx_file(tmp_path_factory, synthetic, "keypoints")
    images = split_inputs(synthetic, "keypoints")
    script = tmp_path / "guard.py"
    script.write_text(GUARD, encoding="utf-8")
    out = tmp_path / "no_torch.csv"
    done = subprocess.run([sys.executable, str(script), str(model), str(images), "--out", str(out)],
                          capture_output=True, text=True, timeout=120, cwd=tmp_path)
    assert done.returncode == 0, done.stdout + done.stderr
    assert "ATTEMPTS [] LOADED []" in done.stdout
    reference = tmp_path / "reference.csv"
    assert invoke(model, images, "--out", reference).exit_code == 0
    assert read_csv(out) == read_csv(reference)
