"""Distributed training with torchrun (DDP). Single-process runs get None."""

from __future__ import annotations

import os
from typing import Any


def from_environment(device: str) -> Any:
    """A Dist handle when launched by torchrun with WORLD_SIZE > 1, else None."""
    if int(os.environ.get("WORLD_SIZE", "1")) <= 1:
        return None
    from cvtool.errors import CvtoolError

    raise CvtoolError("distributed training (WORLD_SIZE > 1) is not available in this build")
