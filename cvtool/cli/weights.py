"""`cvtool weights fetch ARCH` / `cvtool weights list`: fill and show the weights caches ahead of
time (for machines without internet: fetch where there is network, copy the cache over)."""

from __future__ import annotations

from typing import Annotated

import typer

from cvtool.cli.common import console, handle_errors

app = typer.Typer(no_args_is_help=True)


def _size(count: int) -> str:
    for unit in ("B", "KB", "MB"):
        if count < 1024:
            return f"{count:.0f} {unit}" if unit == "B" else f"{count:.1f} {unit}"
        count /= 1024  # type: ignore[assignment]
    return f"{count:.2f} GB"


@app.command("fetch")
@handle_errors
def fetch(
    arch: Annotated[str, typer.Argument(help="Architecture: a torchvision name (resnet50) or timm/<name>.", show_default=False)],
    weights: Annotated[str | None, typer.Option("--weights", "-w", help="Weights name: imagenet (default), IMAGENET1K_V2, a timm tag, hf-hub:org/repo.")] = None,
) -> None:
    """Download an architecture's published weights into the torch / Hugging Face cache."""
    from cvtool.models.pretrained import fetch_weights

    spec, downloaded = fetch_weights(arch, weights)
    state = "downloaded" if downloaded else "already cached"
    console.print(f"{state}: {spec.label()} -> {spec.file} ({_size(spec.file.stat().st_size)})", soft_wrap=True)


@app.command("list")
@handle_errors
def list_() -> None:
    """Show the cached weights files with their sizes (torch.hub's cache, then the Hugging Face Hub's)."""
    from rich.table import Table

    from cvtool.models.pretrained import list_cached
    from cvtool.models.weights import hf_cache_dir, torch_checkpoints_dir

    rows = list_cached()
    console.print(f"torch cache: {torch_checkpoints_dir()}\nhub cache: {hf_cache_dir()}", soft_wrap=True)
    if not rows:
        console.print("no cached weights")
        return
    table = Table("source", "weights", "size", "path")
    for row in rows:
        table.add_row(row["source"], row["name"], _size(row["bytes"]), row["path"])
    console.print(table)
