"""`cvtool export RUN_DIR|CKPT --onnx OUT.onnx`: a self-describing, self-checked ONNX file.

cvtool's own modules are imported inside the command: `cvtool --help` stays torch-free.
"""

from __future__ import annotations

from pathlib import Path
from typing import Annotated

import typer

from cvtool.cli.common import CheckpointOpt, ModelArg, console, handle_errors

app = typer.Typer()


@app.command("export")
@handle_errors
def export(
    model: ModelArg,
    onnx: Annotated[Path, typer.Option("--onnx", help="Output .onnx file.", show_default=False)],
    opset: Annotated[int | None, typer.Option("--opset", help="ONNX opset (default: the exporter's).")] = None,
    image_size: Annotated[int | None, typer.Option("--image-size", help="Input size S (default: the recipe's).")] = None,
    raw_input: Annotated[bool, typer.Option(
        "--raw-input", help="Input uint8 N x H x W x C of any size; resize + normalize inside the graph.")] = False,
    tolerance: Annotated[float, typer.Option(
        "--tolerance", help="Max abs difference onnxruntime vs PyTorch on real images.")] = 1e-4,
    checkpoint: CheckpointOpt = "best",
) -> None:
    """Export to ONNX (dynamic batch), then check it: onnx.checker and onnxruntime vs PyTorch."""
    from rich.table import Table

    from cvtool.inference.export import export_onnx
    from cvtool.runs.layout import RunDir

    if model.is_dir() and RunDir(model).is_fold_set():  # one graph averaging every fold
        from cvtool.inference.export import export_ensemble as export_onnx  # noqa: F811

    report = export_onnx(model, onnx, which=checkpoint, opset=opset, image_size=image_size,
                         raw_input=raw_input, tolerance=tolerance)
    card = report.card
    table = Table(title="onnxruntime vs PyTorch", title_justify="left")
    for column in ("batch", "input", "max abs diff", "tolerance"):
        table.add_column(column, justify="right", no_wrap=True)
    for check in report.parity:
        table.add_row(str(check.batch), "x".join(map(str, check.input_shape)), f"{check.max_abs_diff:.3g}",
                      f"{report.tolerance:g} ✓")
    console.print(table)
    for line in (f"parity images: {report.images_from}",
                 f"input '{card.input_name}': {card.input_layout}",
                 f"output '{card.output_name}': {card.num_outputs} raw values per image (no activation)"
                 + (f", calibrated: divided by temperature {card.temperature}" if card.temperature else ""),
                 f"wrote {report.path} ({report.size_bytes / 1e6:.2f} MB, opset {report.opset}, {card.task}, "
                 f"{report.seconds:.1f}s)"):
        console.print(line, soft_wrap=True)
