"""SIGINT/SIGTERM during training: stop at the next batch boundary, keep a resumable last.pt."""

from __future__ import annotations

import contextlib
import signal
from collections.abc import Iterator

EXIT_CODES = {signal.SIGINT: 130, signal.SIGTERM: 143}


class StopFlag:
    def __init__(self) -> None:
        self.signum: int | None = None

    def __call__(self) -> bool:
        return self.signum is not None

    @property
    def exit_code(self) -> int:
        return EXIT_CODES.get(self.signum, 1) if self.signum is not None else 0


@contextlib.contextmanager
def stop_on_signals() -> Iterator[StopFlag]:
    """Within the block, SIGINT/SIGTERM set the flag instead of killing the process;
    a second signal kills it at once."""
    flag = StopFlag()
    previous = {}

    def handler(signum: int, frame: object) -> None:
        if flag.signum is not None:
            signal.signal(signum, signal.SIG_DFL)
            signal.raise_signal(signum)
        flag.signum = signum

    for sig in EXIT_CODES:
        try:
            previous[sig] = signal.signal(sig, handler)
        except ValueError:  # not the main thread (e.g. some test runners)
            pass
    try:
        yield flag
    finally:
        for sig, old in previous.items():
            signal.signal(sig, old)
