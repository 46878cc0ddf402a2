"""Decoding one image file into a uint8 array: PIL and numpy only (no torch).

The ONNX predict path uses this module too, so it must stay importable without torch.
"""

from __future__ import annotations

import os
import warnings
from pathlib import Path

import numpy as np
from PIL import ExifTags, Image, ImageFile, ImageOps

from cvtool.errors import BadImageError, CvtoolError
from cvtool.tasks.frame import frame_box

IMAGE_EXTENSIONS = (".png", ".jpg", ".jpeg", ".bmp", ".webp", ".tif", ".tiff", ".gif")
# A decompression-bomb guard: larger images are refused instead of exhausting memory.
MAX_IMAGE_PIXELS = 64_000_000
ImageFile.LOAD_TRUNCATED_IMAGES = False


def is_image_file(path: Path) -> bool:
    return path.suffix.lower() in IMAGE_EXTENSIONS


def image_files(folder: Path) -> list[Path]:
    """Every file below `folder` named like an image, sorted; symlinked folders are followed (a
    loop is one line naming the link), and a broken link is listed: it fails, or is skipped and
    counted, as the unreadable image it is. Nothing is left out without a word."""
    found: list[Path] = []
    real = Path(os.path.realpath(folder))
    _walk(Path(folder), frozenset(_key(p) for p in (real, *real.parents)), found)
    return sorted(found)


def _key(folder: Path) -> tuple[int, int]:
    info = os.stat(folder)
    return info.st_dev, info.st_ino


def _walk(folder: Path, ancestors: frozenset[tuple[int, int]], found: list[Path]) -> None:
    try:
        entries = sorted(os.scandir(folder), key=lambda entry: entry.name)
    except OSError as exc:
        raise CvtoolError(f"{folder}: cannot list the folder ({exc.strerror or exc})") from None
    for entry in entries:
        path = Path(entry.path)
        if entry.is_dir():  # through a symlink too
            key = _key(path)
            if key in ancestors:
                raise CvtoolError(f"{path}: a symlink loop (it leads back to {os.path.realpath(path)}); "
                                  "remove or replace the link")
            _walk(path, ancestors | {key}, found)
        elif is_image_file(path) and (entry.is_file() or entry.is_symlink()):
            found.append(path)


def open_image(path: str | Path) -> Image.Image:
    """The fully decoded PIL image as a viewer shows it (EXIF orientation applied, so a phone's
    portrait JPEG and keypoints marked on it agree), or BadImageError naming the file and the reason."""
    path = Path(path)
    try:
        if path.stat().st_size == 0:
            raise BadImageError(path, "empty file")
        with warnings.catch_warnings():
            warnings.simplefilter("error", Image.DecompressionBombWarning)
            with Image.open(path) as img:
                width, height = img.size
                if width * height > MAX_IMAGE_PIXELS:
                    raise BadImageError(path, f"{width}x{height} exceeds the {MAX_IMAGE_PIXELS} pixel limit")
                img.load()
                upright = ImageOps.exif_transpose(img)  # a copy, rotated/mirrored per its EXIF tag
                return upright if upright.mode != "P" else upright.convert("RGBA")
    except BadImageError:
        raise
    except FileNotFoundError:
        raise BadImageError(path, "file not found") from None
    except (Image.DecompressionBombError, Image.DecompressionBombWarning) as exc:
        raise BadImageError(path, f"decompression bomb guard: {exc}") from None
    except Image.UnidentifiedImageError:
        raise BadImageError(path, "not a recognised image format") from None
    except (OSError, SyntaxError, ValueError) as exc:
        raise BadImageError(path, str(exc).splitlines()[0] if str(exc) else type(exc).__name__) from None


def to_channels(img: Image.Image, channels: int) -> Image.Image:
    """Grey, RGBA, palette, CMYK, 1-bit and 16-bit images as 8-bit 'L' or 'RGB'."""
    if img.mode in ("I;16", "I;16B", "I;16L", "I;16N", "I"):
        arr = np.asarray(img, dtype=np.float64)
        top = 65535.0 if img.mode.startswith("I;16") or arr.max() > 255 else 255.0
        img = Image.fromarray(np.clip(arr / top * 255.0 + 0.5, 0, 255).astype(np.uint8), mode="L")
    elif img.mode == "F":
        arr = np.asarray(img, dtype=np.float64)
        scale = 255.0 if arr.max() <= 1.0 else 1.0
        img = Image.fromarray(np.clip(arr * scale + 0.5, 0, 255).astype(np.uint8), mode="L")
    target = "L" if channels == 1 else "RGB"
    if img.mode in ("RGBA", "LA", "PA"):
        img = img.convert("RGBA")
        if target == "L":
            return img.convert("L")
        return img.convert("RGB")
    return img if img.mode == target else img.convert(target)


def decode(path: str | Path, channels: int, size: int | None,
           resize: str = "squash") -> tuple[np.ndarray, tuple[int, int]]:
    """(uint8 array H x W x C, original (width, height)); when `size` is given, the model frame of
    `data.resize` (`tasks.frame`: squash, crop or pad; pad fills with zeros) at size x size."""
    img = open_image(path)
    original = img.size
    img = to_channels(img, channels)
    if size is not None:
        x0, y0, width, height = frame_box(*original, resize)
        if (x0, y0, width, height) != (0, 0, *original):
            img = img.crop((x0, y0, x0 + width, y0 + height))  # outside the image: zeros
        if img.size != (size, size):
            img = img.resize((size, size), Image.BILINEAR)
    arr = np.asarray(img, dtype=np.uint8)
    if arr.ndim == 2:
        arr = arr[:, :, None]
    return np.ascontiguousarray(arr), original


def image_size_of(path: str | Path) -> tuple[int, int]:
    """(width, height) from the header alone, as a viewer shows it (EXIF orientation applied)."""
    try:
        with Image.open(path) as img:
            turned = img.getexif().get(ExifTags.Base.Orientation, 1) in (5, 6, 7, 8)
            return (img.height, img.width) if turned else img.size
    except (OSError, ValueError) as exc:
        raise BadImageError(path, str(exc) or type(exc).__name__) from None


def normalize_batch(batch: np.ndarray, mean: list[float], std: list[float]) -> np.ndarray:
    """uint8 N x H x W x C -> float32 N x C x H x W, scaled to [0, 1] then standardized.

    Transposed first, then the float32 steps run in place: 5x faster than the obvious form."""
    x = np.ascontiguousarray(batch.transpose(0, 3, 1, 2)).astype(np.float32)
    x /= np.float32(255.0)
    x -= np.asarray(mean, np.float32).reshape(-1, 1, 1)
    x /= np.asarray(std, np.float32).reshape(-1, 1, 1)
    return x
