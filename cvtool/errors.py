"""User-facing errors: the CLI prints them as one red line and exits with code 2."""


class CvtoolError(Exception):
    """A mistake in the user's input (recipe, data, file); never an internal bug."""

    exit_code = 2


class BadImageError(CvtoolError):
    """An image file that cannot be decoded; carries the path and the reason."""

    def __init__(self, path: object, reason: str) -> None:
        super().__init__(f"{path}: unreadable image ({reason})")
        self.path = str(path)
        self.reason = reason


class WriteError(CvtoolError, OSError):
    """A file or folder that cannot be written (read-only, full, no permission): names the path
    and the reason. Also an OSError, so code that tolerates a failed optional write still does."""

    def __init__(self, path: object, exc: OSError) -> None:
        reason = exc.strerror or str(exc) or type(exc).__name__
        CvtoolError.__init__(self, f"{path}: cannot write ({reason})")
        self.errno, self.strerror, self.filename = exc.errno, reason, str(path)

    def __str__(self) -> str:
        return str(self.args[0])


class NonFiniteError(CvtoolError):
    """Training stopped on a NaN or infinite loss or model output (the last good checkpoint is kept)."""
