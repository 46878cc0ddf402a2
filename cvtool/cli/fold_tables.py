"""Rich tables of fold sets and ensembles (train --fold, evaluate with several models)."""

from __future__ import annotations

from pathlib import Path
from typing import Any

from rich.table import Table

from cvtool.cli.common import console, fail, is_tty
from cvtool.cli.render import fmt_cell


def folds_table(summary: dict[str, Any]) -> Table:
    """One row per fold (held-out val metrics at its best epoch, test metrics), then mean ± std
    and the out-of-fold metrics."""
    rows = summary["runs"]
    keys = list(dict.fromkeys(f"{split}/{k}" for row in rows for split in ("val", "test")
                              for k in (row[split] or {}) if k != "loss"))
    done = "" if summary.get("complete") else f" ({len(rows)} of {summary['k']} folds done)"
    table = Table(title=f"{summary['name']}: {summary['k']}-fold, best by {summary['monitor']}{done}")
    table.add_column("fold")
    table.add_column("best_epoch", justify="right")
    for key in keys:
        table.add_column(key, justify="right")
    for row in rows:
        values = {f"{split}/{k}": v for split in ("val", "test") for k, v in (row[split] or {}).items()}
        table.add_row(str(row["fold"]), str(row["best_epoch"]), *(fmt_cell(values.get(k)) for k in keys))
    if summary.get("mean"):
        mean, std = summary["mean"], summary["std"]
        table.add_row("mean ± std", "", *(f"{mean[k]:.4f} ± {std[k]:.4f}" if k in mean else "-" for k in keys))
    if summary.get("oof"):
        oof = summary["oof"]
        table.add_row("out-of-fold", "", *(fmt_cell(oof.get(k.removeprefix("val/"))) if k.startswith("val/") else "-"
                                           for k in keys))
    return table


def ensemble_table(title: str, columns: dict[str, dict[str, float]]) -> Table:
    """One row per metric, one column per member and one for the ensemble."""
    table = Table(title=title)
    table.add_column("metric")
    for name in columns:
        table.add_column(name, justify="right")
    for key in dict.fromkeys(k for values in columns.values() for k in values):
        table.add_row(key, *(fmt_cell(values.get(key)) for values in columns.values()))
    return table


def evaluate_folds(models: list[Path], split: str, which: str, data: Path | None, weights: str | None, oof: bool,
                   tune: bool, quiet: bool, calibrate: bool = False) -> None:
    """`cvtool evaluate` of an ensemble (each member and the mean) or of a fold set's oof.csv."""
    from cvtool.ensembles.evaluate import evaluate_ensemble
    from cvtool.ensembles.members import parse_weights
    from cvtool.folds.evaluate import evaluate_oof

    if oof:
        if len(models) != 1:
            fail("--oof: give one fold set")
        result = evaluate_oof(models[0], tune, calibrate)
        if result.calibration is not None:
            from cvtool.cli.render import calibration_table

            console.print(calibration_table(result.calibration))
        if result.tuned is not None:
            tuned = result.tuned
            console.print(ensemble_table(f"{tuned.metric} on the out-of-fold predictions (stored in folds.json)",
                                         {"at default": {tuned.metric: tuned.at_default},
                                          f"global {tuned.global_threshold:.3f}": {tuned.metric: tuned.at_global},
                                          "per-class": {tuned.metric: tuned.at_per_class}}))
        console.print(ensemble_table(f"out-of-fold: {result.images} images of {result.fold_set}",
                                     {**result.per_fold, "all folds": result.metrics}))
        return
    if tune or calibrate:
        fail("--tune-thresholds, --calibrate: tune or calibrate an ensemble on a fold set's out-of-fold "
             "predictions (--oof)")
    result = evaluate_ensemble(models, split, which, data, parse_weights(weights), progress=not quiet and is_tty())
    console.print(ensemble_table(f"{result.split}: {result.images} images, members and their ensemble",
                                 result.columns))
