"""`cvtool cache list` / `cvtool cache clear`: the persistent decode cache (data.cache), where
later runs on the same files find their images decoded. Torch-free."""

from __future__ import annotations

import time
from typing import Annotated

import typer

from cvtool.cli.common import console, handle_errors

app = typer.Typer(no_args_is_help=True)


def _size(count: float) -> str:
    for unit in ("B", "KB", "MB", "GB"):
        if count < 1024 or unit == "GB":
            return f"{count:.0f} {unit}" if unit == "B" else f"{count:.1f} {unit}"
        count /= 1024
    return ""


def _age(seconds: float) -> str:
    for unit, length in (("d", 86400), ("h", 3600), ("min", 60)):
        if seconds >= length:
            return f"{seconds / length:.0f} {unit} ago"
    return "just now"


@app.command("list")
@handle_errors
def list_() -> None:
    """Show the decoded splits in the cache: split, data folder, images, size, last used."""
    from rich.table import Table

    from cvtool.data.cache_store import decoded_folder, entries

    folder = decoded_folder()
    found = entries(folder)
    total = sum(entry.nbytes for entry in found)
    console.print(f"decode cache: {folder} ({len(found)} entries, {_size(total)}; set CVTOOL_CACHE_DIR to move it)",
                  soft_wrap=True)
    if not found:
        return
    table = Table("entry", "split", "data", "images", "size", "last used")
    now = time.time()
    for entry in found:
        info = entry.info()
        shape = info.get("shape") or ["?"]
        pixels = f"{shape[1]} px" if len(shape) > 2 else ""
        table.add_row(entry.key, str(info.get("split", "?")), str(info.get("root", "?")), f"{shape[0]} at {pixels}",
                      _size(entry.nbytes), _age(now - entry.last_used))
    console.print(table)


@app.command("clear")
@handle_errors
def clear(
    older_than: Annotated[float | None, typer.Option(
        "--older-than", help="Only entries last used more than this many days ago.")] = None,
) -> None:
    """Remove decoded splits from the cache (a run decodes its images again, once)."""
    from cvtool.data.cache_store import decoded_folder, entries, evict, remove

    folder = decoded_folder()
    now = time.time()
    chosen = [e for e in entries(folder) if older_than is None or now - e.last_used > older_than * 86400]
    freed = sum(entry.nbytes for entry in chosen)
    for entry in chosen:
        remove(entry)
    evict(folder, float("inf"))  # and temp files of runs that died while writing one
    console.print(f"removed {len(chosen)} entries ({_size(freed)}) from {folder}", soft_wrap=True)
