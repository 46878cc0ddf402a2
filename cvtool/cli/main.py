"""The `cvtool` app: it only assembles the per-command Typer apps (imports stay light)."""

from __future__ import annotations

import typer

from cvtool import __version__
from cvtool.cli import (
    bench,
    cache,
    collect,
    data,
    doctor,
    evaluate,
    explain,
    export,
    lr_find,
    predict,
    recipe,
    report,
    stats,
    status,
    train,
    tta,
    weights,
)

app = typer.Typer(
    name="cvtool",
    help="Computer-vision training experiments from YAML recipes.",
    no_args_is_help=True,
    add_completion=False,
    pretty_exceptions_enable=False,
)


def _version(value: bool) -> None:
    if value:
        typer.echo(f"cvtool {__version__}")
        raise typer.Exit()


@app.callback()
def _root(version: bool = typer.Option(False, "--version", callback=_version, is_eager=True,
                                       help="Print the version and exit.")) -> None:
    """Computer-vision training experiments from YAML recipes."""


app.add_typer(recipe.app, name="recipe", help="Inspect recipes.")
app.add_typer(data.app, name="data", help="Write example datasets: real digits, synthetic sets per task.")
app.add_typer(stats.app)
app.add_typer(doctor.app)
app.add_typer(train.app)
app.add_typer(status.app)
app.add_typer(collect.app)
app.add_typer(lr_find.app)
app.add_typer(evaluate.app)
app.add_typer(tta.app)
app.add_typer(explain.app)
app.add_typer(export.app)
app.add_typer(predict.app)
app.add_typer(report.app)
app.add_typer(bench.app, name="bench", help="Performance figures with their targets: train, predict, startup.")
app.add_typer(cache.app, name="cache", help="The decode cache later runs on the same data read: list it, clear it.")
app.add_typer(weights.app, name="weights", help="Pretrained weights: fetch into the cache ahead of time, list what is cached.")


def main() -> None:
    app()
