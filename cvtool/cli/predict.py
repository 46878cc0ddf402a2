"""`cvtool predict MODEL IMAGES --out submission.csv`: a competition submission from an .onnx
file (onnxruntime; torch is never imported) or a run dir / checkpoint (PyTorch).

cvtool's own modules are imported inside the command: `cvtool --help` stays torch-free.
"""

from __future__ import annotations

import contextlib
from collections.abc import Iterator
from pathlib import Path
from typing import Annotated

import typer

from cvtool.cli.common import CheckpointOpt, QuietOpt, console, err_console, handle_errors, is_tty

app = typer.Typer()


@app.command("predict")
@handle_errors
def predict(
    model: Annotated[list[Path], typer.Argument(
        help="An .onnx file, a run directory, a fold set or a checkpoint (.pt); several: their ensemble.",
        show_default=False)],
    images: Annotated[Path, typer.Argument(help="A folder (recursive) or a CSV with an image column.", show_default=False)],
    out: Annotated[Path, typer.Option("--out", "-o", help="Submission CSV (written atomically).")] = Path("submission.csv"),
    tta: Annotated[int, typer.Option("--tta", help="TTA passes of the recipe's tta.transforms (checkpoint only; 0: off).")] = 0,
    batch_size: Annotated[int, typer.Option("--batch-size", "-b", help="Images per batch.")] = 64,
    columns: Annotated[str | None, typer.Option(
        "--columns", help="Rename the header, e.g. file_name,label (one name per column).")] = None,
    probs: Annotated[bool, typer.Option("--probs", help="Also one probability column per class.")] = False,
    on_bad_image: Annotated[str, typer.Option("--on-bad-image", help="Unreadable image: fail (naming it) or skip.")] = "fail",
    image_column: Annotated[str | None, typer.Option(
        "--image-column", help="The CSV's image column (default: the training CSV's, else 'image').")] = None,
    images_dir: Annotated[Path | None, typer.Option(
        "--images-dir", help="Folder the CSV's image paths are relative to (default: the CSV's folder).")] = None,
    checkpoint: CheckpointOpt = "best",
    labels: Annotated[str | None, typer.Option(
        "--labels", help="Class column (and --probs headers): names or ids (Tiny ImageNet's wnids, its default).")] = None,
    weights: Annotated[str | None, typer.Option(
        "--weights", help="Ensemble: one weight per model (member of a fold set), e.g. 2,1,1.")] = None,
    quiet: QuietOpt = False,
) -> None:
    """Predict every image and write the task's submission CSV, rows in input order."""
    from rich.markup import escape

    from cvtool.ensembles.members import parse_weights
    from cvtool.inference.predict import describe_skipped
    from cvtool.inference.predict import predict as run_predict

    with _progress(not quiet and is_tty()) as progress:
        result = run_predict(model if len(model) > 1 else model[0], images, out, which=checkpoint, batch_size=batch_size, tta=tta, columns=columns,
                             probs=probs, on_bad_image=on_bad_image, image_column=image_column,
                             images_dir=images_dir, progress=progress, label_style=labels,
                             weights=parse_weights(weights))
    if result.skipped:
        err_console.print(f"[yellow]cvtool: {escape(describe_skipped(result.skipped))}[/]", markup=True, soft_wrap=True)
    if result.cut_off:
        err_console.print(f"[yellow]cvtool: {result.cut_off} predicted keypoints lie outside the model frame "
                          "(data.resize crop cut them off); written as predicted, in original pixels[/]",
                          markup=True, soft_wrap=True)
    console.print(f"wrote {result.out}: {result.rows} rows, columns {','.join(result.header)}", soft_wrap=True)
    if not quiet:
        console.print(f"model: {result.model}", soft_wrap=True)


@contextlib.contextmanager
def _progress(show: bool) -> Iterator[object]:
    """A (done, total) callback driving a rich bar, or None."""
    if not show:
        yield None
        return
    from rich.progress import Progress

    with Progress(transient=True, console=err_console) as bar:
        task = bar.add_task("predicting", total=None)

        def advance(done: int, total: int) -> None:
            bar.update(task, advance=done, total=total)

        yield advance
