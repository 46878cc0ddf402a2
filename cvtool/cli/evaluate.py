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
    ModelArg,
    QuietOpt,
    SplitOpt,
    console,
    handle_errors,
    is_tty,
)

if TYPE_CHECKING:
    from rich.table import Table

app = typer.Typer()



@app.command("evaluate")
@handle_errors
def evaluate(
    model: ModelArg,
    split: SplitOpt = "test",
    data: DataOpt = None,
    checkpoint: CheckpointOpt = "best",
    out: Annotated[Path | None, typer.Option("--out", "-o", help="Report folder (default: RUN/eval/<split>-<checkpoint>).")] = None,
    save_predictions: Annotated[Path | None, typer.Option(
        "--save-predictions", help="CSV of image, targets and outputs (probabilities / pixels).")] = None,
    tune_thresholds: Annotated[bool, typer.Option(
        "--tune-thresholds", help="Tune global and per-class thresholds on val; store them in the checkpoint.")] = False,
    quiet: QuietOpt = False,
) -> None:
    """Evaluate a checkpoint: metric table, per-class report, metrics.json, per_class.csv, plots."""
    from cvtool.cli.render import metrics_table
    from cvtool.evaluation.evaluate import run_evaluation

    report = run_evaluation(model, split, checkpoint, data, out, save_predictions, tune_thresholds,
                            progress=not quiet and is_tty())
    result = report.result
    if report.tuning is not None:
        console.print(tuning_table(report.tuning))
    console.print(f"checkpoint: {report.checkpoint} (epoch {report.epoch})")
    title = f"{result.split}: {len(result.outputs)} images"
    console.print(metrics_table(title, {result.split: {"loss": result.loss, **result.metrics}}))
    console.print(class_table(report.per_class))
    console.print(f"report: {report.out_dir}")
    if save_predictions is not None:
        console.print(f"predictions: {save_predictions}")


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
