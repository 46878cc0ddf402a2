"""`cvtool stats DATA`: counts, class weights, sizes, modes, channel mean/std, unreadable files.

cvtool's own modules are imported inside the command: `cvtool --help` stays torch-free.
"""

from __future__ import annotations

from collections import Counter
from pathlib import Path
from typing import Annotated, Any

import typer

from cvtool.cli.common import QuietOpt, console, handle_errors, is_tty
from cvtool.errors import CvtoolError, WriteError
from cvtool.fileio import write_json

app = typer.Typer()


@app.command("stats")
@handle_errors
def stats(
    data: Annotated[Path, typer.Argument(help="Data root folder.", show_default=False)],
    recipe: Annotated[Path | None, typer.Option("--recipe", "-r", help="Take format, splits, columns, task and image size from a recipe.")] = None,
    fmt: Annotated[str | None, typer.Option("--format", "-f", help="folder | csv | tinyimagenet (default: folder).")] = None,
    task: Annotated[str | None, typer.Option("--task", "-t", help="multiclass | binary | multilabel | keypoints (default: multiclass).")] = None,
    image_size: Annotated[str | None, typer.Option("--image-size", help="Mean/std at S x S pixels, or 'native' (default: the recipe's, else native).")] = None,
    channels: Annotated[int | None, typer.Option("--channels", help="1 or 3 (default: the recipe's, else 3).")] = None,
    out: Annotated[Path | None, typer.Option("--out", "-o", help="JSON file (default: DATA/cvtool-stats.json).")] = None,
    quiet: QuietOpt = False,
) -> None:
    """Dataset statistics as rich tables and a JSON file (used by `normalize: auto`)."""
    from cvtool.data.stats import STATS_FILE, compute_stats
    from cvtool.runs.outputs import check_file

    cfg, task_name, seed, size = _config(data, recipe, fmt, task, image_size, channels)
    target = out or data / STATS_FILE
    check_file("--out", target, {"the recipe": recipe}, cfg, purpose="stats")
    result = compute_stats(cfg, task_name, seed, size, progress=not quiet and is_tty())
    try:
        write_json(target, result)
    except WriteError as exc:  # a read-only data root
        raise CvtoolError(f"{exc}; pass --out FILE to write the statistics elsewhere" if out is None else str(exc)) from None
    _render(result)
    console.print(f"wrote {target}", markup=False)


def _config(data: Path, recipe: Path | None, fmt: str | None, task: str | None, image_size: str | None,
            channels: int | None) -> tuple[Any, str, int, int | None]:
    """(DataConfig, task, seed, image size or None for native) from the recipe and the options."""
    from cvtool.data.formats import READERS
    from cvtool.data.stats import data_config_for
    from cvtool.runs.recipes import load_recipe
    from cvtool.tasks import get_task

    for flag, value, allowed in (("--format", fmt, tuple(READERS)), ("--channels", channels, (1, 3))):
        if value not in (None, *allowed):
            raise CvtoolError(f"{flag} {value}: use one of {', '.join(map(str, allowed))}")
    if image_size not in (None, "native") and not (image_size.isdigit() and int(image_size) > 0):
        raise CvtoolError(f"--image-size {image_size}: give a positive number of pixels or 'native'")
    size = None if image_size in (None, "native") else int(image_size)
    if recipe is None:
        return data_config_for(data, fmt or "folder", channels or 3), get_task(task or "multiclass").name, 0, size
    loaded = load_recipe(recipe)
    changes = {k: v for k, v in (("root", data), ("format", fmt), ("channels", channels)) if v is not None}
    return (loaded.data.model_copy(update=changes), get_task(task or loaded.task).name, loaded.seed,
            loaded.data.image_size if image_size is None else size)


def _table(title: str, header: list[str], rows: list[list[Any]], limit: int = 50) -> None:  # JSON: all rows
    from rich.markup import escape
    from rich.table import Column, Table

    grid = Table(header[0], *(Column(h, justify="right") for h in header[1:]), title=title, title_justify="left")
    for row in rows[:limit]:
        grid.add_row(*(f"{v:.4f}" if isinstance(v, float) else escape(str(v)) for v in row))
    grid.caption = f"{len(rows) - limit} more rows in the JSON file" if len(rows) > limit else None
    console.print(grid)


def _top(counts: dict[str, int]) -> str:
    return ", ".join(f"{k} ×{v}" for k, v in list(counts.items())[:3]) + (f" (+{len(counts) - 3} more)" if len(counts) > 3 else "")


def _render(result: dict[str, Any]) -> None:
    splits = list(result["splits"])
    bad = Counter(row["split"] for row in result["unreadable"])
    _table("images", ["split", "images", "unreadable"], [[s, result["splits"][s], bad[s]] for s in splits])
    if "classes" in result:
        cls = result["classes"]
        counted, ratio = list(cls["counts"]), cls["imbalance_ratio"]
        extra = f", pos_weight {cls['pos_weight']:.4f}" if cls.get("pos_weight") else ""
        title = f"classes ({cls['count_of']}; imbalance ratio {f'{ratio:.2f}' if ratio else 'inf'}{extra})"
        rows = [[name, *(cls["counts"][s][i] for s in counted), cls["weights"]["inverse"][i],
                 cls["weights"]["sqrt_inverse"][i]] for i, name in enumerate(cls["names"])]
        _table(title, ["class", *counted, "inverse weight", "sqrt_inverse weight"], rows)
    if "targets" in result:
        _table("keypoint targets (train, pixels)", ["column", "min", "mean", "max"],
               [[t["name"], t["min"], t["mean"], t["max"]] for t in result["targets"]])
    _table("image sizes (width x height) and modes", ["split", "sizes", "modes"],
           [[s, _top(result["sizes"][s]), _top(result["modes"][s])] for s in splits])
    if result["channels"]:
        ch, size = result["channels"], result["computed_for"]["image_size"]
        console.print(f"train mean/std at {f'{size} px' if size else 'native size'}: normalize: "
                      f"{{mean: {[round(m, 4) for m in ch['mean']]}, std: {[round(s, 4) for s in ch['std']]}}}", markup=False)
    if result["unreadable"]:
        _table("unreadable files", ["split", "file", "reason"], [list(r.values()) for r in result["unreadable"]])
