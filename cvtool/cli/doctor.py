"""`cvtool doctor DATA --recipe R [--oof RUN]`: duplicates and leakage, image quality, label errors.

cvtool's own modules are imported inside the command: `cvtool --help` stays torch-free.
"""

from __future__ import annotations

from pathlib import Path
from typing import Annotated

import typer

from cvtool.cli.common import QuietOpt, console, handle_errors, is_tty

app = typer.Typer()
ROWS = 20  # per table in the terminal; the report files have more


@app.command("doctor")
@handle_errors
def doctor(
    data: Annotated[Path, typer.Argument(help="Data root folder.", show_default=False)],
    recipe: Annotated[Path | None, typer.Option(
        "--recipe", "-r", help="Recipe for format, splits, columns and task [default: the --oof fold set's].")] = None,
    oof: Annotated[Path | None, typer.Option(
        "--oof", help="Fold set: rank likely label errors by its out-of-fold probabilities.")] = None,
    out: Annotated[Path | None, typer.Option("--out", "-o", help="Report folder [default: runs/doctor/<recipe name>].")] = None,
    fix: Annotated[bool, typer.Option(
        "--fix", help="Write exclude.txt (data.exclude) and, for CSV data, a training CSV with a group column.")] = False,
    distance: Annotated[int, typer.Option("--distance", help="Near-duplicates: pHash bits that may differ (of 64).")] = 8,
    quiet: QuietOpt = False,
) -> None:
    """Duplicates within and across splits, image-quality outliers, label errors, class presence."""
    from rich.progress import Progress

    from cvtool.cli.doctor_tables import render
    from cvtool.doctor.run import run_doctor
    from cvtool.errors import CvtoolError
    from cvtool.runs.layout import RunDir
    from cvtool.runs.recipes import load_recipe

    if recipe is None and oof is None:
        raise CvtoolError("cvtool doctor: give --recipe (or --oof with a fold set, whose recipe is used)")
    loaded = load_recipe(recipe if recipe is not None else RunDir(oof).recipe)
    target = out or Path("runs") / "doctor" / loaded.name
    if quiet or not is_tty():
        report = run_doctor(loaded, data, target, oof, fix, distance)
    else:
        with Progress(transient=True) as bar:
            task = bar.add_task("reading images", total=None)
            report = run_doctor(loaded, data, target, oof, fix, distance, lambda n: bar.advance(task, n))
    render(report, ROWS)
    console.print(f"report: {', '.join(str(p) for p in report.files)}", soft_wrap=True)
    for path in report.fixes:
        console.print(f"fix: {path}", soft_wrap=True)
    if report.fixes:
        console.print(f"  use: --set data.exclude={report.fixes[0]}", soft_wrap=True)
    if len(report.fixes) > 1:
        console.print(f"  k-fold: --set data.train={report.fixes[1].resolve()} "
                      "--set data.folds.group_column=doctor_group", soft_wrap=True)
