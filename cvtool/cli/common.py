"""Shared CLI pieces: error handling (one red line, exit 2), console, common options."""

from __future__ import annotations

import functools
import os
import sys
from collections.abc import Callable
from pathlib import Path
from typing import Annotated, Any, TypeVar

import typer
from rich.console import Console, ConsoleRenderable, RenderHook

from cvtool.errors import CvtoolError

# Not a terminal (CI logs, `make demo | tee`): rich would wrap at 80 columns; there lines get a
# width no cvtool table reaches, and a table's title stays one line instead of wrapping at the
# table's width.
LOG_WIDTH = 240


class _OneLineTitles(RenderHook):
    def __init__(self, target: Console) -> None:
        self.target = target

    def process_renderables(self, renderables: list[ConsoleRenderable]) -> list[ConsoleRenderable]:
        if not self.target.is_terminal:
            from rich.table import Table  # here, not at import: `cvtool --help` stays fast
            from rich.text import Text

            for item in renderables:
                if isinstance(item, Table) and isinstance(item.title, str):
                    title = Text.from_markup(item.title)
                    title.no_wrap, title.overflow = True, "ignore"
                    item.title = title
        return renderables


def _console(stderr: bool = False) -> Console:
    stream = sys.stderr if stderr else sys.stdout
    plain = not stream.isatty() and "COLUMNS" not in os.environ
    made = Console(stderr=stderr, highlight=False, width=LOG_WIDTH if plain else None)
    made.push_render_hook(_OneLineTitles(made))
    return made


console = _console()
err_console = _console(stderr=True)

F = TypeVar("F", bound=Callable[..., Any])

SetOpt = Annotated[
    list[str] | None,
    typer.Option("--set", "-s", help="Override a recipe key, e.g. --set optim.lr=0.05 (repeatable)."),
]
QuietOpt = Annotated[bool, typer.Option("--quiet", "-q", help="No progress bars; plain lines for log files.")]
RecipeArg = Annotated[Path, typer.Argument(help="Recipe YAML file.", show_default=False)]
ModelArg = Annotated[Path, typer.Argument(help="Run directory or checkpoint (.pt).", show_default=False)]
CheckpointOpt = Annotated[str, typer.Option("--checkpoint", "-c", help="In a run dir: best, last or epoch_046.")]
SplitOpt = Annotated[str, typer.Option("--split", help="Split to evaluate: val or test (train works too).")]
DataOpt = Annotated[Path | None, typer.Option("--data", help="Another data root with the recipe's layout.")]


def fail(message: str, code: int = 2) -> None:
    err_console.print(f"[bold red]cvtool:[/] {message}", soft_wrap=True, markup=True)
    raise typer.Exit(code)


def handle_errors(fn: F) -> F:
    """Turn CvtoolError (and bad-input OS errors) into one red line and exit code 2; the run
    folders the command locked are released when it ends."""

    @functools.wraps(fn)
    def wrapper(*args: Any, **kwargs: Any) -> Any:
        from cvtool.runs.lock import scope

        try:
            with scope():
                return fn(*args, **kwargs)
        except CvtoolError as exc:
            fail(_escape(str(exc)), exc.exit_code)
        except OSError as exc:  # a missing file, a read-only folder or a full disk outside cvtool.fileio
            name = exc.filename or ""
            fail(_escape(f"{name}: {exc.strerror or exc}"))
        except MemoryError:  # an allocation larger than the host's memory: a size the input asked for
            fail("out of host memory (an allocation failed): smaller sizes help, e.g. data.batch_size, "
                 "data.image_size, data.cache: disk")
        except KeyboardInterrupt:
            err_console.print("[red]cvtool: interrupted[/]")
            raise typer.Exit(130) from None

    return wrapper  # type: ignore[return-value]


def _escape(text: str) -> str:
    from rich.markup import escape

    return escape(text)


def is_tty() -> bool:
    return sys.stderr.isatty()
