"""`cvtool lr-find RECIPE`: the learning-rate range test, with a suggested `--set optim.lr=...`."""

from __future__ import annotations

from pathlib import Path
from typing import Annotated

import typer

from cvtool.cli.common import RecipeArg, SetOpt, console, handle_errors

app = typer.Typer()


@app.command("lr-find")
@handle_errors
def lr_find(
    recipe: RecipeArg,
    set_: SetOpt = None,
    start: Annotated[float, typer.Option("--start", help="First learning rate.")] = 1e-7,
    end: Annotated[float, typer.Option("--end", help="Last learning rate.")] = 1.0,
    steps: Annotated[int, typer.Option("--steps", help="Optimizer steps (one batch each).")] = 100,
    out: Annotated[Path | None, typer.Option("--out", "-o", help="Folder for lr_find.png / .csv "
                                             "(default: runs/lr-find/<name>).")] = None,
) -> None:
    """Loss against an exponentially growing lr on the recipe's data; writes the plot, suggests an lr."""
    from cvtool.runs.lr_find import lr_find as range_test
    from cvtool.runs.recipes import load_recipe

    resolved = load_recipe(recipe, set_ or [])
    folder = out or Path("runs") / "lr-find" / resolved.name
    result = range_test(resolved, folder, start, end, steps)
    diverged = f"; diverged at lr {result.diverged_at:.2e}" if result.diverged_at else ""
    console.print(f"{len(result.losses)} steps from lr {start:.1e} to {result.lrs[-1]:.2e}, smoothed loss "
                  f"{result.smoothed[0]:.4f} -> min {min(result.smoothed):.4f}{diverged}")
    console.print(f"plot: {result.plot}")
    console.print(f"suggested (steepest descent): --set optim.lr={result.suggestion:.3g}")
