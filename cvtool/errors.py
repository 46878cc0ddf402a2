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
