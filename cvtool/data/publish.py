"""Publishing a generated dataset (`cvtool data digits|synthetic DIR`): built in a temp folder
beside DIR and renamed into place, so DIR is never half-written.

Rewriting a folder cvtool generated replaces what the generator writes (the split folders and
CSVs, the class lists, the statistics and the image cache) and keeps the user's own files at
its top; any other non-empty folder is refused, and so are the current and home folders and a
folder inside another generated dataset.
"""

from __future__ import annotations

import os
import shutil
import sys
import tempfile
from collections.abc import Callable
from pathlib import Path
from typing import Any

from cvtool.errors import CvtoolError
from cvtool.fileio import write_json

MARKER = "cvtool-dataset.json"
# what the generators write (any format), and what cvtool adds to a data root: its statistics
# (data/stats.py) and its decoded-image cache (data/cache.py)
GENERATED = frozenset({MARKER, "train", "val", "test", "images", "train.csv", "val.csv", "test.csv", "wnids.txt",
                       "words.txt", "cvtool-stats.json", ".cvtool-cache"})


def publish(out_dir: Path, build: Callable[[Path], dict[str, Any]]) -> dict[str, Any]:
    """Build into a temp folder beside out_dir, then rename it into place."""
    check_target(out_dir)
    out_dir.parent.mkdir(parents=True, exist_ok=True)
    tmp = Path(tempfile.mkdtemp(prefix=f".{out_dir.name}.", suffix=".tmp", dir=out_dir.parent))
    try:
        os.chmod(tmp, 0o755)
        info = {"root": str(out_dir), **build(tmp)}
        info["data"] = {"format": info["format"], "root": str(out_dir), **info["data"]}
        write_json(tmp / MARKER, info)
        if out_dir.exists():
            old = tmp.with_name(tmp.name + ".old")
            os.replace(out_dir, old)
            try:
                os.replace(tmp, out_dir)
            except BaseException:
                os.replace(old, out_dir)  # put the previous dataset back
                raise
            _keep_user_files(old, out_dir)
        else:
            os.replace(tmp, out_dir)
    except BaseException:
        shutil.rmtree(tmp, ignore_errors=True)
        raise
    return info


def check_target(out_dir: Path) -> None:
    if out_dir.exists() and not (out_dir.is_dir() and (not any(out_dir.iterdir()) or (out_dir / MARKER).is_file())):
        raise CvtoolError(f"{out_dir}: exists and is not a dataset cvtool generated; choose another folder")
    real = Path(os.path.realpath(out_dir))
    if Path.cwd().resolve().is_relative_to(real) or Path.home().resolve().is_relative_to(real):
        raise CvtoolError(f"{out_dir}: refused to replace it: it holds the current or the home folder")
    if holder := next((p for p in real.parents if (p / MARKER).is_file()), None):
        raise CvtoolError(f"{out_dir}: lies inside the dataset {holder}, whose images it would add to; "
                          "choose another folder")


def _keep_user_files(old: Path, new: Path) -> None:
    """The user's own entries at the top of the replaced dataset move into the new one; the rest goes."""
    kept = [entry.name for entry in sorted(old.iterdir()) if entry.name not in GENERATED
            and not (entry.name.startswith(".") and entry.name.endswith(".tmp"))]
    try:
        for name in kept:
            os.rename(old / name, new / name)
    except OSError as exc:
        print(f"cvtool: could not move your files into {new} ({exc.strerror}); they are kept in {old}", file=sys.stderr)
        return
    if kept:
        print(f"cvtool: kept {len(kept)} of your files in {new}: {', '.join(kept)}", file=sys.stderr)
    shutil.rmtree(old, ignore_errors=True)
