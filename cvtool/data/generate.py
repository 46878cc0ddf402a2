"""Datasets written to disk: scikit-learn's real digits, and small learnable synthetic sets in
each task's real layout (`cvtool data digits|synthetic`, the demo and the tests).

A dataset is built in a temp folder beside DIR and published with one rename (publish.py), so
DIR is never half-written; rewriting a folder that cvtool generated replaces what it generated
(your own files at its top are kept), any other non-empty folder is refused. Same arguments and
seed -> the same files.
"""

from __future__ import annotations

from collections.abc import Callable, Iterator
from pathlib import Path
from typing import Any

import numpy as np
from PIL import Image, ImageDraw

from cvtool.data.publish import MARKER as MARKER  # the marker of a generated dataset, named here too
from cvtool.data.publish import publish
from cvtool.errors import CvtoolError
from cvtool.fileio import write_csv, write_text
from cvtool.recipe.fields import MAX_IMAGE_SIDE
from cvtool.tasks import TASKS

SPLITS = ("train", "val", "test")
# Each class has its own shape and colour, so a small CNN separates them within a few epochs.
SHAPES = {"circle": (230, 40, 40), "square": (40, 200, 60), "triangle": (50, 90, 235),
          "cross": (235, 210, 40), "ring": (220, 60, 220), "bar": (40, 210, 220)}
# Planet-style tags: a tag is present exactly when its shape is visible; frequencies are imbalanced.
TAGS = {"red_disc": ("circle", 0.6), "green_box": ("square", 0.35), "cyan_bar": ("bar", 0.2),
        "yellow_cross": ("cross", 0.1)}
POINT_COLOURS = ((255, 60, 60), (60, 255, 60), (80, 120, 255))  # keypoint M0, M1, M2

_DRAW: dict[str, Callable[[ImageDraw.ImageDraw, tuple[int, int, int, int], tuple, int], Any]] = {
    "circle": lambda d, b, c, t: d.ellipse(b, fill=c),
    "square": lambda d, b, c, t: d.rectangle(b, fill=c),
    "triangle": lambda d, b, c, t: d.polygon([(b[0], b[3]), ((b[0] + b[2]) / 2, b[1]), (b[2], b[3])], fill=c),
    "cross": lambda d, b, c, t: (d.rectangle(((b[0] + b[2]) // 2 - t, b[1], (b[0] + b[2]) // 2 + t, b[3]), fill=c),
                                 d.rectangle((b[0], (b[1] + b[3]) // 2 - t, b[2], (b[1] + b[3]) // 2 + t), fill=c)),
    "ring": lambda d, b, c, t: d.ellipse(b, outline=c, width=t + 1),
    "bar": lambda d, b, c, t: d.rectangle((b[0], (b[1] + b[3]) // 2 - t, b[2], (b[1] + b[3]) // 2 + t), fill=c),
}


def write_digits(out_dir: str | Path, seed: int = 0) -> dict[str, Any]:
    """scikit-learn's 1797 real 8x8 digits as grey PNGs in `folder` layout
    out_dir/{train,val,test}/<digit>/<index>.png, a seeded stratified 70/15/15 split."""
    from sklearn.datasets import load_digits

    digits = load_digits()
    images = np.clip(np.rint(digits.images * (255.0 / 16.0)), 0, 255).astype(np.uint8)
    labels = digits.target.astype(np.int64)
    splits = _assign_splits(labels, np.random.default_rng(seed))

    def build(root: Path) -> dict[str, Any]:
        for index, (image, label, split) in enumerate(zip(images, labels, splits, strict=True)):
            folder = root / split / str(label)
            folder.mkdir(parents=True, exist_ok=True)
            Image.fromarray(image, mode="L").save(folder / f"{index}.png")
        return _info("digits", "multiclass", "folder", splits, [str(d) for d in range(10)],
                     {"image_size": 8, "channels": 1})

    return publish(Path(out_dir), build)


def write_synthetic(out_dir: str | Path, task: str, n: int = 120, size: int = 32, seed: int = 0,
                    format: str | None = None, num_classes: int = 4) -> dict[str, Any]:
    """A small learnable dataset for `task` in its real layout (see Task.formats; the first
    format is the default). Images are PNG, every tenth a JPEG (tinyimagenet: all JPEG)."""
    if task not in TASKS:
        raise CvtoolError(f"data synthetic: unknown task '{task}' (use {', '.join(TASKS.names())})")
    formats = TASKS.get(task).formats
    fmt = format or formats[0]
    if fmt not in formats:
        raise CvtoolError(f"data synthetic: task {task} comes in format {', '.join(formats)}, not {fmt}")
    if n < 20 or not 8 <= size <= MAX_IMAGE_SIDE:
        raise CvtoolError(f"data synthetic: needs --n of at least 20 images and --size of 8 to {MAX_IMAGE_SIDE} pixels")
    if not 2 <= num_classes <= len(SHAPES):
        raise CvtoolError(f"data synthetic: num_classes must be between 2 and {len(SHAPES)}")
    rng = np.random.default_rng(seed)
    builders = {"multiclass": lambda root: _multiclass(root, fmt, n, size, rng, num_classes),
                "binary": lambda root: _binary(root, n, size, rng),
                "multilabel": lambda root: _multilabel(root, n, size, rng),
                "keypoints": lambda root: _keypoints(root, n, size, rng)}
    return publish(Path(out_dir), builders[task])


def _info(name: str, task: str, fmt: str, splits: np.ndarray, classes: list[str],
          data: dict[str, Any], key: str = "classes") -> dict[str, Any]:
    counts = {split: int((splits == split).sum()) for split in SPLITS}
    return {"name": name, "task": task, "format": fmt, "splits": counts, key: classes,
            "data": {"train": "train", "val": "val", "test": "test", **data}}


def _assign_splits(groups: np.ndarray, rng: np.random.Generator) -> np.ndarray:
    """'train' / 'val' / 'test' per sample, about 70/15/15 within each group (stratified)."""
    out = np.empty(len(groups), dtype=object)
    for group in np.unique(groups):
        index = rng.permutation(np.flatnonzero(groups == group))
        held = max(1, round(0.15 * len(index))) if len(index) >= 3 else 0
        out[index[:held]] = "test"
        out[index[held:2 * held]] = "val"
        out[index[2 * held:]] = "train"
    return out


def _background(rng: np.random.Generator, width: int, height: int) -> Image.Image:
    return Image.fromarray(rng.integers(0, 70, (height, width, 3), dtype=np.uint8), mode="RGB")


def _draw_shape(img: Image.Image, shape: str, colour: tuple[int, int, int], rng: np.random.Generator,
                scale: tuple[float, float] = (0.45, 0.8), region: tuple[int, int, int, int] | None = None) -> None:
    """One colour-jittered shape of random size and position inside region (x, y, width, height)."""
    left, top, width, height = region or (0, 0, *img.size)
    side = max(3, int(min(width, height) * rng.uniform(*scale)))
    x0 = left + int(rng.integers(0, width - side + 1))
    y0 = top + int(rng.integers(0, height - side + 1))
    jittered = tuple(int(np.clip(c + rng.integers(-25, 26), 0, 255)) for c in colour)
    _DRAW[shape](ImageDraw.Draw(img), (x0, y0, x0 + side - 1, y0 + side - 1), jittered, max(1, side // 6))


def _save(img: Image.Image, folder: Path, index: int) -> str:
    """PNG, every tenth image a JPEG; returns the file name."""
    name = f"{index:05d}.jpg" if index % 10 == 9 else f"{index:05d}.png"
    folder.mkdir(parents=True, exist_ok=True)
    img.save(folder / name, quality=95) if name.endswith(".jpg") else img.save(folder / name)
    return name


def _multiclass(root: Path, fmt: str, n: int, size: int, rng: np.random.Generator, k: int) -> dict[str, Any]:
    """folder (root/<split>/<class>/), csv (<split>.csv with image,label + images/) or tinyimagenet."""
    names = sorted(list(SHAPES)[:k])
    labels = rng.permutation(np.arange(n) % k)
    splits = _assign_splits(labels, rng)
    images = (_shape_image(rng, size, names[label]) for label in labels)  # one at a time: constant memory
    if fmt == "tinyimagenet":
        return _tinyimagenet(root, names, labels, splits, images, size)
    rows: dict[str, list[list[str]]] = {split: [] for split in SPLITS}
    for index, (img, label, split) in enumerate(zip(images, labels, splits, strict=True)):
        folder = root / split / names[label] if fmt == "folder" else root / "images"
        rows[split].append([_save(img, folder, index), names[label]])
    data: dict[str, Any] = {"image_size": size, "channels": 3}
    if fmt == "csv":
        for split in SPLITS:
            write_csv(root / f"{split}.csv", ["image", "label"], rows[split])
        data.update(images_dir="images", image_column="image", label_column="label")
    return _info("synthetic-multiclass", "multiclass", fmt, splits, names, data)


def _shape_image(rng: np.random.Generator, size: int, shape: str) -> Image.Image:
    img = _background(rng, size, size)
    _draw_shape(img, shape, SHAPES[shape], rng)
    return img


def _tinyimagenet(root: Path, names: list[str], labels: np.ndarray, splits: np.ndarray,
                  images: Iterator[Image.Image], size: int) -> dict[str, Any]:
    """The tiny-imagenet-200 layout as it unpacks (test images unlabelled)."""
    wnids = [f"n{9100000 + 37 * i:08d}" for i in range(len(names))]
    write_text(root / "wnids.txt", "".join(f"{w}\n" for w in wnids))
    words = [f"{w}\t{name}, {name} shape\n" for w, name in zip(wnids, names, strict=True)]
    write_text(root / "words.txt", "n00001740\tentity\n" + "".join(words) + "n99999999\tunused, spare\n")
    annotations: list[str] = []
    boxes: dict[str, list[str]] = {w: [] for w in wnids}
    box = f"0\t0\t{size - 1}\t{size - 1}"
    for index, (img, label, split) in enumerate(zip(images, labels, splits, strict=True)):
        wnid = wnids[label]
        if split == "train":
            name, folder = f"{wnid}_{index}.JPEG", root / "train" / wnid / "images"
            boxes[wnid].append(f"{name}\t{box}\n")
        else:
            name, folder = f"{split}_{index}.JPEG", root / split / "images"
            if split == "val":
                annotations.append(f"{name}\t{wnid}\t{box}\n")
        folder.mkdir(parents=True, exist_ok=True)
        img.save(folder / name, format="JPEG", quality=95)
    for wnid, lines in boxes.items():
        write_text(root / "train" / wnid / f"{wnid}_boxes.txt", "".join(lines))
    write_text(root / "val" / "val_annotations.txt", "".join(annotations))
    return _info("synthetic-tinyimagenet", "multiclass", "tinyimagenet", splits, names,
                 {"image_size": size, "channels": 3})


def _binary(root: Path, n: int, size: int, rng: np.random.Generator) -> dict[str, Any]:
    """'spot' (positive, about 30%) has a bright disc; both classes carry a distractor square."""
    names = ["clear", "spot"]
    labels = (rng.random(n) < 0.3).astype(np.int64)
    labels[:3], labels[3:6] = 1, 0  # both classes in every split
    splits = _assign_splits(labels, rng)
    for index, (label, split) in enumerate(zip(labels, splits, strict=True)):
        img = _background(rng, size, size)
        _draw_shape(img, "square", (200, 60, 40), rng, scale=(0.2, 0.35))
        if label:
            _draw_shape(img, "circle", (245, 245, 245), rng, scale=(0.3, 0.5))
        _save(img, root / split / names[label], index)
    return _info("synthetic-binary", "binary", "folder", splits, names, {"image_size": size, "channels": 3})


def _multilabel(root: Path, n: int, size: int, rng: np.random.Generator) -> dict[str, Any]:
    """Planet style: {split}.csv with `image,tags` (space-separated) and images/."""
    names = list(TAGS)
    present = rng.random((n, len(names))) < np.array([p for _, p in TAGS.values()])
    present[~present.any(axis=1), 0] = True  # every image has at least one tag
    splits = _assign_splits(np.zeros(n), rng)
    train_rows = np.flatnonzero(splits == "train")
    for tag in range(len(names)):  # every tag occurs in the train split
        if present[train_rows, tag].sum() < 2:
            present[train_rows[tag * 2:tag * 2 + 2], tag] = True
    rows: dict[str, list[list[str]]] = {split: [] for split in SPLITS}
    half = size // 2  # each shape in its own quadrant: none hides another
    quadrants = [(0, 0, half, half), (half, 0, size - half, half), (0, half, half, size - half),
                 (half, half, size - half, size - half)]
    for index, (flags, split) in enumerate(zip(present, splits, strict=True)):
        img = _background(rng, size, size)
        for tag, quadrant in zip(np.flatnonzero(flags), rng.permutation(4), strict=False):
            shape = TAGS[names[tag]][0]
            _draw_shape(img, shape, SHAPES[shape], rng, scale=(0.7, 1.0), region=quadrants[quadrant])
        rows[split].append([_save(img, root / "images", index), " ".join(names[t] for t in np.flatnonzero(flags))])
    for split in SPLITS:
        write_csv(root / f"{split}.csv", ["image", "tags"], rows[split])
    return _info("synthetic-multilabel", "multilabel", "csv", splits, sorted(names),
                 {"images_dir": "images", "image_column": "image", "tags_column": "tags",
                  "image_size": size, "channels": 3})


def _keypoints(root: Path, n: int, size: int, rng: np.random.Generator) -> dict[str, Any]:
    """MADE style: {split}.csv with `image, Point_M0_X, Point_M0_Y, ...` in original pixels
    (pixel centres); images of varying, non-square sizes with a bright mark per point."""
    columns = [f"Point_M{p}_{axis}" for p in range(len(POINT_COLOURS)) for axis in ("X", "Y")]
    splits = _assign_splits(np.zeros(n), rng)
    low = max(12, round(size * 0.75))  # from 12 px on, three separated marks always fit
    high = max(low + 1, round(size * 1.25))
    rows: dict[str, list[list[Any]]] = {split: [] for split in SPLITS}
    for index, split in enumerate(splits):
        width, height = (int(v) for v in rng.integers(low, high + 1, size=2))
        img = _background(rng, width, height)
        radius = max(1, min(width, height) // 12)
        points = _separated_points(rng, width, height, radius)
        draw, coords = ImageDraw.Draw(img), []
        for (px, py), colour in zip(points, POINT_COLOURS, strict=True):
            draw.rectangle((px - radius, py - radius, px + radius, py + radius), fill=colour)
            coords += [f"{px + 0.5:.1f}", f"{py + 0.5:.1f}"]
        rows[split].append([_save(img, root / "images", index), *coords])
    for split in SPLITS:
        write_csv(root / f"{split}.csv", ["image", *columns], rows[split])
    return _info("synthetic-keypoints", "keypoints", "csv", splits, columns,
                 {"images_dir": "images", "image_column": "image", "target_prefix": "Point_",
                  "image_size": size, "channels": 3}, key="targets")


def _separated_points(rng: np.random.Generator, width: int, height: int, radius: int) -> list[tuple[int, int]]:
    """One pixel per keypoint, inside the image, marks not touching each other."""
    while True:
        xs = rng.integers(radius + 1, width - radius - 1, size=len(POINT_COLOURS))
        ys = rng.integers(radius + 1, height - radius - 1, size=len(POINT_COLOURS))
        gaps = np.maximum(np.abs(xs[:, None] - xs[None, :]), np.abs(ys[:, None] - ys[None, :]))
        if (gaps + np.eye(len(xs), dtype=np.int64) * 99).min() > 2 * radius + 1:
            return [(int(x), int(y)) for x, y in zip(xs, ys, strict=True)]
