"""`cvtool collect DIR`: write a fold set's oof.csv and folds.json, a sweep's or a search's table
from its members' run folders, as `cvtool train` writes them once every member has ended."""

from __future__ import annotations

from pathlib import Path
from typing import Annotated

import typer

from cvtool.cli.common import handle_errors

app = typer.Typer()


@app.command("collect")
@handle_errors
def collect(
    run_dir: Annotated[Path, typer.Argument(help="A fold set, sweep or search folder.", show_default=False)],
) -> None:
    """Write the set's tables again from its members' run folders (jobs write them as they end)."""
    from cvtool.cli.jobs import render_summary
    from cvtool.cluster.members import collect_set

    render_summary(collect_set(run_dir), run_dir)
