"""What in a run folder cvtool wrote: `--overwrite` replaces that and keeps everything else.

cvtool knows every name it writes into a run or sweep (cvtool/runs/layout.py); anything else in
the folder (notes, a notebook, a copied checkpoint, a symlink) is the user's, and is moved into
the run that replaces it. Symlinks are never followed: a link is moved, not what it points to.
"""

from __future__ import annotations

import contextlib
import os
import re
import shutil
import sys
from fnmatch import fnmatch
from pathlib import Path

from cvtool.runs import layout

FILES = frozenset({layout.MARKER, layout.RECIPE, layout.SUMMARY, layout.METRICS, layout.SWEEP, layout.SWEEP_TABLE,
                   layout.FAILED, layout.SAMPLING, layout.FOLDS, layout.FOLDS_TABLE, layout.OOF, layout.EXPORTED,
                   layout.SEARCH, layout.SEARCH_TABLE, layout.TRACKING})
FOLDERS = frozenset({"wandb"})  # W&B's own files (without $WANDB_DIR): all of it is the tracker's
# folders cvtool writes into: the files it writes there (paths relative to the folder)
PATTERNS = {layout.CHECKPOINTS: ("best.pt", "last.pt", "epoch_*.pt"), layout.PLOTS: ("*.png",),
            layout.PREDICTIONS: ("*.npz",), layout.TENSORBOARD: ("events.out.tfevents.*", "*/events.out.tfevents.*"),
            layout.EVAL: ("*/metrics.json", "*/per_class.csv", "*/*.png", f"*/{layout.CHECKPOINT_TABLE}",
                          f"*/{layout.CHECKPOINT_METRICS}", f"*/{layout.CALIBRATION}"),
            layout.EXPLAIN: ("*.png", "explain.csv")}
# temp files of atomic writes cut short, Optuna's journal and its lock, staging and lock files
HIDDEN = (".*.tmp", f"{layout.SEARCH_JOURNAL}*", ".*.cvtool-new-*", ".*.cvtool-old-*", ".*.cvtool-lock")
NESTED = re.compile(rf"{layout.FOLD_PREFIX}\d+|trial_\d+")  # runs inside a run: folds, trials


def split_entries(folder: Path) -> tuple[list[Path], list[Path]]:
    """(cvtool's, the user's): paths relative to `folder`, a run or sweep; a folder of the user's
    is one entry, and so is one cvtool writes whole (eval/, tensorboard/)."""
    ours: list[Path] = []
    theirs: list[Path] = []
    _walk(folder, Path(), ours, theirs)
    return ours, theirs


def _walk(root: Path, prefix: Path, ours: list[Path], theirs: list[Path]) -> None:
    """Sort the entries of the run folder root/prefix (a sweep's points are marked folders; a
    cvtool run of the user's inside a run is the user's)."""
    sweep = _kind(root / prefix) == "sweep"
    with os.scandir(root / prefix) as entries:
        for entry in sorted(entries, key=lambda e: e.name):
            rel = prefix / entry.name
            folder = entry.is_dir(follow_symlinks=False)
            if folder and entry.name in PATTERNS:
                _walk_patterns(root, rel, PATTERNS[entry.name], ours, theirs)
            elif folder and (NESTED.fullmatch(entry.name) or (sweep and _kind(Path(entry.path)) is not None)):
                _walk(root, rel, ours, theirs)
            elif folder:
                (ours if entry.name in FOLDERS else theirs).append(rel)
            else:
                cvtools = entry.name in FILES or any(fnmatch(entry.name, p) for p in HIDDEN)
                (ours if cvtools else theirs).append(rel)


def _kind(folder: Path) -> str | None:
    """What the marker says the folder is (run, sweep, search), None without one."""
    try:
        return (folder / layout.MARKER).read_text(encoding="utf-8").split()[-1]
    except (OSError, IndexError, UnicodeDecodeError):
        return None


def _walk_patterns(root: Path, prefix: Path, patterns: tuple[str, ...], ours: list[Path], theirs: list[Path],
                   inner: Path = Path()) -> None:
    """A folder cvtool writes into (checkpoints/, eval/): its files matching `patterns` are cvtool's."""
    with os.scandir(root / prefix / inner) as entries:
        listed = sorted(entries, key=lambda e: e.name)
    if not listed and inner != Path():
        theirs.append(prefix / inner)  # an empty folder of the user's
    for entry in listed:
        rel = inner / entry.name
        if entry.is_dir(follow_symlinks=False):
            _walk_patterns(root, prefix, patterns, ours, theirs, rel)
            continue
        cvtools = entry.is_file(follow_symlinks=False) and (
            any(fnmatch(rel.as_posix(), p) for p in patterns) or fnmatch(entry.name, ".*.tmp"))
        (ours if cvtools else theirs).append(prefix / rel)


def move_user_files(old: Path, new: Path) -> list[Path]:
    """Move the user's entries of the run `old` to the same places in `new` (a name the new run
    took gets `.kept`); returns them, relative. An OSError leaves the rest in `old`."""
    _, theirs = split_entries(old)
    for rel in theirs:
        target = new / rel
        while os.path.lexists(target):
            target = target.with_name(f"{target.name}.kept")
        target.parent.mkdir(parents=True, exist_ok=True)
        os.rename(old / rel, target)
    return theirs


def reclaim(old: Path, final: Path) -> None:
    """An old run renamed aside for `final`'s replacement: the user's files move into `final`,
    the rest is removed; a line says what was kept (and, when a move fails, where it all is)."""
    if old.is_symlink():  # a link to the old run (never followed): the run it points to stays
        old.unlink()
        return
    try:
        kept = move_user_files(old, final)
    except OSError as exc:
        _say(f"could not move your files from the replaced run into {final} ({exc.strerror or exc}); "
             f"they are kept in {old}")
        return
    if kept:
        shown = ", ".join(p.as_posix() for p in kept[:10]) + (f" (+{len(kept) - 10} more)" if len(kept) > 10 else "")
        _say(f"--overwrite kept {len(kept)} of your files in {final}: {shown}")
    shutil.rmtree(old, ignore_errors=True)


def remove_cvtools(folder: Path) -> None:
    """Remove what cvtool wrote into `folder` (a run that failed before it started), keep the rest."""
    ours, _ = split_entries(folder)
    for rel in ours:
        path = folder / rel
        with contextlib.suppress(OSError):
            shutil.rmtree(path) if path.is_dir() and not path.is_symlink() else path.unlink()
    holders = {parent for rel in ours for parent in rel.parents if parent != Path()}
    for parent in sorted(holders, key=lambda p: -len(p.parts)):  # checkpoints/, a fold: once empty
        with contextlib.suppress(OSError):
            os.rmdir(folder / parent)


def _say(message: str) -> None:
    print(f"cvtool: {message}", file=sys.stderr, flush=True)
