"""`cvtool bench train|predict|startup`: performance figures, each with its target.

cvtool's own modules are imported inside the command: `cvtool --help` stays torch-free.
"""

from __future__ import annotations

from pathlib import Path
from typing import Annotated, Any

import typer

from cvtool.cli.common import CheckpointOpt, RecipeArg, SetOpt, console, handle_errors

app = typer.Typer(no_args_is_help=True)


@app.command("train")
@handle_errors
def train(
    recipe: RecipeArg,
    set_: SetOpt = None,
    steps: Annotated[int, typer.Option("--steps", help="Timed steady-state steps per block.")] = 10,
    warmup: Annotated[int, typer.Option("--warmup", help="Untimed steps before each block.")] = 2,
    rounds: Annotated[int, typer.Option("--rounds", help="Rounds of one loader and one ceiling block (best kept).")] = 5,
    target: Annotated[float, typer.Option("--target", help="Target of real loader / ceiling.")] = 0.95,
    json_out: Annotated[Path | None, typer.Option("--json", help="Also write the figures and notes to this JSON file.")] = None,
) -> None:
    """Training images/s through the recipe's real loader vs the pure-compute ceiling (CUDA: also peak memory)."""
    from cvtool.bench.report import write_report
    from cvtool.bench.train import bench_train
    from cvtool.runs.outputs import check_file
    from cvtool.runs.recipes import load_recipe

    loaded = load_recipe(recipe, set_ or [])
    if json_out is not None:
        check_file("--json", json_out, {"the recipe": recipe}, loaded.data, purpose="bench")
    report = bench_train(loaded, steps=steps, warmup=warmup, rounds=rounds, target=target)
    render(report)
    if json_out is not None:
        write_report(report, json_out)


@app.command("predict")
@handle_errors
def predict(
    model: Annotated[Path, typer.Argument(help="An .onnx export, a run directory or a checkpoint.", show_default=False)],
    batch_size: Annotated[int, typer.Option("--batch-size", "-b", help="Images per batch.")] = 64,
    images: Annotated[Path | None, typer.Option(
        "--images", help="Folder of images [default: the recipe's test (or val) folder].")] = None,
    passes: Annotated[int, typer.Option("--passes", help="TTA passes.")] = 8,
    repeats: Annotated[int, typer.Option("--repeats", help="Timed batches per engine (median).")] = 10,
    tta_images: Annotated[int, typer.Option("--tta-images", help="Images for the TTA figure.")] = 256,
    checkpoint: CheckpointOpt = "best",
) -> None:
    """onnxruntime vs torch eager, end-to-end predict vs the bare session, TTA vs N plain passes."""
    from cvtool.bench.predict import bench_predict

    render(bench_predict(model, batch_size=batch_size, images=images, passes=passes, repeats=repeats,
                         which=checkpoint, tta_images=tta_images))


@app.command("startup")
@handle_errors
def startup(
    runs: Annotated[int, typer.Option("--runs", help="Fresh `cvtool --help` processes (median).")] = 7,
    model: Annotated[Path | None, typer.Option("--model", help="An .onnx for the predict check [default: a tiny one].")] = None,
    images: Annotated[Path | None, typer.Option("--images", help="Images for --model.")] = None,
    train: Annotated[bool, typer.Option("--train/--no-train", help="Also time `cvtool train`: start to first step, last step to exit.")] = True,
    recipe: Annotated[Path | None, typer.Option("--recipe", help="The recipe `cvtool train` runs [default: the digits demo, 1 epoch].")] = None,
    set_: SetOpt = None,
    train_runs: Annotated[int, typer.Option("--train-runs", help="Fresh/cached `cvtool train` pairs (median).")] = 1,
    json_out: Annotated[Path | None, typer.Option("--json", help="Also write the figures and notes to this JSON file.")] = None,
) -> None:
    """`cvtool --help` wall time; does `cvtool predict` on an .onnx import torch; `cvtool train` from its
    start to the first step (fresh, and rerun with the decode cache filled) and from its last step to exit."""
    from cvtool.bench.report import write_report
    from cvtool.bench.startup import bench_startup

    report = bench_startup(runs, model, images, train=train, recipe=recipe, sets=set_ or [], train_runs=train_runs)
    render(report)
    if json_out is not None:
        write_report(report, json_out)


def render(report: Any) -> None:
    """The figures as a table (figure, measured, target, pass/miss), then the notes and the machine."""
    from rich.markup import escape
    from rich.table import Table

    from cvtool.bench.report import machine

    table = Table(title=escape(report.title), title_justify="left")
    for column, justify in (("figure", "left"), ("measured", "right"), ("target", "right"), ("result", "left")):
        table.add_column(column, justify=justify, no_wrap=column != "figure")
    marks = {True: "[green]pass[/]", False: "[red]miss[/]", None: ""}
    for figure in report.figures:
        table.add_row(escape(figure.name), figure.measured_text(), figure.target_text(), marks[figure.passed])
    console.print(table)
    for note in [*report.notes, f"machine: {machine()}"]:
        console.print(f"  {escape(note)}", soft_wrap=True)
