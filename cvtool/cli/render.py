"""Rich tables shared by several commands."""

from __future__ import annotations

from typing import Any

from rich.table import Table
from rich.text import Text


def metrics_table(title: str, columns: dict[str, dict[str, float] | None]) -> Table:
    """One row per metric, one column per source (e.g. val / test, or plain / TTA)."""
    table = Table(title=title)
    table.add_column("metric")
    for name in columns:
        table.add_column(name, justify="right")
    keys = list(dict.fromkeys(k for values in columns.values() if values for k in values))
    for key in keys:
        table.add_row(key, *(fmt_cell((values or {}).get(key)) for values in columns.values()))
    return table


def calibration_table(calibration: Any) -> Table:
    """ECE and NLL before and after temperature scaling, per scored split; the caption says where
    the temperature is stored and where the reliability diagram is."""
    temperature = ", ".join(f"{t:.3f}" for t in calibration.temperature[:8])
    more = f" (+{len(calibration.temperature) - 8} more)" if len(calibration.temperature) > 8 else ""
    columns = {f"{split} {when}": values for split, pair in calibration.scores.items() for when, values in pair.items()}
    table = metrics_table(f"calibration: temperature {temperature}{more} fitted on {calibration.fitted_on} "
                          f"({calibration.images} images)", columns)
    stored = calibration.stored_in
    where = ", ".join(str(p) for p in stored[:2]) + (f" and {len(stored) - 2} more" if len(stored) > 2 else "")
    table.caption = Text(f"stored in {where}\nreliability diagram: {calibration.diagram}", no_wrap=True,
                         overflow="ignore")
    table.caption_justify = "left"
    return table


def summary_table(summary: dict[str, Any]) -> Table:
    if summary.get("search"):
        return search_table(summary)
    if summary.get("sweep"):
        table = Table(title=f"sweep {summary['name']}: ranked by {summary['monitor']}")
        for column in ("rank", "run", "best_epoch", "best_value", "smoothed_best_value", "test"):
            table.add_column(column, justify="right" if column != "run" else "left")
        for rank, row in enumerate(summary["runs"], 1):
            run = f"{row['run']} (failed)" if row.get("failed") else row["run"]
            table.add_row(str(rank), run, str(row["best_epoch"]), fmt_cell(row["best_value"]),
                          fmt_cell(row["smoothed_best_value"]), fmt_cell(row["test"]))
        failed = [f"{row['run']}: {row['failed']}" for row in summary["runs"] if row.get("failed")]
        if failed:
            table.caption = Text("failed: " + "; ".join(failed))  # plain text: no markup in messages
        return table
    smoothed = "" if summary["smoothed_best_epoch"] is None else (
        f" (smoothed {fmt_cell(summary['smoothed_best_value'])} at epoch {summary['smoothed_best_epoch']})")
    title = (f"{summary['name']}: best {summary['monitor']} {fmt_cell(summary['best_value'])} at epoch "
             f"{summary['best_epoch']}{smoothed}")
    return metrics_table(title, {"val (best epoch)": summary["val"], "test (best checkpoint)": summary["test"]})


def search_table(summary: dict[str, Any]) -> Table:
    """A search's trials, ranked: completed by value, then pruned, then failed."""
    table = Table(title=f"search {summary['name']}: {len(summary['trials'])} trials ranked by "
                        f"{summary['monitor']} ({summary['direction']})")
    keys = [k for k in (summary["trials"][0] if summary["trials"] else {}) if k not in ("rank", "run")]
    for column in ("rank", *keys, "run"):
        table.add_column(column, justify="left" if column in ("state", "run") else "right")
    for row in summary["trials"]:
        table.add_row(*(f"{v:.4g}" if isinstance(v := row.get(column), float) else fmt_cell(v)
                        for column in ("rank", *keys, "run")))
    return table


def fmt_cell(value: Any) -> str:
    """A table cell: 4 decimals for floats, '-' for a missing value, 'undefined' for NaN (what
    summary.json writes as null: AUC of a split with one class)."""
    if value is None:
        return "-"
    if isinstance(value, float) and value != value:
        return "undefined"
    if isinstance(value, float):
        return f"{value:.4f}"
    return str(value)
