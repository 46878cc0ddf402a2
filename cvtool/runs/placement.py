"""Where a new run is written, and what `--overwrite` may remove.

A new run (or sweep) is written into a hidden folder beside its target and moved into place
once it has started: its data read, its model built and its first checkpoint written. Until
then a run that already lives at the target is untouched, and a run that fails leaves nothing
behind. Only a folder cvtool created (it holds the RunDir marker) or an empty one is replaced, and only
what cvtool wrote in it: the user's own files in it move into the new run (ownership.py). Never
one that holds the current folder, the recipe, the data or the home folder. The caller holds the
target's lock (lock.py): staging folders beside the target that are left by a process that died
(`kill -9`) are cleaned on the next run into it.
"""

from __future__ import annotations

import contextlib
import os
import re
import shutil
from collections.abc import Iterable
from dataclasses import dataclass
from pathlib import Path

from cvtool.errors import CvtoolError, WriteError
from cvtool.fileio import make_dirs, write_text
from cvtool.runs.layout import MARKER, RunDir
from cvtool.runs.ownership import reclaim, remove_cvtools

STAGING = re.compile(r"\.(?P<name>.+)\.cvtool-(?P<kind>new|old)-(?P<pid>\d+)")


@dataclass
class Placement:
    """A run being written into `work`, that becomes `final` when `start()` is called."""

    final: Path
    work: Path
    started: bool = False

    @property
    def path(self) -> Path:
        """Where the run's files are now."""
        return self.final if self.started else self.work

    def start(self) -> Path:
        """Move the run into place (replacing the old run there); returns its final path."""
        if not self.started and self.work != self.final:
            _swap(self.work, self.final)
        self.started = True
        return self.final

    def abandon(self) -> None:
        """The run failed before it started: remove what it wrote, keep what was there."""
        if self.started:
            return
        if self.work != self.final:
            shutil.rmtree(self.work, ignore_errors=True)
            return
        remove_cvtools(self.work)  # the folder was empty: a file of the user's put there since stays


def place_run(final: Path, kind: str, *, overwrite: bool, protected: Iterable[Path] = ()) -> Placement:
    """Decide where a new run goes; refuse when that could lose files that are not cvtool's.
    A symlink to a folder is followed: the run replaces the folder it points to."""
    final = Path(os.path.realpath(final)) if Path(final).is_symlink() else Path(final)
    clean_stale(final)
    if final.exists() and not final.is_dir():
        raise CvtoolError(f"{final}: exists and is not a folder; choose another --out")
    if final.is_dir() and any(final.iterdir()):
        run = RunDir(final)
        if not run.is_marked():
            raise CvtoolError(f"{final}: holds files that are not a cvtool run; choose a new or empty --out "
                              "(--overwrite replaces only a folder cvtool wrote)")
        if run.has_results() and not overwrite:
            raise CvtoolError(f"{final}: already holds a run; pass --overwrite to replace it or --resume to continue it")
        refuse_protected(final, protected)
        return _staged(final, kind)
    if final.is_dir():
        mark(final, kind)
        return Placement(final, final)
    return _staged(final, kind)


def refuse_protected(folder: Path, protected: Iterable[Path]) -> None:
    """Never replace the current folder, the home folder, /, or a folder holding any of `protected`."""
    target = folder.resolve()
    named = [(Path.cwd(), "the current folder"), (Path.home(), "the home folder"), (Path("/"), "/")]
    named += [(Path(p), str(p)) for p in protected]
    for path, what in named:
        path = path.resolve()
        if path == target or path.is_relative_to(target):
            reason = what if path == target else f"a parent of {what}"
            raise CvtoolError(f"{folder}: refused to replace it: it is {reason}")


def mark(folder: Path, kind: str) -> None:
    write_text(make_dirs(folder) / MARKER, f"cvtool {kind}\n")


def clean_stale(final: Path) -> None:
    """Staging folders of `final` left by processes that are gone: a new run that never started
    is removed, an old run renamed aside is put back (or its user files moved into `final`)."""
    if not final.parent.is_dir():
        return
    found = [(m, final.parent / m.group(0)) for m in map(STAGING.fullmatch, os.listdir(final.parent))
             if m is not None and m.group("name") == final.name and not _alive(int(m.group("pid")))]
    for match, path in sorted(found, key=lambda item: item[0].group("kind") != "old"):
        if match.group("kind") == "old" and not os.path.lexists(final):
            os.rename(path, final)  # killed between the two renames of a swap: the old run goes back
        elif match.group("kind") == "old":
            reclaim(path, final)
        elif path.is_dir() and not path.is_symlink():
            shutil.rmtree(path, ignore_errors=True)
        else:
            with contextlib.suppress(OSError):
                path.unlink()


def _alive(pid: int) -> bool:
    """A process of another cvtool holds it (this process's own leftovers are stale)."""
    if pid == os.getpid():
        return False
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return False
    except PermissionError:
        return True
    return True


def _staged(final: Path, kind: str) -> Placement:
    work = final.parent / f".{final.name}.cvtool-new-{os.getpid()}"
    if work.is_dir() and RunDir(work).is_marked():  # left by a process that was killed
        shutil.rmtree(work, ignore_errors=True)
    mark(work, kind)
    return Placement(final, work)


def _swap(work: Path, final: Path) -> None:
    """Rename `work` onto `final`; an old run at `final` is renamed aside first, then removed."""
    old = final.parent / f".{final.name}.cvtool-old-{os.getpid()}"
    moved = False
    try:
        if final.is_dir() and any(final.iterdir()):
            os.rename(final, old)
            moved = True
        elif final.is_dir():
            final.rmdir()
        os.rename(work, final)
    except OSError as exc:
        if moved:
            with contextlib.suppress(OSError):
                os.rename(old, final)
        raise WriteError(final, exc) from None
    if moved:
        reclaim(old, final)
