"""Submission inputs and header: the images to predict (a folder or a CSV with an image column)
and the CSV's column names. Torch-free (used by the ONNX predict path)."""

from __future__ import annotations

import csv
from collections.abc import Sequence
from dataclasses import dataclass
from pathlib import Path

from cvtool.data.formats import safe_join
from cvtool.data.images import image_files
from cvtool.errors import CvtoolError
from cvtool.fileio import read_csv_rows
from cvtool.registry import suggest

FOLDER_COLUMN = "image"


@dataclass(frozen=True)
class ImageInput:
    key: str  # the image column's cell: the CSV's own value, or the path relative to the folder
    path: Path


@dataclass(frozen=True)
class ImageList:
    column: str  # the image column's header name
    items: list[ImageInput]

    def __len__(self) -> int:
        return len(self.items)


def read_images(source: str | Path, image_column: str | None = None, images_dir: str | Path | None = None,
                extension: str = "", default_column: str = FOLDER_COLUMN, default_dir: str = "") -> ImageList:
    """A folder (every image below it, recursive, sorted by relative path) or a CSV whose
    `image_column` (default: `default_column`, then 'image') holds paths relative to
    `images_dir` (default: the CSV's folder, or its `default_dir` subfolder (or one named like its
    last part, e.g. MADE's test/images/) when the first image is there); `extension` is tried
    when a path lacks it, and dropped from a folder's keys."""
    source = Path(source)
    if source.is_dir():
        if image_column is not None or images_dir is not None:
            raise CvtoolError(f"{source}: --image-column / --images-dir apply to a CSV of images, not a folder")
        return _from_folder(source, extension)
    if source.is_file() and source.suffix.lower() == ".csv":
        if images_dir is not None and not Path(images_dir).is_dir():
            raise CvtoolError(f"--images-dir: folder not found: {images_dir}")
        guesses = [source.parent, source.parent / default_dir, source.parent / Path(default_dir).name]
        roots = [Path(images_dir)] if images_dir is not None else guesses
        return _from_csv(source, image_column, default_column, roots, extension)
    if source.exists():
        raise CvtoolError(f"{source}: IMAGES must be a folder of images or a .csv with an image column")
    raise CvtoolError(f"{source}: no such folder or CSV file")


def _from_folder(folder: Path, extension: str = "") -> ImageList:
    """Keys are paths relative to the folder, without the recipe's `image_extension` (Planet's
    image_name column holds 'test_0' for test_0.jpg)."""
    found = []
    for path in image_files(folder):
        relative = path.relative_to(folder)
        if any(part.startswith(".") for part in relative.parts):
            continue
        key = relative.as_posix()
        if extension and key.lower().endswith(extension.lower()):
            key = key[:-len(extension)]
        found.append(ImageInput(key, path))
    if not found:
        raise CvtoolError(f"{folder}: no images found (looked for {', '.join(('.png', '.jpg', '.jpeg', '...'))})")
    return ImageList(FOLDER_COLUMN, sorted(found, key=lambda item: item.key))


def _from_csv(csv_path: Path, column: str | None, default_column: str, roots: list[Path], extension: str) -> ImageList:
    try:
        names, rows = read_csv_rows(csv_path)
    except (UnicodeDecodeError, csv.Error) as exc:
        raise CvtoolError(f"{csv_path}: not a readable CSV ({exc})") from None
    if column is None:
        column = next((c for c in (default_column, FOLDER_COLUMN) if c in names), default_column)
    if column not in names:
        raise CvtoolError(f"{csv_path}: no column '{column}'{suggest(column, names)}; columns: "
                          f"{', '.join(names[:8]) or 'none'} (choose one with --image-column)")
    if not rows:
        raise CvtoolError(f"{csv_path}: no rows")
    values = [(row.get(column) or "").strip() for row in rows]
    if "" in values:
        raise CvtoolError(f"{csv_path}:{values.index('') + 2}: empty '{column}' cell")
    root = next((r for r in roots if _locate(r, values[0], extension, csv_path).exists()), roots[0])
    return ImageList(column, [ImageInput(value, _locate(root, value, extension, csv_path)) for value in values])


def _locate(root: Path, value: str, extension: str, source: Path) -> Path:
    """root/value, or root/value+extension when only that exists (the recipe's image_extension)."""
    path = safe_join(root, value, source)
    if extension and not path.exists() and not value.lower().endswith(extension.lower()):
        with_ext = safe_join(root, value + extension, source)
        return with_ext if with_ext.exists() else path
    return path


def parse_columns(text: str | None) -> list[str] | None:
    """'a,b,c' -> ['a', 'b', 'c'] (None stays None)."""
    if text is None:
        return None
    names = [name.strip() for name in text.split(",")]
    if not all(names):
        raise CvtoolError(f"--columns: empty column name in {text!r}")
    if len(set(names)) != len(names):
        raise CvtoolError(f"--columns: duplicate column names in {text!r}")
    return names


def submission_header(image_column: str, task_columns: Sequence[str], rename: Sequence[str] | None) -> list[str]:
    """The image column then the task's columns, or `rename` (same count) in their place."""
    header = [image_column, *task_columns]
    if rename is None:
        return header
    if len(rename) != len(header):
        raise CvtoolError(f"--columns: {len(rename)} names for {len(header)} columns ({','.join(header)})")
    return list(rename)


LABEL_STYLES = ("names", "ids")


def class_labels(class_names: Sequence[str], class_ids: Sequence[str] | None, style: str | None) -> list[str]:
    """The class column's values: the readable names, or the dataset's ids (Tiny ImageNet's
    wnids, which its official format wants, are the default when the model has them)."""
    if style is not None and style not in LABEL_STYLES:
        raise CvtoolError(f"--labels: '{style}' is not one of {', '.join(LABEL_STYLES)}")
    if style == "ids" and not class_ids:
        raise CvtoolError("--labels ids: this model has no class ids (only Tiny ImageNet's wnids are kept); "
                          "use --labels names")
    if style == "names" or not class_ids:
        return list(class_names)
    return list(class_ids)


def check_out(out: str | Path) -> None:
    """--out must name a file: a folder would only fail at the final rename, naming a temp file."""
    if Path(out).is_dir():
        raise CvtoolError(f"--out {out}: is a folder; give the submission's file name, e.g. {Path(out) / 'submission.csv'}")
