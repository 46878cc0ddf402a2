"""Rich tables of fold sets and ensembles (train --fold, evaluate with several models)."""

from __future__ import annotations

from typing import Any

from rich.table import Table


def _fmt(value: Any) -> str:
    if value is None:
        return "-"
    if isinstance(value, float):
        return f"{value:.4f}"
    return str(value)


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
        table.add_row(str(row["fold"]), str(row["best_epoch"]), *(_fmt(values.get(k)) for k in keys))
    if summary.get("mean"):
        mean, std = summary["mean"], summary["std"]
        table.add_row("mean ± std", "", *(f"{mean[k]:.4f} ± {std[k]:.4f}" if k in mean else "-" for k in keys))
    if summary.get("oof"):
        oof = summary["oof"]
        table.add_row("out-of-fold", "", *(_fmt(oof.get(k.removeprefix("val/"))) if k.startswith("val/") else "-"
                                           for k in keys))
    return table


def ensemble_table(title: str, columns: dict[str, dict[str, float]]) -> Table:
    """One row per metric, one column per member and one for the ensemble."""
    table = Table(title=title)
    table.add_column("metric")
    for name in columns:
        table.add_column(name, justify="right")
    for key in dict.fromkeys(k for values in columns.values() for k in values):
        table.add_row(key, *(_fmt(values.get(key)) for values in columns.values()))
    return table
