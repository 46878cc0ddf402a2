"""Models: building (`build_model`), surgery, ShakeDrop and freezing.

Names are imported on first use, so `import cvtool.models.registry` (recipe checks) does not
pull in torch.
"""

from __future__ import annotations

import importlib
from typing import TYPE_CHECKING, Any

if TYPE_CHECKING:
    from cvtool.models.build import build_model
    from cvtool.models.freeze import count_parameters, frozen_batchnorm_eval, set_trainable
    from cvtool.models.registry import available_archs, check_arch
    from cvtool.models.shakedrop import ShakeDrop

__all__ = [
    "ShakeDrop",
    "available_archs",
    "build_model",
    "check_arch",
    "count_parameters",
    "frozen_batchnorm_eval",
    "set_trainable",
]

_HOMES = {
    "ShakeDrop": "cvtool.models.shakedrop",
    "available_archs": "cvtool.models.registry",
    "build_model": "cvtool.models.build",
    "check_arch": "cvtool.models.registry",
    "count_parameters": "cvtool.models.freeze",
    "frozen_batchnorm_eval": "cvtool.models.freeze",
    "set_trainable": "cvtool.models.freeze",
}


def __getattr__(name: str) -> Any:
    if name not in _HOMES:
        raise AttributeError(f"module 'cvtool.models' has no attribute '{name}'")
    return getattr(importlib.import_module(_HOMES[name]), name)
