"""Who owns a run folder: an OS lock (`flock`) on a hidden file beside it, `.NAME.cvtool-lock`.

A writer of a run folder (train, its sweeps and folds, evaluate / explain / export writing into
it, threshold tuning and calibration updating its checkpoints) holds the lock exclusively while
it works; the processes of one search share it. The kernel releases it when the process ends,
`kill -9` included, so nothing is left to clean up. The holder writes its pid and what it does
into the file, so a refusal names it. Readers (predict, report) take nothing.

The lock is keyed by the folder's resolved path, so two spellings of one folder (relative,
absolute, through a symlink) are one lock; it lies beside the folder because a new run is
written into a staging folder beside it and renamed into place. A folder inside a run (a fold,
a sweep point, a trial) is covered by the lock of the outermost run holding it.
"""

from __future__ import annotations

import contextlib
import errno
import fcntl
import os
import time
from collections.abc import Callable, Iterator
from dataclasses import dataclass, field
from pathlib import Path

from cvtool.errors import CvtoolError
from cvtool.fileio import make_dirs
from cvtool.runs.layout import MARKER

SUFFIX = ".cvtool-lock"
SETUP = "search-setup"  # a search process creating or checking its folder: the others wait for it
SETUP_WAIT_S = 120.0
# A cluster job's process (and torchrun's under it) shares its set's lock with the driver and the
# other jobs: the lock file of that set, named here by the job (cluster/job.py).
SHARED_ENV = "CVTOOL_SHARED_LOCK"
# A child process its holder waits for (the tracker's ONNX export of the run) writes under the
# holder's lock: the lock file named here (`for_child`).
INHERITED_ENV = "CVTOOL_INHERITED_LOCK"


@dataclass
class _Held:
    fd: int
    is_file: bool  # False: the run folder itself is locked (its parent is read-only)
    count: int = 1


@dataclass
class _Scope:
    keys: list[Path] = field(default_factory=list)


_HELD: dict[Path, _Held] = {}
_SCOPES: list[_Scope] = []


def lock_path(folder: Path) -> Path:
    """The lock file of `folder`: beside its resolved path."""
    real = Path(os.path.realpath(folder))
    return real.parent / f".{real.name}{SUFFIX}"


def owner_of(path: Path) -> Path | None:
    """The outermost cvtool run or sweep holding `path` (itself included), or None."""
    real = Path(os.path.realpath(path))
    found = None
    for folder in (real, *real.parents):
        if (folder / MARKER).is_file():
            found = folder
    return found


def hold(folder: Path, purpose: str) -> None:
    """Hold `folder`'s lock exclusively until the current scope ends (else the process ends);
    another holder is one line naming its pid."""
    key = lock_path(folder)
    if _reenter(key):
        return
    if os.environ.get(INHERITED_ENV) == str(key):
        return
    if os.environ.get(SHARED_ENV) == str(key):
        return join(folder, lambda alone: None, purpose=purpose)
    fd, is_file, locked = _lock(key, folder, fcntl.LOCK_EX)
    if not locked:
        os.close(fd)
        raise CvtoolError(f"{folder}: in use by {_holder(key)}; wait until it ends, or write elsewhere")
    if fd is not None:
        _register(key, fd, is_file, purpose)


def for_child(folder: Path) -> dict[str, str]:
    """The environment of a child process that this process waits for while it holds the lock of
    the run holding `folder`: the child writes there under that lock."""
    return {**os.environ, INHERITED_ENV: str(lock_path(owner_of(folder) or folder))}


def hold_for_writing(paths: list[Path | None], purpose: str) -> None:
    """Before writing `paths`: hold the lock of every cvtool run they lie in."""
    owners = {owner for path in paths if path is not None for owner in [owner_of(path)] if owner is not None}
    for owner in sorted(owners):
        hold(owner, purpose)


def join(folder: Path, setup: Callable[[bool], None], wait_s: float = SETUP_WAIT_S, purpose: str = "search") -> None:
    """Hold `folder`'s lock shared with the other processes of one search, or of one set run as
    cluster jobs (its driver and jobs; `purpose` names them to a refused writer). `setup(alone)` runs
    first: alone (True) while this process holds the lock exclusively, so the folder is created
    and marked by exactly one of several processes started together; False when others already
    share it (the folder is set up). A writer that is not a search is one line naming its pid."""
    key = lock_path(folder)
    if _reenter(key):
        return setup(False)
    deadline = time.monotonic() + wait_s
    while True:
        for mode in (fcntl.LOCK_EX, fcntl.LOCK_SH):
            fd, is_file, locked = _lock(key, folder, mode)
            if fd is None:
                return setup(True)  # nothing to lock here (a read-only place): the writes will say so
            if locked:
                return _joined(key, fd, is_file, mode == fcntl.LOCK_EX, setup, folder, purpose)
            os.close(fd)
        holder = _read(key)
        if (holder and not holder.endswith(SETUP)) or time.monotonic() > deadline:
            raise CvtoolError(f"{folder}: in use by {_holder(key)}; wait until it ends, or write elsewhere")
        time.sleep(0.05)


def _joined(key: Path, fd: int, is_file: bool, alone: bool, setup: Callable[[bool], None], folder: Path,
            purpose: str) -> None:
    _register(key, fd, is_file, SETUP if alone else purpose)
    try:
        setup(alone)
        if alone and not _try(fd, fcntl.LOCK_SH):  # let the others in
            raise CvtoolError(f"{folder}: in use by {_holder(key)}; wait until it ends, or write elsewhere")
        _write(fd, purpose)
    except BaseException:
        _release(key, all_of_it=True)
        raise


@contextlib.contextmanager
def scope() -> Iterator[None]:
    """Locks taken inside are released when it ends (one CLI command, one `run_recipe` call)."""
    _SCOPES.append(_Scope())
    try:
        yield
    finally:
        for key in reversed(_SCOPES.pop().keys):
            _release(key)


def _reenter(key: Path) -> bool:
    """This process holds it already (a fold of the fold set it trains, a test calling twice)."""
    if key not in _HELD:
        return False
    if _SCOPES:  # without a scope it is held for the process's life anyway
        _HELD[key].count += 1
        _SCOPES[-1].keys.append(key)
    return True


def _lock(key: Path, folder: Path, mode: int) -> tuple[int | None, bool, bool]:
    """(descriptor, is the lock file, locked): the lock file's flock in `mode` without waiting; a
    file its last holder removed meanwhile is opened again. None: nothing to lock (see _open)."""
    while True:
        fd, is_file = _open(key, folder)
        if fd is None or not _try(fd, mode):
            return fd, is_file, fd is None
        if not is_file or _same_file(fd, key):
            return fd, is_file, True
        os.close(fd)


def _same_file(fd: int, key: Path) -> bool:
    try:
        mine, now = os.fstat(fd), os.stat(key)
    except FileNotFoundError:
        return False
    return (mine.st_dev, mine.st_ino) == (now.st_dev, now.st_ino)


def _open(key: Path, folder: Path) -> tuple[int | None, bool]:
    """A descriptor to lock: the lock file (created beside the folder), else, where its folder is
    read-only, the run folder itself; None where neither exists (nothing can be written there)."""
    make_dirs(key.parent)
    for path, flags in ((key, os.O_RDWR | os.O_CREAT), (key, os.O_RDONLY), (Path(folder), os.O_RDONLY)):
        try:
            return os.open(path, flags | os.O_CLOEXEC, 0o666), path == key
        except OSError as exc:
            if exc.errno not in (errno.EACCES, errno.EPERM, errno.EROFS, errno.ENOENT):
                raise
    return None, False


def _try(fd: int, mode: int) -> bool:
    try:
        fcntl.flock(fd, mode | fcntl.LOCK_NB)
    except BlockingIOError:
        return False
    except OSError as exc:  # a file system without flock: nothing to coordinate with
        if exc.errno in (errno.ENOLCK, errno.EOPNOTSUPP, errno.ENOSYS, errno.EBADF):
            return True
        raise
    return True


def _register(key: Path, fd: int, is_file: bool, purpose: str) -> None:
    _HELD[key] = _Held(fd, is_file)
    if _SCOPES:
        _SCOPES[-1].keys.append(key)
    _write(fd, purpose)


def _write(fd: int, purpose: str) -> None:
    with contextlib.suppress(OSError):  # opened read-only: the holder stays unnamed
        text = f"{os.getpid()} {purpose}\n".encode()
        os.ftruncate(fd, 0)
        os.pwrite(fd, text, 0)


def _release(key: Path, all_of_it: bool = False) -> None:
    held = _HELD.get(key)
    if held is None:
        return
    held.count = 0 if all_of_it else held.count - 1
    if held.count > 0:
        return
    del _HELD[key]
    if held.is_file and _try(held.fd, fcntl.LOCK_EX):  # the last holder removes the file (others re-check it)
        with contextlib.suppress(OSError):
            os.unlink(key)
    os.close(held.fd)  # closing the descriptor releases the flock


def _read(key: Path) -> str:
    try:
        return key.read_text(encoding="utf-8", errors="replace").strip()
    except OSError:
        return ""


def _holder(key: Path) -> str:
    """'cvtool process 1234 (train)': the holder's own line, read again while it is being written."""
    for _ in range(20):
        pid, _, purpose = _read(key).partition(" ")
        if pid.isdigit():
            return f"cvtool process {pid} ({purpose or 'writing'})"
        time.sleep(0.025)
    return "another cvtool process"
