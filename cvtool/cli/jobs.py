"""What `cvtool train --executor ...`, `cvtool status` and `cvtool collect` print: the jobs
submitted, a live table of the members while they run, a failed job's last log lines, and the
set's own table (folds, sweep, search) once every member has ended."""

from __future__ import annotations

import contextlib
from collections.abc import Callable, Iterator
from pathlib import Path
from typing import TYPE_CHECKING, Any

import typer
from rich.markup import escape
from rich.table import Table

from cvtool.cli.common import console, err_console, fail
from cvtool.cli.render import fmt_cell
from cvtool.recipe.schema import Recipe

if TYPE_CHECKING:
    from cvtool.cluster.driver import Submission
    from cvtool.cluster.status import MemberRow, SetStatus


def train_as_jobs(recipe: Recipe, run_dir: Path, *, executor: str, fold: str | None, jobs: int | None, wait: bool,
                  dry_run: bool, resume: bool, overwrite: bool, recipe_file: Path | None, quiet: bool,
                  refused: str | None = None) -> None:
    """Submit the set's members as jobs; print what was submitted, or follow them to the end.
    `refused`: an option of `cvtool train` that jobs do not take."""
    from cvtool.cluster.driver import Request, submit_set

    if refused:
        fail(f"--executor / --jobs: not with {refused}")
    if executor not in ("local", "slurm"):
        fail(f"--executor: expected local or slurm, got {executor!r}")
    if dry_run and executor != "slurm":
        fail("--dry-run: only with --executor slurm (it prints the sbatch script)")
    request = Request(executor, fold, jobs, wait, dry_run, resume, overwrite, recipe_file)
    with following(run_dir, quiet) as show:
        submission = submit_set(recipe, run_dir, request, on_change=show)
    if submission.script is not None:
        typer.echo(submission.script.rstrip("\n") if submission.script else "nothing to submit: every member has finished")
        return
    report(submission, quiet)


@contextlib.contextmanager
def following(run_dir: Path, quiet: bool) -> Iterator[Callable[[dict[str, str]], None]]:
    """A callback that shows the members' table live (a terminal), or a line per change (a log)."""
    from rich.live import Live

    from cvtool.cluster.status import set_status

    seen: dict[str, str] = {}
    live = Live(console=console, auto_refresh=False) if console.is_terminal and not quiet else None

    def show(states: dict[str, str]) -> None:
        status = set_status(run_dir, live=states)
        if live is not None:
            live.update(status_table(status), refresh=True)
            return
        for row in status.rows:
            if seen.get(row.member) != row.state:
                seen[row.member] = row.state
                console.print(f"{row.member}: {row.state}" + (f" (job {row.job})" if row.job else ""))

    with live if live is not None else contextlib.nullcontext():
        yield show


def report(submission: Submission, quiet: bool) -> None:
    """The jobs submitted (SLURM, not followed), or how the followed ones ended and the set's table."""
    where = submission.set_dir
    if submission.running:
        console.print(f"still running from before (not submitted again): {', '.join(submission.running)}")
    if submission.outcomes is None and submission.submitted:
        table = Table(title=f"{len(submission.submitted)} {submission.executor} jobs: {submission.kind} {where.name}")
        table.add_column("member")
        table.add_column("job", justify="right")
        for member, job in submission.submitted:
            table.add_row(member, job)
        console.print(table)
        console.print(f"follow them: cvtool status {where}")
        return
    failed = [o for o in submission.outcomes or [] if o.state != "done"]
    for outcome in failed:
        err_console.print(f"[red]{outcome.member} (job {outcome.job}) {outcome.state}[/]; its log ends:")
        for line in outcome.tail:
            err_console.print(f"  {escape(line)}", highlight=False)
    if submission.summary is not None:
        render_summary(submission.summary, where)
    if failed:
        err_console.print(f"[yellow]cvtool: {len(failed)} job(s) did not finish; the same command continues "
                          f"them (each from its last.pt)[/]")
        raise typer.Exit(1)


def render_summary(summary: dict[str, Any], where: Path) -> None:
    """The fold set's, sweep's or search's table, as `cvtool train` prints it."""
    if summary.get("folds") and not summary["runs"]:
        console.print(f"fold set {summary['name']}: no fold has finished yet: {where}")
    elif summary.get("folds"):
        from cvtool.cli.fold_tables import folds_table

        console.print(folds_table(summary))
        console.print(f"fold set: {where}")
    elif summary.get("sweep") and not summary.get("complete"):
        console.print(f"sweep {summary['name']}: {summary['done']} of {summary['points']} points done "
                      f"(sweep.csv is written once all are): {where}")
    elif summary:
        from cvtool.cli.render import summary_table

        console.print(summary_table(summary))
        console.print(f"{'search' if summary.get('search') else 'sweep'}: {where}")


def status_table(status: SetStatus) -> Table:
    """One row per member: job, state, epochs done of planned, best monitored value, host, attempts."""
    jobs = f" ({status.executor} jobs)" if status.executor else ""
    table = Table(title=f"{status.kind} {status.name}: {status.set_dir}{jobs}")
    for column in ("member", "job", "state", "epoch", f"best {status.monitor}", "host", "starts"):
        table.add_column(column, justify="left" if column in ("member", "state", "host") else "right")
    for row in status.rows:
        epoch = "-" if row.epoch is None else f"{row.epoch}/{row.epochs or '?'}"
        table.add_row(row.member, row.job or "-", _colored(row.state), epoch, fmt_cell(row.best),
                      row.host or "-", fmt_cell(row.attempts))
    return table


def print_tails(rows: list[MemberRow]) -> None:
    for row in rows:
        if row.tail:
            err_console.print(f"[red]{row.member} (job {row.job}) {row.state}[/]; its log ends:")
            for line in row.tail:
                err_console.print(f"  {escape(line)}", highlight=False)


def _colored(state: str) -> str:
    color = {"done": "green", "failed": "red", "stopped": "red", "running": "cyan", "requeued": "yellow"}.get(state)
    return f"[{color}]{state}[/]" if color else state
