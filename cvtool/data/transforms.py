"""Recipe augmentations: torchvision.transforms.v2 class names with kwargs, built recursively,
plus cvtool's own v2 transforms named the same way (`CVTOOL_TRANSFORMS`: `CLAHE`).

Images stay uint8 (0-255) through augmentation, so value parameters use that scale
(RandomSolarize threshold 102 is 0.4 of the range). Keypoints ride along as
tv_tensors.KeyPoints; three reference points reveal the affine map each call applied,
which tells whether the image was mirrored (then `flip_pairs` are swapped) and lets TTA
map predictions back to the original frame.
"""

from __future__ import annotations

from collections.abc import Sequence
from typing import Any

import numpy as np

from cvtool.errors import CvtoolError
from cvtool.registry import suggest

GEOMETRIC = {
    "RandomHorizontalFlip", "RandomVerticalFlip", "RandomAffine", "RandomRotation", "RandomPerspective",
    "RandomResizedCrop", "RandomCrop", "CenterCrop", "Pad", "RandomZoomOut", "ElasticTransform",
    "RandomApply", "RandomChoice", "RandomOrder", "Compose", "Resize",
}
CONTAINERS = {"RandomApply", "RandomChoice", "RandomOrder", "Compose"}
# Policies whose geometric operations (rotate, shear, translate) move the image but not the
# keypoints riding along: refused for point targets.
POINT_BLIND = {"RandAugment", "TrivialAugmentWide", "AutoAugment", "AugMix"}
# cvtool's v2 transforms for what torchvision lacks: name -> module defining the class. Not in
# `batch_augment.BATCHED`, so they run per sample under the sample's seed.
CVTOOL_TRANSFORMS = {"CLAHE": "cvtool.data.clahe"}


def _v2() -> Any:
    from torchvision.transforms import v2

    return v2


def transform_names() -> list[str]:
    v2 = _v2()
    hidden = {"Transform", "Lambda"}  # arbitrary code has no place in a recipe
    return sorted({n for n in dir(v2) if n not in hidden and isinstance(getattr(v2, n), type)
                   and issubclass(getattr(v2, n), v2.Transform)} | set(CVTOOL_TRANSFORMS))


def transform_class(name: str) -> type:
    """The class a recipe's transform name stands for (a v2 class, or one of cvtool's)."""
    if name in CVTOOL_TRANSFORMS:
        import importlib

        return getattr(importlib.import_module(CVTOOL_TRANSFORMS[name]), name)
    return getattr(_v2(), name)


def build_transform(spec: Any, where: str) -> Any:
    """One {ClassName: kwargs} mapping -> a v2 transform; nested `transforms:` lists are built too."""
    if not isinstance(spec, dict) or len(spec) != 1:
        raise CvtoolError(f"{where}: each transform is a one-key mapping, e.g. {{RandomHorizontalFlip: {{p: 0.5}}}}")
    (name, kwargs), = spec.items()
    names = transform_names()
    if name not in names:
        raise CvtoolError(f"{where}: unknown transform '{name}'{suggest(str(name), names)}")
    if kwargs is not None and not isinstance(kwargs, dict):
        raise CvtoolError(f"{where}.{name}: expected a mapping of arguments such as {{p: 0.5}}; got {kwargs!r}")
    kwargs = dict(kwargs or {})
    _check_args(name, kwargs, where)
    if "transforms" in kwargs:
        inner = kwargs["transforms"]
        if not isinstance(inner, list):
            raise CvtoolError(f"{where}.{name}.transforms: must be a list of transforms")
        kwargs["transforms"] = [build_transform(t, f"{where}.{name}.transforms[{i}]") for i, t in enumerate(inner)]
    kwargs = {k: tuple(v) if isinstance(v, list) and k != "transforms" else v for k, v in kwargs.items()}
    if isinstance(kwargs.get("interpolation"), str):
        kwargs["interpolation"] = _interpolation(kwargs["interpolation"], f"{where}.{name}.interpolation")
    try:
        return transform_class(name)(**kwargs)
    except (TypeError, ValueError) as exc:
        raise CvtoolError(f"{where}.{name}: {str(exc).splitlines()[0]}") from None


def _interpolation(value: str, where: str) -> Any:
    """A recipe's `interpolation: bilinear` as torchvision's enum: torchvision up to 0.26 stores
    the string as given and its kernels then refuse it."""
    from torchvision.transforms import InterpolationMode

    try:
        return InterpolationMode(value.lower())
    except ValueError:
        choices = ", ".join(mode.value for mode in InterpolationMode)
        raise CvtoolError(f"{where}: expected one of {choices}; got {value!r}") from None


def _check_args(name: str, kwargs: dict[str, Any], where: str) -> None:
    """Argument names checked up front, so a typo reads like an unknown recipe key rather
    than a Python TypeError."""
    import inspect

    params = inspect.signature(transform_class(name)).parameters
    named = {key: p for key, p in params.items() if p.kind in (p.POSITIONAL_OR_KEYWORD, p.KEYWORD_ONLY)}
    if not any(p.kind is p.VAR_KEYWORD for p in params.values()):
        for arg in kwargs:
            if arg not in named:
                close = suggest(str(arg), list(named)).replace("mean ", f"mean {where}.{name}.")
                close = close or f" ({name} takes {', '.join(named) or 'no arguments'})"
                raise CvtoolError(f"{where}.{name}.{arg}: unknown argument{close}")
    for key, param in named.items():
        if param.default is param.empty and key not in kwargs:
            raise CvtoolError(f"{where}.{name}.{key}: required argument is missing")


def build_pipeline(specs: Sequence[Any], key: str = "augment") -> Any | None:
    """A v2.Compose of the specs, or None when there are none."""
    if not specs:
        return None
    return _v2().Compose([build_transform(s, f"{key}[{i}]") for i, s in enumerate(specs)])


def is_geometric(spec: dict[str, Any]) -> bool:
    (name, kwargs), = spec.items()
    if name in CONTAINERS:
        return all(is_geometric(t) for t in (kwargs or {}).get("transforms", []))
    return name in GEOMETRIC


def point_blind(specs: Sequence[dict[str, Any]]) -> list[str]:
    """The transforms of `specs` (containers searched) that would not move keypoints."""
    found: list[str] = []
    for spec in specs:
        if not isinstance(spec, dict) or len(spec) != 1:
            continue
        (name, kwargs), = spec.items()
        if name in POINT_BLIND:
            found.append(name)
        elif name in CONTAINERS:
            found += point_blind((kwargs or {}).get("transforms", []))
    return found


def geometric_part(specs: Sequence[dict[str, Any]]) -> list[dict[str, Any]]:
    """The geometric transforms of a train pipeline (the default TTA transforms)."""
    return [s for s in specs if is_geometric(s)]


def reference_points(size: int) -> np.ndarray:
    """Three non-collinear points whose images reveal an affine map."""
    return np.asarray([[0.0, 0.0], [size - 1.0, 0.0], [0.0, size - 1.0]], np.float32)


def fit_affine(source: np.ndarray, moved: np.ndarray) -> np.ndarray:
    """2x3 matrix A with moved = A @ [x, y, 1] for three point pairs."""
    design = np.hstack([source, np.ones((3, 1))]).astype(np.float64)
    return np.linalg.solve(design, moved.astype(np.float64)).T


def invert_points(points: np.ndarray, affine: np.ndarray) -> np.ndarray:
    """Map N x 2 points back through the inverse of a 2x3 affine matrix."""
    full = np.vstack([affine, [0.0, 0.0, 1.0]])
    inverse = np.linalg.inv(full)
    return points @ inverse[:2, :2].T + inverse[:2, 2]


def swap_pairs(points: np.ndarray, pairs: Sequence[tuple[int, int]]) -> np.ndarray:
    """Exchange left/right point indices (a mirrored image swaps them)."""
    out = points.copy()
    for left, right in pairs:
        out[..., [left, right], :] = points[..., [right, left], :]
    return out


def apply_with_points(pipeline: Any, image: Any, points: np.ndarray, size: int) -> tuple[Any, np.ndarray, np.ndarray]:
    """Run a pipeline on an image (uint8 C x H x W tensor) and its N x 2 points.

    Points are in continuous pixel coordinates (the image spans [0, size]); torchvision
    moves pixel indices (a flip maps x to size - 1 - x), hence the half-pixel shifts.
    Returns the new image, the moved points and the 2x3 affine map the call applied."""
    import torch
    from torchvision import tv_tensors

    refs = reference_points(size)
    stacked = np.vstack([points.reshape(-1, 2) - 0.5, refs]).astype(np.float32)
    kp = tv_tensors.KeyPoints(torch.from_numpy(stacked), canvas_size=(size, size))
    out_image, out_kp = pipeline(tv_tensors.Image(image), kp)
    moved = out_kp.as_subclass(torch.Tensor).numpy().astype(np.float64) + 0.5
    affine = fit_affine(refs + 0.5, moved[-3:])
    return out_image.as_subclass(torch.Tensor), moved[:-3], affine


def mirrored(affine: np.ndarray) -> bool:
    return float(np.linalg.det(affine[:, :2])) < 0
