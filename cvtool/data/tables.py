"""Checks on a CSV sample table before any image is decoded: one line naming file, row and column.

Row numbers are the CSV's line numbers (the header is line 1), as an editor shows them.
"""

from __future__ import annotations

from pathlib import Path

import numpy as np

from cvtool.errors import CvtoolError

LABELLED_SPLITS = ("train", "val")  # a test CSV may come without labels (a competition's test set)


def require_rows(csv_path: Path, rows: list[dict[str, str]]) -> None:
    if not rows:
        raise CvtoolError(f"{csv_path}: a header and no rows: the split has no images")


def require_column(csv_path: Path, column: str, key: str, columns: list[str]) -> None:
    """The labelled splits must carry the recipe's label / tags / target column."""
    if column not in columns:
        raise CvtoolError(f"{csv_path}: no column '{column}' ({key}); columns: {', '.join(columns[:8])}")


def check_duplicates(csv_path: Path, values: list[str], column: str) -> None:
    """The same image twice in one table is counted twice and can land in train and val alike."""
    first: dict[str, int] = {}
    for row, value in enumerate(values):
        if value in first:
            raise CvtoolError(f"{csv_path}:{row + 2}: column '{column}': image '{value}' already on line "
                              f"{first[value] + 2} (remove it, or set data.duplicates: keep)")
        first[value] = row


def keypoint_targets(csv_path: Path, rows: list[dict[str, str]], names: list[str]) -> np.ndarray:
    """Float32 rows x columns; an empty, non-numeric, NaN or infinite cell is refused."""
    targets = np.empty((len(rows), len(names)), np.float32)
    for row, cells in enumerate(rows):
        for col, name in enumerate(names):
            text = (cells.get(name) or "").strip()
            try:
                value = float(text)
            except ValueError:
                value = None
            if value is None or not np.isfinite(value):
                what = "empty" if not text else f"{text!r} is not a finite number"
                raise CvtoolError(f"{csv_path}:{row + 2}: column '{name}': keypoint value {what}")
            targets[row, col] = value
    return targets


def check_tags(csv_path: Path, labels: list[str], column: str) -> None:
    """Planet's tags are space-separated; 'clear,primary' would become a class of its own."""
    for row, tags in enumerate(labels):
        if "," in tags:
            spaced = " ".join(t.strip() for t in tags.split(",") if t.strip())
            raise CvtoolError(f"{csv_path}:{row + 2}: column '{column}': tags {tags!r} contain a comma; "
                              f"tags are space-separated ({spaced!r})")
