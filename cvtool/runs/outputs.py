"""A command's output paths, checked before anything is written: never one of its inputs (the same
file under any name), never a file a cvtool run keeps its records in, never an image or label
file of the data, and an output folder never inside a data root (its images would be read as
data next time). Commands writing into a run folder also hold its lock (lock.hold_for_writing)."""

from __future__ import annotations

import os
from collections.abc import Mapping
from pathlib import Path
from typing import TYPE_CHECKING

from cvtool.data.images import is_image_file
from cvtool.errors import CvtoolError
from cvtool.fileio import refuse_input, refuse_inside
from cvtool.runs.layout import MARKER
from cvtool.runs.lock import hold_for_writing
from cvtool.runs.ownership import split_entries

if TYPE_CHECKING:
    from cvtool.recipe.schema import DataConfig

Inputs = Mapping[str, "str | os.PathLike | None"]


def check_file(option: str, out: Path, inputs: Inputs, data: DataConfig | None = None, *, purpose: str) -> None:
    """A file output: not an input, not a run's record, not a file of the data; inside a cvtool
    run, the run's lock is held for `purpose` (the command)."""
    refuse_input(option, out, inputs)
    refuse_run_file(option, out)
    if data is not None:
        refuse_data_file(option, out, data)
    hold_for_writing([out], purpose)


def check_folder(option: str, out: Path, inputs: Inputs, roots: Inputs, *, purpose: str) -> None:
    """A folder output (plots, overlays, thumbnails): not an input, not inside (nor holding) a data
    root; inside a cvtool run, the run's lock is held."""
    refuse_input(option, out, inputs)
    refuse_inside(option, out, roots)
    hold_for_writing([out], purpose)


def refuse_run_file(option: str, out: Path) -> None:
    """`out` must not be a file in which a cvtool run keeps its records (recipe.yaml, metrics.csv,
    checkpoints/best.pt, ...): reports inside eval/ and explain/ may be written over."""
    real = Path(os.path.realpath(out))
    owner = next((folder for folder in real.parents if (folder / MARKER).is_file()), None)  # the innermost run
    if owner is None:
        return
    rel = real.relative_to(owner)
    ours, _ = split_entries(owner)
    if rel in ours and not (owner / rel).is_dir():
        raise CvtoolError(f"{option} {out}: is {rel.as_posix()} of the cvtool run {owner}; choose another path")


def refuse_data_file(option: str, out: Path, data: DataConfig) -> None:
    """`out` must not be a label file the data config reads, nor an image inside its root."""
    from cvtool.data.formats import data_files

    refuse_input(option, out, {f"the data's {Path(path).name}": path for path in data_files(data)})
    root = Path(os.path.realpath(data.root))
    real = Path(os.path.realpath(out))
    if is_image_file(real) and real.is_relative_to(root) and real.exists():
        raise CvtoolError(f"{option} {out}: is an image of the data root {data.root}; choose another path")

