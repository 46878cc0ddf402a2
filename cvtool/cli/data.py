"""`cvtool data digits|synthetic DIR`: write a ready-to-use dataset and print a recipe snippet.

cvtool's own modules are imported inside the command: `cvtool --help` stays torch-free.
"""

from __future__ import annotations

from pathlib import Path
from typing import Annotated, Any

import typer

from cvtool.cli.common import console, handle_errors

app = typer.Typer(no_args_is_help=True)
DirArg = Annotated[Path, typer.Argument(help="Output folder (replaced if cvtool wrote it before).", show_default=False)]
SeedOpt = Annotated[int, typer.Option("--seed", help="Random seed of the split (and of the images).")]


@app.command("digits")
@handle_errors
def digits(out_dir: DirArg, seed: SeedOpt = 0) -> None:
    """scikit-learn's 1797 real 8x8 handwritten digits as a `folder` dataset (train/val/test)."""
    from cvtool.data.generate import write_digits

    _check_out(out_dir)
    _report(write_digits(out_dir, seed=seed))


@app.command("synthetic")
@handle_errors
def synthetic(
    out_dir: DirArg,
    task: Annotated[str, typer.Option("--task", "-t", help="multiclass | binary | multilabel | keypoints.")] = "multiclass",
    fmt: Annotated[str | None, typer.Option("--format", "-f", help="multiclass: folder | csv | tinyimagenet; others have one format.")] = None,
    n: Annotated[int, typer.Option("--n", help="Number of images (all splits).")] = 120,
    size: Annotated[int, typer.Option("--size", help="Image side in pixels (keypoints: sizes vary around it).")] = 32,
    seed: SeedOpt = 0,
) -> None:
    """A small learnable dataset in the task's real layout, to see (and test) each format."""
    from cvtool.data.generate import write_synthetic

    _check_out(out_dir)
    _report(write_synthetic(out_dir, task, n=n, size=size, seed=seed, format=fmt))


def _check_out(out_dir: Path) -> None:
    """A dataset is never written inside a cvtool run (it would be replaced with the run)."""
    from cvtool.errors import CvtoolError
    from cvtool.runs.lock import owner_of

    if (holder := owner_of(out_dir)) is not None:
        raise CvtoolError(f"{out_dir}: lies inside the cvtool run {holder}; keep data outside run folders")


def _report(info: dict[str, Any]) -> None:
    import yaml
    from rich.syntax import Syntax

    splits = ", ".join(f"{name} {count}" for name, count in info["splits"].items())
    names = info.get("classes") or info.get("targets") or []
    kind = "classes" if "classes" in info else "targets"
    console.print(f"wrote {info['name']} ({info['task']}, format {info['format']}) to {info['root']}: images {splits}", markup=False)
    console.print(f"{len(names)} {kind}: {', '.join(names)}", markup=False)
    snippet = yaml.safe_dump({"task": info["task"], "data": info["data"]}, sort_keys=False, default_flow_style=False)
    console.print("recipe snippet:")
    console.print(Syntax(snippet, "yaml", theme="ansi_dark", background_color="default"))
