"""Image-quality outliers, judged against the data set's own distribution.

Each check looks at one statistic of every image and flags those far from the data set's median:
a robust z-score (x - median) / (1.4826 MAD) beyond `Z` (default 4), where the scale never drops
below a floor, so a data set of identical sizes does not flag a one-pixel difference. A grey-level
standard deviation under 1 (a constant image) is flagged whatever the others look like.
"""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass

import numpy as np

from cvtool.doctor.scan import ImageFacts

Z = 4.0
CONSTANT_STD = 1.0  # grey levels: an image with less spread than this shows nothing


@dataclass(frozen=True)
class Check:
    kind: str
    statistic: Callable[[ImageFacts], float]
    side: int  # -1: too low is the problem, +1: too high, 0: both
    floor: float  # the smallest scale the robust z-score divides by
    shown: Callable[[ImageFacts], str]


CHECKS = (
    Check("near-constant", lambda f: f.contrast, -1, 6.0, lambda f: f"grey std {f.contrast:.1f}"),
    Check("dark", lambda f: f.brightness, -1, 12.0, lambda f: f"mean grey {f.brightness:.0f}"),
    Check("bright", lambda f: f.brightness, +1, 12.0, lambda f: f"mean grey {f.brightness:.0f}"),
    Check("blurry", lambda f: float(np.log1p(f.sharpness)), -1, 0.5, lambda f: f"Laplacian var {f.sharpness:.1f}"),
    Check("extreme aspect ratio", lambda f: float(np.log(f.width / f.height)), 0, 0.15,
          lambda f: f"{f.width}x{f.height}"),
    Check("tiny", lambda f: float(np.log(f.width * f.height)), -1, 0.4, lambda f: f"{f.width}x{f.height}"),
)


@dataclass(frozen=True)
class QualityIssue:
    index: int  # into the scan's facts
    kind: str
    score: float  # robust z-score (how far out; larger is worse)
    detail: str  # the value, readable
    typical: str  # the data set's median, readable


def quality_issues(facts: list[ImageFacts], z: float = Z) -> list[QualityIssue]:
    """Every (image, check) beyond `z`, worst first; a constant image as near-constant (and tiny) only."""
    if not facts:
        return []
    issues: list[QualityIssue] = []
    for check in CHECKS:
        values = np.asarray([check.statistic(f) for f in facts], np.float64)
        median = float(np.median(values))
        scale = max(1.4826 * float(np.median(np.abs(values - median))), check.floor)
        scores = (values - median) / scale * (check.side or 1)
        outside = np.abs(scores) > z if check.side == 0 else scores > z
        if check.kind == "near-constant":
            outside |= np.asarray([f.contrast < CONSTANT_STD for f in facts])
        typical = _typical(check, facts, median)
        issues += [QualityIssue(int(i), check.kind, float(abs(scores[i])), check.shown(facts[i]), typical)
                   for i in np.flatnonzero(outside)]
    # a constant image is also "dark" or "bright" and "blurry": one line says it better
    constant = {i.index for i in issues if facts[i.index].contrast < CONSTANT_STD}
    issues = [i for i in issues if i.index not in constant or i.kind in ("near-constant", "tiny")]
    return sorted(issues, key=lambda i: (-i.score, i.index))


def _typical(check: Check, facts: list[ImageFacts], median: float) -> str:
    if check.kind in ("extreme aspect ratio", "tiny"):
        widths = np.median([f.width for f in facts])
        heights = np.median([f.height for f in facts])
        return f"{widths:.0f}x{heights:.0f}"
    if check.kind == "blurry":
        return f"{np.expm1(median):.1f}"
    return f"{median:.1f}" if check.kind == "near-constant" else f"{median:.0f}"
