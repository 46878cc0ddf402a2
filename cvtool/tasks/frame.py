"""The model frame under `data.resize`: which part of an original image the model sees, and the
one mapping of points between original pixels and the model's normalized [-1, 1] coordinates.

- squash: the whole image, stretched to image_size x image_size (the aspect ratio is lost);
- crop: the centred square of side min(w, h) (integer offsets), scaled to image_size: the shorter
  side scaled to image_size and centre-cropped, as torchvision's Resize(S) + CenterCrop(S) up to
  sub-pixel rounding. Points outside it are cut off (their targets lie outside [-1, 1]);
- pad: the centred square of side max(w, h), the image letterboxed in it with zeros.

A frame is (x0, y0, width, height) in original pixels; pixel coordinates are continuous (a pixel
centre at i + 0.5). Image decoding, the raw-input ONNX graph, keypoint targets, metrics, TTA and
predict all use these frames, so both directions are exact inverses. Numpy only (no torch).
"""

from __future__ import annotations

import numpy as np

RESIZE_MODES = ("squash", "crop", "pad")


def frame_box(width: int, height: int, mode: str) -> tuple[int, int, int, int]:
    """(x0, y0, width, height) of the original-image region the model sees (may extend past the
    image for pad: that part is zeros)."""
    if mode == "squash":
        return 0, 0, width, height
    if mode == "crop":
        side = min(width, height)
        return (width - side) // 2, (height - side) // 2, side, side
    if mode == "pad":
        side = max(width, height)
        return -((side - width) // 2), -((side - height) // 2), side, side
    raise ValueError(f"unknown resize mode {mode!r} (use {', '.join(RESIZE_MODES)})")


def frame_boxes(sizes: np.ndarray, mode: str) -> np.ndarray:
    """N x 4 frames (x0, y0, width, height) for N x 2 original (width, height) sizes: `frame_box`
    for every row, vectorized."""
    sizes = np.asarray(sizes, np.int64).reshape(-1, 2)
    if mode == "squash":
        return np.concatenate([np.zeros_like(sizes), sizes], axis=1).astype(np.float64)
    if mode not in RESIZE_MODES:
        frame_box(1, 1, mode)  # raises, naming the modes
    side = (sizes.min(axis=1) if mode == "crop" else sizes.max(axis=1))[:, None]
    offset = (sizes - side) // 2 if mode == "crop" else -((side - sizes) // 2)
    return np.concatenate([offset, side, side], axis=1).astype(np.float64)


def _as_frames(frames: np.ndarray) -> np.ndarray:
    """N x 4 frames; N x 2 original sizes are squash frames (0, 0, w, h)."""
    frames = np.asarray(frames, np.float64)
    if frames.shape[-1] == 2:
        frames = np.concatenate([np.zeros_like(frames), frames], axis=-1)
    return frames


def to_frame(points: np.ndarray, frames: np.ndarray) -> np.ndarray:
    """Original-pixel x/y pairs (N x 2K) -> normalized [-1, 1] coordinates of the model frame."""
    frames = _as_frames(frames)
    pairs = np.asarray(points, np.float64).reshape(len(frames), -1, 2)
    normalized = (pairs - frames[:, None, :2]) / frames[:, None, 2:] * 2.0 - 1.0
    return normalized.reshape(len(frames), -1)


def from_frame(normalized: np.ndarray, frames: np.ndarray) -> np.ndarray:
    """Normalized model-frame x/y pairs (N x 2K) -> original-image pixels (float64)."""
    frames = _as_frames(frames)
    pairs = np.asarray(normalized, np.float64).reshape(len(frames), -1, 2)
    pixels = frames[:, None, :2] + (pairs + 1.0) / 2.0 * frames[:, None, 2:]
    return pixels.reshape(len(frames), -1)


def outside_frame(normalized: np.ndarray) -> np.ndarray:
    """N x K: whether each point lies outside the model frame (cut off by a crop)."""
    pairs = np.asarray(normalized, np.float64).reshape(len(normalized), -1, 2)
    return (np.abs(pairs) > 1.0).any(axis=-1)
