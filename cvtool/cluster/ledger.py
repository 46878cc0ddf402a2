"""DIR/cluster/ of a fold set, sweep or search trained as jobs: which job trains which member
(jobs.json, every submission kept), what each member's job says of itself (members/<name>.json:
host, pid, attempts, state), submitit's folder (logs/: pickles and each job's stdout/stderr), the
recipes of members trained under torchrun (recipes/) and the lock under which a job writes the
set's tables."""

from __future__ import annotations

import contextlib
import json
import os
import socket
import time
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from cvtool.fileio import make_dirs, write_json

CLUSTER = "cluster"
JOBS = "jobs.json"
MEMBERS = "members"
LOGS = "logs"
RECIPES = "recipes"  # each member's recipe, for a member trained by `cvtool train` under torchrun
LOCK = "collect.lock"
TAIL_LINES = 12  # of a failed job's log, shown by `cvtool train --wait` and `cvtool status`


@dataclass(frozen=True)
class Ledger:
    """The cluster folder of the set in `set_dir`."""

    set_dir: Path

    @property
    def folder(self) -> Path:
        return self.set_dir / CLUSTER

    @property
    def jobs_file(self) -> Path:
        return self.folder / JOBS

    @property
    def default_logs(self) -> Path:
        return self.folder / LOGS

    def member_file(self, name: str) -> Path:
        return self.folder / MEMBERS / f"{name}.json"

    def member_recipe(self, name: str) -> Path:
        return self.folder / RECIPES / f"{name}.yaml"

    def read_jobs(self) -> dict[str, Any]:
        """{"kind", "executor", "logs", "jobs": [{"member", "job", "submitted"}, ...]}; {} before any."""
        return _read(self.jobs_file) or {}

    def add_jobs(self, kind: str, executor: str, logs: Path, pairs: list[tuple[str, str]]) -> None:
        """Record the job that now trains each member (appended: older jobs stay listed)."""
        ledger = self.read_jobs()
        jobs = ledger.get("jobs", [])
        jobs += [{"member": member, "job": job, "submitted": round(time.time(), 3)} for member, job in pairs]
        write_json(self.jobs_file, {"kind": kind, "executor": executor, "logs": str(logs), "jobs": jobs})

    def latest_jobs(self) -> dict[str, str]:
        """The job id that last trained (or trains) each member."""
        return {entry["member"]: str(entry["job"]) for entry in self.read_jobs().get("jobs", [])}

    def read_member(self, name: str) -> dict[str, Any]:
        return _read(self.member_file(name)) or {}

    def update_member(self, name: str, **fields: Any) -> None:
        write_json(self.member_file(name), {**self.read_member(name), **fields})

    def member_started(self, name: str, job: str) -> None:
        """Called by the member's job each time it starts (a requeued job starts again)."""
        before = self.read_member(name)
        attempts = before.get("attempts", 0) + 1 if before.get("job") == job else 1
        self.update_member(name, member=name, job=job, host=socket.gethostname(), pid=os.getpid(),
                           state="running", attempts=attempts, started=round(time.time(), 3), ended=None,
                           error=None)

    @contextlib.contextmanager
    def locked(self) -> Iterator[None]:
        """One process at a time (on every host that shares the folder) reads the members'
        results and writes the set's tables: the last one to write has read everything."""
        handle = open(make_dirs(self.folder) / LOCK, "a+")  # noqa: SIM115 (held for the block)
        try:
            try:
                import fcntl
            except ImportError:  # not POSIX: no cluster shares a Windows folder this way
                yield
                return
            fcntl.flock(handle, fcntl.LOCK_EX)
            try:
                yield
            finally:
                fcntl.flock(handle, fcntl.LOCK_UN)
        finally:
            handle.close()


def alive(record: dict[str, Any]) -> bool | None:
    """Whether a member's recorded process still runs: None when it ran on another host."""
    if record.get("host") != socket.gethostname() or not record.get("pid"):
        return None
    try:
        os.kill(int(record["pid"]), 0)
    except ProcessLookupError:
        return False
    except PermissionError:  # someone else's process reuses the pid
        return False
    return True


def log_tail(logs: Path, job: str, lines: int = TAIL_LINES) -> list[str]:
    """The last lines of a job's stderr (its traceback), else of its stdout."""
    for suffix in ("err", "out"):
        path = Path(logs) / f"{job}_0_log.{suffix}"  # submitit's JobPaths: %j_%t_log.{out,err}, task 0
        try:
            text = path.read_text(encoding="utf-8", errors="replace")
        except OSError:
            continue
        kept = [line for line in text.splitlines() if line.strip()]
        if kept:
            return kept[-lines:]
    return []


def _read(path: Path) -> dict[str, Any] | None:
    try:
        data = json.loads(path.read_text(encoding="utf-8"))
    except (OSError, ValueError):
        return None
    return data if isinstance(data, dict) else None
