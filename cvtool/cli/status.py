"""`cvtool status DIR`: the members of a fold set, sweep or search (trained as jobs or not) with
their job, state, epoch and best monitored value; a failed job's last log lines."""

from __future__ import annotations

from pathlib import Path
from typing import Annotated

import typer

from cvtool.cli.common import console, handle_errors

app = typer.Typer()


@app.command("status")
@handle_errors
def status(
    run_dir: Annotated[Path, typer.Argument(help="A fold set, sweep or search folder.", show_default=False)],
) -> None:
    """Each member's job, state, epoch and best metric, read from the run folders."""
    from cvtool.cli.jobs import print_tails, status_table
    from cvtool.cluster.status import set_status

    current = set_status(run_dir)
    console.print(status_table(current))
    print_tails(current.rows)
