"""Atomic writes: a temp file in the same folder, fsync, then rename over the target."""

from __future__ import annotations

import contextlib
import csv
import json
import math
import os
import tempfile
from collections.abc import Iterator, Mapping, Sequence
from pathlib import Path
from typing import IO, Any

from cvtool.errors import CvtoolError, WriteError


@contextlib.contextmanager
def atomic_path(path: str | os.PathLike) -> Iterator[Path]:
    """A temp path beside `path` for a writer that opens files itself; on success, fsync and one
    rename over `path`.

    A read-only folder, a full disk or a missing permission is a WriteError naming `path`:
    the previous file stays as it was and the temp file is removed."""
    target = Path(path)
    tmp = None
    try:
        make_dirs(target.parent)
        fd, tmp = tempfile.mkstemp(prefix=f".{target.name}.", suffix=".tmp", dir=target.parent)
        os.close(fd)
        os.chmod(tmp, 0o666 & ~_UMASK)  # mkstemp makes 0600; results are ordinary files
        yield Path(tmp)
        _fsync_file(tmp)
        os.replace(tmp, target)
    except BaseException as exc:
        if tmp is not None:
            with contextlib.suppress(OSError):
                os.unlink(tmp)
        cause = _os_error(exc)
        if cause is not None and not isinstance(exc, WriteError):
            raise WriteError(target, cause) from None
        raise
    _fsync_dir(target.parent)


@contextlib.contextmanager
def atomic_open(path: str | os.PathLike, mode: str = "w", **kwargs: Any) -> Iterator[IO]:
    """Open a temp file beside `path`; on success it replaces `path` in one rename (atomic_path)."""
    with atomic_path(path) as tmp, open(tmp, mode, **kwargs) as handle:
        yield handle


def _fsync_file(path: str | os.PathLike) -> None:
    fd = os.open(path, os.O_RDONLY)
    try:
        os.fsync(fd)
    finally:
        os.close(fd)


def make_dirs(folder: str | os.PathLike) -> Path:
    """mkdir -p; a folder that cannot be created is a WriteError naming it."""
    folder = Path(folder)
    try:
        folder.mkdir(parents=True, exist_ok=True)
    except OSError as exc:
        raise WriteError(folder, exc) from None
    return folder


def _os_error(exc: BaseException) -> OSError | None:
    """The OSError behind `exc`: itself, or one a library wrapped (torch.save raises a
    RuntimeError whose context is the ENOSPC from the file's write)."""
    seen = 0
    while exc is not None and seen < 8:
        if isinstance(exc, OSError):
            return exc
        exc = exc.__cause__ or exc.__context__
        seen += 1
    return None


def _current_umask() -> int:
    mask = os.umask(0)
    os.umask(mask)
    return mask


_UMASK = _current_umask()


def _fsync_dir(folder: Path) -> None:
    with contextlib.suppress(OSError):
        dir_fd = os.open(folder, os.O_RDONLY)
        try:
            os.fsync(dir_fd)
        finally:
            os.close(dir_fd)


def write_text(path: str | os.PathLike, text: str) -> None:
    with atomic_open(path, "w", encoding="utf-8") as handle:
        handle.write(text)


def write_json(path: str | os.PathLike, data: Any) -> None:
    """Valid JSON (RFC 8259 has no NaN / Infinity): an undefined number is written as null."""
    text = json.dumps(_nulls(data), indent=2, sort_keys=False, default=_json_default, allow_nan=False)
    write_text(path, text + "\n")


def _nulls(obj: Any) -> Any:
    """`obj` with every NaN / infinite float replaced by None."""
    if isinstance(obj, float):
        return obj if math.isfinite(obj) else None
    if isinstance(obj, dict):
        return {key: _nulls(value) for key, value in obj.items()}
    if isinstance(obj, list | tuple):
        return [_nulls(value) for value in obj]
    return obj


def write_csv(path: str | os.PathLike, header: Sequence[str], rows: Sequence[Sequence[Any]]) -> None:
    with atomic_open(path, "w", encoding="utf-8", newline="") as handle:
        writer = csv.writer(handle, lineterminator="\n")  # not csv's \r\n: what submission checkers expect
        writer.writerow(header)
        writer.writerows(rows)


def _json_default(obj: Any) -> Any:
    if hasattr(obj, "tolist"):
        return _nulls(obj.tolist())
    if isinstance(obj, Path):
        return str(obj)
    raise TypeError(f"not JSON serializable: {type(obj).__name__}")


def read_csv_rows(path: Path) -> tuple[list[str], list[dict[str, str]]]:
    """Header and rows of a CSV; comma, tab or semicolon separated (MADE's landmarks are TSV)."""
    with open(path, newline="", encoding="utf-8-sig") as handle:
        first = handle.readline()
        handle.seek(0)
        delimiter = max(",\t;", key=first.count) if first else ","
        reader = csv.DictReader(handle, delimiter=delimiter)
        rows = [{key.strip(): value for key, value in row.items() if key is not None} for row in reader]
        return [name.strip() for name in reader.fieldnames or []], rows


def duplicate(source: str | os.PathLike, path: str | os.PathLike) -> None:
    """`path` atomically replaced by the contents of `source` (a finished, atomically written file):
    a hard link when the filesystem has them (no second write of the bytes, no second fsync), else
    a copy. Safe because every write here replaces a file with a new one (`atomic_open`), so the
    two names part when either is written again."""
    import shutil

    source, target = Path(source), Path(path)
    temp = target.with_name(f".{target.name}.{os.getpid()}.link")
    try:
        with contextlib.suppress(FileNotFoundError):
            temp.unlink()
        os.link(source, temp)
    except OSError:
        with atomic_open(target, "wb") as handle, open(source, "rb") as original:
            shutil.copyfileobj(original, handle)
        return
    try:
        os.replace(temp, target)
    except OSError as exc:
        with contextlib.suppress(OSError):
            temp.unlink()
        raise WriteError(target, exc) from None
    _fsync_dir(target.parent)


def same_path(a: str | os.PathLike, b: str | os.PathLike) -> bool:
    """One file or folder, however spelled: relative or absolute, through a symlink, a hard link."""
    if os.path.realpath(a) == os.path.realpath(b):
        return True
    try:
        return os.path.samefile(a, b)
    except OSError:  # one of them does not exist (yet)
        return False


def refuse_input(option: str, out: str | os.PathLike, inputs: Mapping[str, str | os.PathLike | None]) -> None:
    """An output path that is one of the command's inputs (`what` -> path) is refused before
    anything is written: writing it would replace what the command reads."""
    for what, path in inputs.items():
        if path is not None and same_path(out, path):
            raise CvtoolError(f"{option} {out}: is {what} ({path}), which this command reads; choose another path")


def refuse_inside(option: str, out: str | os.PathLike, roots: Mapping[str, str | os.PathLike | None]) -> None:
    """An output folder must not lie inside a data root, nor hold one: the images it writes (plots,
    overlays, thumbnails) would be read as data next time."""
    target = Path(os.path.realpath(out))
    for what, root in roots.items():
        if root is None:
            continue
        real = Path(os.path.realpath(root))
        if target == real or target.is_relative_to(real):
            raise CvtoolError(f"{option} {out}: lies inside {what} {root}, where its images would be read as data; "
                              "choose a folder outside it")
        if real.is_relative_to(target):
            raise CvtoolError(f"{option} {out}: holds {what} {root}; choose a folder outside it")
