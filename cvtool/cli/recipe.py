"""`cvtool recipe show`: the fully resolved recipe (bases merged, overrides applied).

cvtool's own modules are imported inside the command: `cvtool --help` stays torch-free.
"""

from __future__ import annotations

from typing import Annotated

import typer

from cvtool.cli.common import RecipeArg, SetOpt, console, handle_errors

app = typer.Typer()


@app.command("show")
@handle_errors
def show(recipe: RecipeArg, set_: SetOpt = None,
         model: Annotated[bool, typer.Option("--model", help="Also list the modules model.small_input changes.")] = False,
         ) -> None:
    """Print the resolved recipe as YAML, the optimizer in force per phase, and the sweep's grid points."""
    from rich.syntax import Syntax

    from cvtool.recipe.load import recipe_to_yaml
    from cvtool.runs.inspect import optimizer_lines, small_input_lines
    from cvtool.runs.recipes import expand_sweep, load_recipe

    resolved = load_recipe(recipe, set_ or [])
    console.print(Syntax(recipe_to_yaml(resolved), "yaml", theme="ansi_dark", background_color="default"),
                  soft_wrap=True)
    for line in optimizer_lines(resolved):
        console.print(f"[bold]optimizer[/] {line}", soft_wrap=True)
    if model:
        for line in small_input_lines(resolved):
            console.print(line, soft_wrap=True)
    if resolved.sweep:
        points = expand_sweep(resolved, str(recipe))
        console.print(f"[bold]sweep:[/] {len(points)} runs: " + ", ".join(name for name, _ in points))
        if any(key.split(".")[0] in ("optim", "phases") for key in resolved.sweep):
            for name, point in points:
                for line in optimizer_lines(point):
                    console.print(f"[bold]optimizer[/] {name}: {line}", soft_wrap=True)
