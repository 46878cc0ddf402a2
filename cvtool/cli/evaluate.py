"""`cvtool evaluate RUN_DIR|CKPT`: metrics, per-class report and plots of a checkpoint on a split.

cvtool's own modules are imported inside the command: `cvtool --help` stays torch-free.
"""

from __future__ import annotations

from pathlib import Path
from typing import TYPE_CHECKING, Annotated, Any

import typer

from cvtool.cli.common import (
    CheckpointOpt,
    DataOpt,
    QuietOpt,
    SplitOpt,
    console,
    fail,
    handle_errors,
    is_tty,
)

if TYPE_CHECKING:
    from rich.table import Table

app = typer.Typer()


@app.command("evaluate")
@handle_errors
def evaluate(
    model: Annotated[list[Path], typer.Argument(
        help="Run directory, fold set or checkpoint (.pt); several: each one and their ensemble.",
        show_default=False)],
    split: SplitOpt = "test",
    data: DataOpt = None,
    checkpoint: CheckpointOpt = "best",
    out: Annotated[Path | None, typer.Option("--out", "-o", help="Report folder (default: RUN/eval/<split>-<checkpoint>).")] = None,
    save_predictions: Annotated[Path | None, typer.Option(
        "--save-predictions", help="CSV of image, targets and outputs (probabilities / pixels).")] = None,
    tune_thresholds: Annotated[bool, typer.Option(
        "--tune-thresholds", help="Tune global and per-class thresholds on val; store them in the checkpoint.")] = False,
    oof: Annotated[bool, typer.Option(
        "--oof", help="Score a fold set's out-of-fold predictions (with --tune-thresholds: tune on them).")] = False,
    weights: Annotated[str | None, typer.Option("--weights", help="Ensemble: one weight per model, e.g. 2,1,1.")] = None,
    calibrate: Annotated[bool, typer.Option(
        "--calibrate", help="Fit temperature scaling on val (--oof: on the OOF predictions); store it.")] = False,
    quiet: QuietOpt = False,
) -> None:
    """Evaluate a checkpoint: metric table, per-class report, metrics.json, per_class.csv, plots."""
    from cvtool.cli.render import calibration_table, metrics_table
    from cvtool.evaluation.evaluate import run_evaluation
    from cvtool.runs.layout import RunDir

    if checkpoint == "all":
        if calibrate:
            fail("--checkpoint all: --calibrate needs one checkpoint")
        return _all_checkpoints(model[0], split, data, out, save_predictions, tune_thresholds, quiet)
    if oof or len(model) > 1 or RunDir(model[0]).is_fold_set():  # an ensemble, or a fold set's OOF
        from cvtool.cli.fold_tables import evaluate_folds

        return evaluate_folds(model, split, checkpoint, data, weights, oof, tune_thresholds, quiet, calibrate)
    report = run_evaluation(model[0], split, checkpoint, data, out, save_predictions, tune_thresholds,
                            progress=not quiet and is_tty(), calibrate=calibrate)
    result = report.result
    if report.calibration is not None:
        console.print(calibration_table(report.calibration))
    if report.tuning is not None:
        console.print(tuning_table(report.tuning))
    console.print(f"checkpoint: {report.checkpoint} (epoch {report.epoch})")
    title = f"{result.split}: {len(result.outputs)} images"
    console.print(metrics_table(title, {result.split: {"loss": result.loss, **result.metrics}}))
    console.print(class_table(report.per_class))
    console.print(f"report: {report.out_dir}")
    if save_predictions is not None:
        console.print(f"predictions: {save_predictions}")


def _all_checkpoints(model: Path, split: str, data: Path | None, out: Path | None, save_predictions: Path | None,
                     tune_thresholds: bool, quiet: bool) -> None:
    from rich.table import Table

    from cvtool.errors import CvtoolError
    from cvtool.evaluation.checkpoints import evaluate_checkpoints

    if save_predictions is not None or tune_thresholds:
        raise CvtoolError("--checkpoint all: --save-predictions and --tune-thresholds need one checkpoint")
    table = evaluate_checkpoints(model, split, data, out, progress=not quiet and is_tty())
    view = Table(title=f"{table.split}: every kept checkpoint")
    for i, name in enumerate(table.header):
        view.add_column(name, justify="left" if i == 0 else "right")
    for row in table.rows:
        view.add_row(*("-" if v is None else f"{v:.4f}" if isinstance(v, float) else str(v) for v in row))
    console.print(view)
    console.print(f"table: {table.files[0]}")


def class_table(table: Any) -> Table:
    """A cvtool.evaluation.reports.ClassTable as a rich table."""
    from rich.table import Table

    view = Table(title=table.title)
    for i, name in enumerate(table.header):
        view.add_column(name, justify="left" if i == 0 else "right")
    for row in table.rows:
        view.add_row(*(f"{v:.4f}" if isinstance(v, float) else str(v) for v in row))
    return view


def tuning_table(tuning: Any) -> Table:
    """Tuning metric at the default, the global and the per-class thresholds (val, test, gain)."""
    from cvtool.cli.render import metrics_table

    tuned = tuning.tuned
    names = (f"at {tuned.default:g}", f"global {tuned.global_threshold:.3f}", "per-class")
    val = dict(zip(names, (tuned.at_default, tuned.at_global, tuned.at_per_class), strict=True))
    test = dict(zip(names, tuning.test.values(), strict=True)) if tuning.test else None
    columns = {"val": val, "val gain": {k: v - tuned.at_default for k, v in val.items()}, "test": test,
               "test gain": {k: v - tuning.test["default"] for k, v in test.items()} if test else None}
    return metrics_table(f"{tuned.metric} by threshold (tuned on val, stored in {tuning.stored_in.name})",
                         columns)
