"""`cvtool report RUN_DIR...`: Markdown + self-contained HTML comparing runs (a sweep reports as one).

cvtool's own modules are imported inside the command: `cvtool --help` stays torch-free.
"""

from __future__ import annotations

from pathlib import Path
from typing import Annotated

import typer

from cvtool.cli.common import console, handle_errors

app = typer.Typer()


@app.command("report")
@handle_errors
def report(
    run_dirs: Annotated[list[Path], typer.Argument(help="Run or sweep directories.", show_default=False)],
    out: Annotated[Path, typer.Option("--out", "-o", help="Markdown file; the .html and <stem>_files/ go beside it.")] = Path("report.md"),
    metric: Annotated[str | None, typer.Option(
        "--metric", "-m", help="Rank by this metric, e.g. val/auc [default: the first run's monitor].")] = None,
) -> None:
    """Ranked table (what differs, best / smoothed best, test), metric overlays, confusion / ROC, lr curves."""
    from rich.table import Table

    from cvtool.reporting.render import table_cells
    from cvtool.reporting.report import write_report

    result = write_report(run_dirs, out, metric)
    table = Table(title=f"runs ranked by {result.metric}")
    for index, name in enumerate(("#", "run", "differs from the first run", "best epoch", "best",
                                  "smoothed (epoch)", "test")):
        table.add_column(name, justify="right" if index in (0, 3, 4, 5, 6) else "left", overflow="fold")
    for row in result.rows:
        table.add_row(*table_cells(row))
    console.print(table)
    console.print(f"wrote {result.markdown}, {result.html} and {len(result.figures)} figures in {result.files_dir}/")
