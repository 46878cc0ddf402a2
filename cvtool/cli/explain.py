"""`cvtool explain RUN IMAGES`: Grad-CAM overlays of what the model looks at.

cvtool's own modules are imported inside the command: `cvtool --help` stays torch-free.
"""

from __future__ import annotations

from pathlib import Path
from typing import Annotated

import typer

from cvtool.cli.common import CheckpointOpt, ModelArg, console, handle_errors

app = typer.Typer()


@app.command("explain")
@handle_errors
def explain(
    model: ModelArg,
    images: Annotated[list[Path], typer.Argument(help="Image files or folders (searched recursively).",
                                                 show_default=False)],
    class_name: Annotated[str | None, typer.Option(
        "--class", help="Explain this class [default: each image's top class].")] = None,
    out: Annotated[Path | None, typer.Option("--out", "-o", help="Folder [default: RUN/explain].")] = None,
    layer: Annotated[str | None, typer.Option(
        "--layer", help="Module whose feature map is weighted [default: the last spatial one].")] = None,
    checkpoint: CheckpointOpt = "best",
) -> None:
    """Grad-CAM overlays (one PNG per image) and explain.csv: class, probability, heat centroid."""
    from rich.markup import escape
    from rich.table import Table

    from cvtool.evaluation.explain import explain_images
    from cvtool.runs.layout import EXPLAIN

    folder = out or (model if model.is_dir() else model.parent) / EXPLAIN
    found = explain_images(model, images, folder, class_name, checkpoint, layer)
    table = Table("image", "class", "probability", "heat centre (x, y)", "overlay", title=f"Grad-CAM of {model}",
                  title_justify="left")
    for item in found[:20]:
        x, y = item.centroid
        table.add_row(escape(str(item.path)), escape(item.class_name), f"{item.probability:.4f}", f"{x:.2f}, {y:.2f}",
                      escape(item.overlay.name if item.overlay else "-"))
    if len(found) > 20:
        table.caption = f"{len(found) - 20} more in explain.csv"
    console.print(table)
    console.print(f"wrote {len(found)} overlays and explain.csv to {folder}", soft_wrap=True)
