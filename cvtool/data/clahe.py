"""CLAHE (contrast-limited adaptive histogram equalization) as a v2 transform: seed 004 tried
albumentations' `CLAHE`, which torchvision lacks.

The equalization is OpenCV's `createCLAHE(clipLimit, tileGridSize).apply` (imgproc/src/clahe.cpp)
in numpy, step for step in the same float32 arithmetic: tiles of an image padded by reflection to
a multiple of the grid, per-tile histograms clipped at `int(clip_limit * tile_area / 256)` with the
excess spread evenly (the remainder over every `256 // remainder`-th bin), a rounded cumulative LUT
per tile, and bilinear interpolation between the four nearest tiles' LUTs. Tests compare it with
cv2 on real photographs (`tests/test_clahe.py`). A colour image is equalized on its CIE L* (sRGB,
D65), as albumentations does through `cv2.COLOR_RGB2LAB`; here a* and b* stay unquantized and L*
moves by the equalized 8-bit level's change, so an image the equalization leaves alone comes back
unchanged.
"""

from __future__ import annotations

from collections.abc import Sequence
from typing import Any

import numpy as np
import torch
from torchvision import tv_tensors
from torchvision.transforms import v2

BINS = 256
# sRGB (D65) -> XYZ, the matrix OpenCV's Lab conversion uses; white = the matrix's row sums
RGB_TO_XYZ = np.array([[0.412453, 0.357580, 0.180423],
                       [0.212671, 0.715160, 0.072169],
                       [0.019334, 0.119193, 0.950227]])
WHITE = RGB_TO_XYZ.sum(axis=1)


def equalize(channel: np.ndarray, clip_limit: float, grid: Sequence[int] = (8, 8)) -> np.ndarray:
    """One uint8 H x W channel through OpenCV's CLAHE; `grid` is (tiles across, tiles down), as
    OpenCV's tileGridSize. A clip limit <= 0 means no clipping (plain adaptive equalization)."""
    tiles_x, tiles_y = int(grid[0]), int(grid[1])
    height, width = channel.shape
    padded = channel
    if width % tiles_x or height % tiles_y:  # OpenCV: BORDER_REFLECT_101 on the bottom and right
        padded = np.pad(channel, ((0, tiles_y - height % tiles_y), (0, tiles_x - width % tiles_x)), mode="reflect")
    tile_h, tile_w = padded.shape[0] // tiles_y, padded.shape[1] // tiles_x
    luts = _tile_luts(padded, tiles_x, tiles_y, clip_limit)
    return _interpolate(channel, luts, tile_w, tile_h)


def _tile_luts(padded: np.ndarray, tiles_x: int, tiles_y: int, clip_limit: float) -> np.ndarray:
    """tiles_y x tiles_x x 256 uint8 lookup tables (CLAHE_CalcLut_Body)."""
    tile_h, tile_w = padded.shape[0] // tiles_y, padded.shape[1] // tiles_x
    area = tile_h * tile_w
    tiles = padded.reshape(tiles_y, tile_h, tiles_x, tile_w).transpose(0, 2, 1, 3).reshape(tiles_y * tiles_x, area)
    offsets = np.arange(tiles_y * tiles_x, dtype=np.int64)[:, None] * BINS
    hist = np.bincount((tiles + offsets).ravel(), minlength=tiles_y * tiles_x * BINS).reshape(-1, BINS)
    if clip_limit > 0:
        limit = max(int(clip_limit * area / BINS), 1)
        clipped = np.maximum(hist - limit, 0).sum(axis=1, keepdims=True)
        hist = np.minimum(hist, limit) + clipped // BINS
        residual = clipped % BINS
        step = np.maximum(BINS // np.maximum(residual, 1), 1)
        bins = np.arange(BINS)[None, :]
        hist += (bins % step == 0) & (bins // step < residual)
    scale = np.float32(BINS - 1) / np.float32(area)
    luts = np.rint(np.cumsum(hist, axis=1).astype(np.float32) * scale)
    return np.clip(luts, 0, 255).astype(np.uint8).reshape(tiles_y, tiles_x, BINS)


def _interpolate(channel: np.ndarray, luts: np.ndarray, tile_w: int, tile_h: int) -> np.ndarray:
    """Each pixel through the bilinear blend of its four nearest tiles' LUTs
    (CLAHE_Interpolation_Body, in float32 as there)."""
    tiles_y, tiles_x = luts.shape[:2]

    def weights(count: int, size: int, tiles: int) -> tuple[np.ndarray, np.ndarray, np.ndarray, np.ndarray]:
        position = np.arange(count, dtype=np.float32) * (np.float32(1.0) / np.float32(size)) - np.float32(0.5)
        first = np.floor(position).astype(np.int64)
        frac = position - first.astype(np.float32)
        return np.maximum(first, 0), np.minimum(first + 1, tiles - 1), frac, np.float32(1.0) - frac

    x1, x2, xa, xa1 = weights(channel.shape[1], tile_w, tiles_x)
    y1, y2, ya, ya1 = weights(channel.shape[0], tile_h, tiles_y)
    rows1, rows2 = y1[:, None], y2[:, None]
    top = luts[rows1, x1[None, :], channel].astype(np.float32) * xa1 + luts[rows1, x2[None, :], channel] * xa
    bottom = luts[rows2, x1[None, :], channel].astype(np.float32) * xa1 + luts[rows2, x2[None, :], channel] * xa
    result = top * ya1[:, None] + bottom * ya[:, None]
    return np.clip(np.rint(result), 0, 255).astype(np.uint8)


def _srgb_table() -> np.ndarray:
    """uint8 sRGB level -> linear intensity."""
    c = np.arange(256) / 255.0
    return np.where(c <= 0.04045, c / 12.92, ((c + 0.055) / 1.055) ** 2.4)


LINEAR = _srgb_table()


def _encode(linear: np.ndarray) -> np.ndarray:
    """Linear intensity -> rounded uint8 sRGB level."""
    linear = np.clip(linear, 0.0, 1.0)
    srgb = np.where(linear <= 0.0031308, linear * 12.92, 1.055 * np.power(linear, 1 / 2.4) - 0.055)
    return np.rint(srgb * 255.0).astype(np.uint8)


def _f(t: np.ndarray) -> np.ndarray:
    return np.where(t > 0.008856, np.cbrt(t), 7.787 * t + 16.0 / 116.0)


def _f_inverse(f: np.ndarray) -> np.ndarray:
    return np.where(f > 0.206893, f * f * f, (f - 16.0 / 116.0) / 7.787)


def lightness_levels(image: np.ndarray) -> np.ndarray:
    """CIE L* of a uint8 H x W x 3 sRGB image in 8-bit levels (L* x 2.55, rounded), the channel
    OpenCV's 8-bit RGB -> Lab gives (its lookup tables land within one level of this)."""
    lightness = 116.0 * _f(LINEAR[image] @ RGB_TO_XYZ[1]) - 16.0
    return np.clip(np.rint(lightness * 2.55), 0, 255).astype(np.uint8)


def equalize_rgb(image: np.ndarray, clip_limit: float, grid: Sequence[int] = (8, 8)) -> np.ndarray:
    """A uint8 H x W x 3 RGB image equalized on its L* levels, a* and b* kept. As L* = 116 f(Y) - 16,
    a* = 500 (f(X) - f(Y)) and b* = 200 (f(Y) - f(Z)), moving L* alone moves f(X), f(Y) and f(Z) by
    the same amount; pixels whose level the equalization keeps are left untouched."""
    levels = lightness_levels(image)
    changed = (equalized := equalize(levels, clip_limit, grid)) != levels
    out = image.copy()
    if not changed.any():
        return out
    f = _f(LINEAR[image[changed]] @ (RGB_TO_XYZ.T / WHITE))
    shift = (equalized[changed].astype(np.float64) - levels[changed]) / (2.55 * 116.0)
    xyz = _f_inverse(f + shift[:, None]) * WHITE
    out[changed] = _encode(xyz @ np.linalg.inv(RGB_TO_XYZ).T)
    return out


def equalize_image(image: np.ndarray, clip_limit: float, grid: Sequence[int] = (8, 8)) -> np.ndarray:
    """A uint8 C x H x W image (C = 1: the channel itself; C = 3: RGB on its lightness)."""
    if image.shape[0] == 1:
        return equalize(image[0], clip_limit, grid)[None]
    return equalize_rgb(image.transpose(1, 2, 0), clip_limit, grid).transpose(2, 0, 1)


def _plain_tensor(value: Any) -> bool:
    return type(value) is torch.Tensor


class CLAHE(v2.Transform):
    """albumentations' `CLAHE(clip_limit=4.0, tile_grid_size=(8, 8), p=0.5)` on uint8 images:
    with probability `p`, OpenCV's CLAHE with a clip limit drawn uniformly from `clip_limit`
    (a number c means [1, c], as albumentations). Draws come from torch's generator, so a seeded
    sample gets the same equalization every time; keypoints and other targets pass through."""

    _transformed_types = (tv_tensors.Image, _plain_tensor)

    def __init__(self, clip_limit: float | Sequence[float] = 4.0, tile_grid_size: Sequence[int] = (8, 8),
                 p: float = 0.5) -> None:
        super().__init__()
        low, high = (1.0, float(clip_limit)) if isinstance(clip_limit, int | float) else map(float, clip_limit)
        if not 0 < low <= high:
            raise ValueError(f"clip_limit must be a number >= 1 or a range 0 < low <= high, got {clip_limit}")
        grid = tuple(int(n) for n in tile_grid_size)
        if len(grid) != 2 or min(grid) < 1:
            raise ValueError(f"tile_grid_size must be two positive tile counts, got {tile_grid_size}")
        if not 0.0 <= p <= 1.0:
            raise ValueError(f"p must be in [0, 1], got {p}")
        self.clip_limit, self.tile_grid_size, self.p = (low, high), grid, float(p)

    def make_params(self, flat_inputs: list[Any]) -> dict[str, Any]:
        if torch.rand(1) >= self.p:  # v2's own test for applying a random transform
            return {"clip_limit": None}
        return {"clip_limit": float(torch.empty(1).uniform_(*self.clip_limit))}

    def transform(self, inpt: Any, params: dict[str, Any]) -> Any:
        if params["clip_limit"] is None:
            return inpt
        if inpt.dtype != torch.uint8 or inpt.ndim < 3 or inpt.shape[-3] not in (1, 3):
            raise TypeError(f"CLAHE needs uint8 images with 1 or 3 channels, got {inpt.dtype} {tuple(inpt.shape)}")
        flat = inpt.reshape(-1, *inpt.shape[-3:]).cpu().numpy()
        out = np.stack([equalize_image(image, params["clip_limit"], self.tile_grid_size) for image in flat])
        result = torch.from_numpy(out).reshape(inpt.shape).to(inpt.device)
        return tv_tensors.wrap(result, like=inpt) if isinstance(inpt, tv_tensors.Image) else result

    # torchvision before 0.21 calls these names
    _get_params = make_params
    _transform = transform
