"""`cvtool recipe show`: the fully resolved recipe (bases merged, overrides applied).

cvtool's own modules are imported inside the command: `cvtool --help` stays torch-free.
"""

from __future__ import annotations

import typer

from cvtool.cli.common import RecipeArg, SetOpt, console, handle_errors

app = typer.Typer()


@app.command("show")
@handle_errors
def show(recipe: RecipeArg, set_: SetOpt = None) -> None:
    """Print the resolved recipe as YAML, and the sweep's grid points if it has one."""
    from rich.syntax import Syntax

    from cvtool.recipe.load import recipe_to_yaml
    from cvtool.runs.recipes import expand_sweep, load_recipe

    resolved = load_recipe(recipe, set_ or [])
    console.print(Syntax(recipe_to_yaml(resolved), "yaml", theme="ansi_dark", background_color="default"),
                  soft_wrap=True)
    if resolved.sweep:
        points = expand_sweep(resolved, str(recipe))
        console.print(f"[bold]sweep:[/] {len(points)} runs: " + ", ".join(name for name, _ in points))
