"""One pass over every image of every split: what the duplicate and quality checks need.

Each file is read once: its bytes' SHA-256 (exact copies), its 64-bit perceptual hash
(`imagehash.phash`: the signs of the 8x8 lowest frequencies of the DCT of a 32x32 grey
version, which survive re-encoding and resizing), a 16x16 colour thumbnail (to confirm a
near-duplicate pixel by pixel) and a few grey-level statistics of the decoded image
(brightness, contrast, sharpness, size). Files are read on a thread pool (PIL and scipy
release the GIL while they decode and transform).
"""

from __future__ import annotations

import hashlib
import os
from collections.abc import Callable
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass
from pathlib import Path

import numpy as np

from cvtool.data.formats import DatasetInfo
from cvtool.data.images import open_image, to_channels
from cvtool.errors import BadImageError, CvtoolError
from cvtool.tasks import get_task

INSTALL = 'cvtool doctor needs the doctor extra: pip install "cvtool[doctor]"'
SHARPNESS_SIDE = 512  # larger images are shrunk to this longer side before the Laplacian
THUMB_SIDE = 16


@dataclass(frozen=True, eq=False)
class ImageFacts:
    split: str
    path: Path
    name: str  # relative to the data root, as exclude lists and reports name it
    label: str  # class name or space-separated tags ("" without labels)
    digest: str  # SHA-256 of the file's bytes
    phash: int  # 64-bit perceptual hash
    width: int
    height: int
    brightness: float  # mean grey level, 0..255
    contrast: float  # standard deviation of the grey levels
    sharpness: float  # variance of the 4-neighbour Laplacian of the grey image
    thumb: np.ndarray  # uint8 16 x 16 x 3, the whole image squashed


@dataclass
class Scan:
    facts: list[ImageFacts]
    unreadable: list[tuple[str, str, str]]  # (split, name, reason)


def require_imagehash() -> None:
    try:
        import imagehash  # noqa: F401
    except ImportError:
        raise CvtoolError(INSTALL) from None


def relative(path: Path, root: Path) -> str:
    resolved, base = Path(path).resolve(), Path(root).resolve()
    return resolved.relative_to(base).as_posix() if resolved.is_relative_to(base) else str(path)


def scan_dataset(info: DatasetInfo, root: Path, progress: Callable[[int], None] | None = None,
                 workers: int | None = None) -> Scan:
    """Facts of every readable image of every split, in split then file order."""
    require_imagehash()
    task = get_task(info.task)
    jobs: list[tuple[str, Path, str]] = []
    for name, split in info.splits.items():
        labels = (task.target_labels(split.targets, info.class_names) if split.targets is not None else None) or []
        jobs += [(name, path, labels[i] if i < len(labels) else "") for i, path in enumerate(split.paths)]
    workers = workers or min(8, len(os.sched_getaffinity(0)) if hasattr(os, "sched_getaffinity") else os.cpu_count() or 1)
    facts, unreadable = [], []
    with ThreadPoolExecutor(max(1, workers)) as pool:
        for (split, path, label), found in zip(jobs, pool.map(_read, (path for _, path, _ in jobs)), strict=True):
            if isinstance(found, str):
                unreadable.append((split, relative(path, root), found))
            else:
                facts.append(ImageFacts(split, path, relative(path, root), label, *found))
            if progress is not None:
                progress(1)
    return Scan(facts, unreadable)


def _read(path: Path) -> tuple | str:
    """(digest, phash, width, height, brightness, contrast, sharpness, thumb), or why it is unreadable."""
    import imagehash
    from PIL import Image

    try:
        digest = hashlib.sha256(path.read_bytes()).hexdigest()
        decoded = open_image(path)
    except BadImageError as exc:
        return exc.reason
    except OSError as exc:
        return exc.strerror or str(exc)
    thumb = np.asarray(to_channels(decoded, 3).resize((THUMB_SIDE, THUMB_SIDE), Image.BILINEAR), np.uint8)
    image = to_channels(decoded, 1)
    width, height = image.size
    bits = imagehash.phash(image).hash.ravel()
    phash = int.from_bytes(np.packbits(bits).tobytes(), "big")
    if max(width, height) > SHARPNESS_SIDE:  # sharpness at a common scale, and fast on large photos
        scale = SHARPNESS_SIDE / max(width, height)
        image = image.resize((max(1, round(width * scale)), max(1, round(height * scale))), Image.BILINEAR)
    grey = np.asarray(image, np.float64)
    return (digest, phash, width, height, float(grey.mean()), float(grey.std()), laplacian_variance(grey), thumb)


def laplacian_variance(grey: np.ndarray) -> float:
    """Variance of the 4-neighbour Laplacian (Pech-Pacheco et al., 2000): low for a blurred image."""
    if min(grey.shape) < 3:
        return 0.0
    centre = grey[1:-1, 1:-1]
    lap = grey[:-2, 1:-1] + grey[2:, 1:-1] + grey[1:-1, :-2] + grey[1:-1, 2:] - 4.0 * centre
    return float(lap.var())
