"""Decoding behind the training: one thread decodes the images no batch has asked for yet, so
that the val and test splits are ready when training reaches them, and commits each split's
cache entry as soon as it is whole.

The thread runs at the lowest CPU priority (Linux sets it per thread): it takes only what the
training leaves idle. On a CPU-bound run it mostly waits and the loader decodes what each batch
needs; on a GPU run the host is mostly idle and the filler keeps ahead. Whichever decodes a row
first, its pixels are the same. `finish` decodes whatever is left after the first epoch and raises an unreadable image
then, under `data.on_bad_image: fail` (the loader raises one it reads earlier).
"""

from __future__ import annotations

import contextlib
import os
import sys
import threading

import numpy as np

from cvtool.data.decoding import UNREADABLE, Decoded
from cvtool.errors import BadImageError

CHUNK = 32  # rows per step: the thread looks for a stop request this often


class Filler:
    """Decodes `decodes` (in this order) in a daemon thread; `stop` ends it and commits what is whole."""

    def __init__(self, decodes: list[Decoded], raise_unreadable: bool = True) -> None:
        self.decodes = [d for d in decodes if not d.complete or (d.writer is not None and not d.writer.done)]
        self.raise_unreadable = raise_unreadable  # data.on_bad_image: fail
        self.stopping = threading.Event()
        self.thread = threading.Thread(target=self._run, name="cvtool-filler", daemon=True)

    def start(self) -> Filler:
        for decoded in self.decodes:
            decoded.filled_behind = True
        if self.decodes:
            self.thread.start()
        return self

    def _run(self) -> None:
        _lowest_priority()
        for decoded in self.decodes:
            todo = np.flatnonzero(decoded.state == 0)
            for start in range(0, len(todo), CHUNK):
                if self.stopping.is_set():
                    return
                rows = todo[start:start + CHUNK]
                decoded.decode_rows(rows[decoded.state[rows] == 0], parallel=False)
            decoded.commit_if_complete()

    def finish(self) -> None:
        """End the thread, decode every image left (on the thread pool), raise the first unreadable
        one under `data.on_bad_image: fail`, and commit the cache entries. The run calls this after
        its first epoch: a bad image stops it then at the latest, and the next run finds the entries."""
        self.stop()
        for decoded in self.decodes:
            decoded.decode_rows(np.flatnonzero(decoded.state == 0))
            bad = np.flatnonzero(decoded.state == UNREADABLE)
            if len(bad) and self.raise_unreadable:
                row = int(bad[0])
                raise BadImageError(decoded.split.paths[row], decoded.reasons.get(row, "unreadable"))
            decoded.commit_if_complete()

    def stop(self) -> None:
        """End the thread (after its current chunk) and commit every split that is whole."""
        self.stopping.set()
        if self.thread.is_alive():
            self.thread.join()
        for decoded in self.decodes:
            decoded.filled_behind = False
            decoded.commit_if_complete()


def _lowest_priority() -> None:
    """Nice 19 for this thread alone (Linux: a thread is a task with its own nice value; elsewhere
    setpriority would renice the whole process, so it is left alone)."""
    if sys.platform.startswith("linux"):
        with contextlib.suppress(OSError, AttributeError):
            os.setpriority(os.PRIO_PROCESS, threading.get_native_id(), 19)
