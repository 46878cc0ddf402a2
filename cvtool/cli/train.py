"""`cvtool train RECIPE`: fit a recipe (or every point of its sweep) into a run directory.

cvtool's own modules are imported inside the command: `cvtool --help` stays torch-free.
"""

from __future__ import annotations

from pathlib import Path
from typing import Annotated

import typer

from cvtool.cli.common import QuietOpt, SetOpt, console, err_console, fail, handle_errors

app = typer.Typer()


@app.command("train")
@handle_errors
def train(
    recipe: Annotated[Path | None, typer.Argument(help="Recipe YAML (optional with --resume).", show_default=False)] = None,
    set_: SetOpt = None,
    out: Annotated[Path | None, typer.Option("--out", "-o", help="Run directory (default: runs/<name>/<time>).")] = None,
    resume: Annotated[Path | None, typer.Option("--resume", help="Continue the run in DIR from its last.pt.")] = None,
    overwrite: Annotated[bool, typer.Option("--overwrite", help="Replace an existing run in --out.")] = False,
    extend: Annotated[bool, typer.Option(
        "--extend", help="With --resume and a changed train.epochs: train on, the schedule restarted over the added epochs.")] = False,
    detect_anomaly: Annotated[bool, typer.Option("--detect-anomaly", help="torch autograd anomaly detection (slow).")] = False,
    fold: Annotated[str | None, typer.Option(
        "--fold", help="K-fold (data.folds): all, or one fold index N, into DIR/fold_<N>/.")] = None,
    search_worker: Annotated[bool, typer.Option(
        "--search-worker", help="Join the recipe's search in --out DIR (or its storage) as one more worker.")] = False,
    no_plots: Annotated[bool, typer.Option("--no-plots", help="Draw no plots/ (they are drawn beside the test evaluation).")] = False,
    executor: Annotated[str, typer.Option(
        "--executor", help="local, or slurm: one job per fold, sweep point or search worker (submitit; docs/cluster.md).")] = "local",
    jobs: Annotated[int | None, typer.Option(
        "--jobs", min=1, help="Members at once: local subprocesses (a GPU each), slurm's array limit, a search's workers.")] = None,
    wait: Annotated[bool, typer.Option("--wait", help="--executor slurm: follow the jobs with a live table.")] = False,
    dry_run: Annotated[bool, typer.Option("--dry-run", help="--executor slurm: print the sbatch script, submit nothing.")] = False,
    quiet: QuietOpt = False,
) -> None:
    """Train a recipe; writes recipe.yaml, metrics.csv, summary.json, checkpoints/ and plots/."""
    from cvtool.cli.launch import RunStopped, launched, run_recipe
    from cvtool.runs import plotting
    from cvtool.runs.layout import RunDir
    from cvtool.runs.recipes import load_recipe
    from cvtool.runs.sweep import default_run_dir

    if recipe is None and resume is None:
        fail("give a RECIPE to train, or --resume DIR to continue a run")
    source = RunDir(resume).recipe if resume is not None and recipe is None else recipe
    resolved = load_recipe(source, set_ or [], stored=recipe is None)  # None: the run dir's own recipe.yaml
    run_dir = resume or out or default_run_dir(resolved)
    if executor != "local" or (jobs or 1) > 1 or dry_run:
        from cvtool.cli.jobs import train_as_jobs

        train_as_jobs(resolved, run_dir, executor=executor, fold=fold, jobs=jobs, wait=wait, dry_run=dry_run,
                      resume=resume is not None, overwrite=overwrite, recipe_file=source, quiet=quiet,
                      refused="--search-worker" if search_worker else "--extend" if extend else None)
        return
    try:
        with launched(resolved.train.device, run_dir, detect_anomaly) as (dist, stop), plotting.skipped(no_plots):
            summary = run_recipe(resolved, run_dir, fold=fold, resume=resume is not None, overwrite=overwrite,
                                 quiet=quiet, stop=stop, dist=dist, extend=extend, search_worker=search_worker,
                                 recipe_file=source)
    except RunStopped as stopped:
        err_console.print(f"[yellow]cvtool: stopped by signal; resume with: cvtool train --resume {run_dir}[/]")
        raise typer.Exit(stopped.exit_code) from None
    if summary.get("folds"):
        from cvtool.cli.fold_tables import folds_table

        console.print(folds_table(summary))
        console.print(f"fold set: {run_dir}")
    elif summary:
        from cvtool.cli.render import summary_table

        console.print(summary_table(summary))
        console.print(f"run: {run_dir}")
