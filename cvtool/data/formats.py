"""Data formats -> sample tables: image paths, targets and class / target names per split.

Formats: a table of reader functions (`READERS`), none of which decodes. Targets: int64 class index
(multiclass, binary), float32 multi-hot (multilabel), float32 x/y pairs in image pixels (keypoints).
"""

from __future__ import annotations

import os
from collections.abc import Callable
from dataclasses import dataclass, field, replace
from pathlib import Path

import numpy as np

from cvtool.data import tables
from cvtool.data.images import image_files
from cvtool.errors import CvtoolError
from cvtool.fileio import read_csv_rows
from cvtool.recipe.schema import DataConfig
from cvtool.tasks import get_task


@dataclass(frozen=True)
class Split:
    name: str
    paths: list[Path]
    targets: np.ndarray | None  # None: a split without labels (e.g. a competition test set)
    # a cut's whole split and its rows there (a fold, a drawn val split): decoded and cached with it
    source: Split | None = field(default=None, compare=False, repr=False)
    rows: np.ndarray | None = field(default=None, compare=False, repr=False)

    def __len__(self) -> int:
        return len(self.paths)

    def subset(self, index: np.ndarray | list[int], name: str | None = None) -> Split:
        idx = np.asarray(index, dtype=np.int64)
        source, rows = (self, idx) if self.source is None else (self.source, self.rows[idx])
        targets = None if self.targets is None else self.targets[idx]
        return Split(name or self.name, [self.paths[i] for i in idx], targets, source, rows)


@dataclass(frozen=True)
class DatasetInfo:
    task: str
    class_names: list[str]
    target_names: list[str] = field(default_factory=list)  # keypoint columns
    splits: dict[str, Split] = field(default_factory=dict)
    class_ids: list[str] = field(default_factory=list)  # Tiny ImageNet's wnids, in class order

    @property
    def num_outputs(self) -> int:
        return get_task(self.task).num_outputs(self.class_names, self.target_names)


Reader = Callable[[DataConfig, str, str], tuple[list[Path], list[str] | np.ndarray | None, list[str]]]


def read_dataset(cfg: DataConfig, task: str, seed: int) -> DatasetInfo:
    """All splits of the recipe's data, with a seeded validation split when `val_fraction` is set."""
    root = cfg.root
    if not root.is_dir():
        raise CvtoolError(f"data.root: folder not found: {root}")
    reader = READERS[cfg.format]
    names = {"train": cfg.train, "val": cfg.val, "test": cfg.test}
    raw: dict[str, tuple] = {}
    excluded = excluded_paths(cfg)
    for split, folder in names.items():
        if folder is not None and not (split == "val" and cfg.val_fraction is not None):
            raw[split] = _without(reader(cfg, folder, task), excluded)
    info = _encode(cfg, task, raw)
    if cfg.format == "tinyimagenet":
        info = replace(info, class_ids=_wnids(root))
    if cfg.val_fraction is not None:
        train, val = split_off(info.splits["train"], cfg.val_fraction, seed, task)
        info = replace(info, splits={**info.splits, "train": train, "val": val})
    for split in info.splits.values():
        if len(split) == 0:
            raise CvtoolError(f"data: split '{split.name}' has no images under {root}")
    return info


def data_files(cfg: DataConfig) -> list[Path]:
    """The files besides images that the data config reads: label CSVs, Tiny ImageNet's lists,
    the exclude list. An output that is one of them is refused."""
    files = [cfg.exclude] if cfg.exclude is not None else []
    splits = [s for s in (cfg.train, cfg.val, cfg.test) if s is not None]
    if cfg.format == "csv":
        files += [cfg.root / (s if s.endswith(".csv") else f"{s}.csv") for s in splits]
    elif cfg.format == "tinyimagenet":
        files += [cfg.root / "wnids.txt", cfg.root / "words.txt"]
        files += [cfg.root / s / f"{s}_annotations.txt" for s in splits]
        files += sorted((cfg.root / cfg.train).glob("*/*_boxes.txt")) if cfg.train else []
    return files


def excluded_paths(cfg: DataConfig) -> set[Path]:
    """The resolved paths `data.exclude` lists (empty without one)."""
    if cfg.exclude is None:
        return set()
    if not cfg.exclude.is_file():
        raise CvtoolError(f"data.exclude: file not found: {cfg.exclude}")
    lines = [line.strip() for line in cfg.exclude.read_text(encoding="utf-8").splitlines()]
    return {safe_join(cfg.root, line, cfg.exclude) for line in lines if line and not line.startswith("#")}


def _without(raw: tuple, excluded: set[Path]) -> tuple:
    """A reader's (paths, labels, names) without the excluded images."""
    paths, labels, names = raw
    if not excluded:
        return raw
    keep = [i for i, path in enumerate(paths) if Path(path).resolve() not in excluded]
    if labels is not None:
        labels = labels[keep] if isinstance(labels, np.ndarray) else [labels[i] for i in keep]
    return [paths[i] for i in keep], labels, names


def _encode(cfg: DataConfig, task: str, raw: dict[str, tuple]) -> DatasetInfo:
    """Turn per-split raw labels into arrays with one shared class / target order."""
    rules = get_task(task)
    if rules.point_targets:
        target_names = raw["train"][2]
        splits = {}
        for name, (paths, targets, columns) in raw.items():
            if targets is not None and columns != target_names:
                raise CvtoolError(f"data.{name}: keypoint columns differ from the train split")
            splits[name] = Split(name, paths, targets)
        return DatasetInfo(task, [], list(target_names), splits)
    class_names = raw["train"][2]
    splits = {}
    for name, (paths, labels, _) in raw.items():
        if labels is None:
            splits[name] = Split(name, paths, None)
            continue
        try:
            targets = rules.encode_labels(labels, class_names)
        except KeyError as exc:
            raise CvtoolError(f"data.{name}: class {exc.args[0]!r} does not occur in the train split") from None
        splits[name] = Split(name, paths, targets)
    problem = rules.check_classes(class_names)
    if problem:
        raise CvtoolError(f"data: {problem}")
    return DatasetInfo(task, class_names, [], splits)


def split_off(split: Split, fraction: float, seed: int, task: str) -> tuple[Split, Split]:
    """A seeded (stratified for single-label tasks) train/val split."""
    from sklearn.model_selection import train_test_split

    index = np.arange(len(split))
    stratify = get_task(task).stratify_labels(split.targets)
    try:
        train_idx, val_idx = train_test_split(index, test_size=fraction, random_state=seed, stratify=stratify)
    except ValueError:
        train_idx, val_idx = train_test_split(index, test_size=fraction, random_state=seed)
    return split.subset(np.sort(train_idx), "train"), split.subset(np.sort(val_idx), "val")


def read_folder(cfg: DataConfig, split: str, task: str) -> tuple[list[Path], list[str], list[str]]:
    if problem := get_task(task).check_folder_format():
        raise CvtoolError(f"data.format: {problem}")
    base = cfg.root / split
    if not base.is_dir():
        raise CvtoolError(f"data.{_key(cfg, split)}: folder not found: {base}")
    classes = sorted(p.name for p in base.iterdir() if p.is_dir() and not p.name.startswith("."))
    if not classes:
        raise CvtoolError(f"data.{_key(cfg, split)}: {base} has no class folders (<class>/<image>)")
    paths, labels = [], []
    for name in classes:
        for path in image_files(base / name):
            paths.append(path)
            labels.append(name)
    return paths, labels, get_task(task).classes_of(labels) if labels else classes


def read_csv_split(cfg: DataConfig, split: str, task: str) -> tuple[list[Path], object, list[str]]:
    csv_path = cfg.root / (split if split.endswith(".csv") else f"{split}.csv")
    if not csv_path.is_file():
        raise CvtoolError(f"data.{_key(cfg, split)}: CSV file not found: {csv_path}")
    columns, rows = read_csv_rows(csv_path)
    if cfg.image_column not in columns:
        raise CvtoolError(f"{csv_path}: no column '{cfg.image_column}' (data.image_column); columns: {columns[:8]}")
    tables.require_rows(csv_path, rows)
    if cfg.duplicates == "refuse":
        tables.check_duplicates(csv_path, [row[cfg.image_column] for row in rows], cfg.image_column)
    labelled = _key(cfg, split) in tables.LABELLED_SPLITS
    image_root = cfg.root / cfg.images_dir
    paths = [safe_join(image_root, row[cfg.image_column] + cfg.image_extension, csv_path) for row in rows]
    rules = get_task(task)
    if rules.point_targets:
        names = keypoint_columns(cfg, columns, csv_path)
        missing = [name for name in names if name not in columns]
        if missing and labelled:
            tables.require_column(csv_path, missing[0], "data.target_columns", columns)
        if missing:
            return paths, None, names
        return paths, tables.keypoint_targets(csv_path, rows, names), names
    column = rules.label_column(cfg.label_column, cfg.tags_column)
    key = f"data.{rules.label_key}"
    if column not in columns:
        if labelled:
            tables.require_column(csv_path, column, key, columns)
        return paths, None, []
    labels = [row[column].strip() for row in rows]
    if not rules.one_label_per_image:  # space-separated tags in one column
        tables.check_tags(csv_path, labels, column)
    return paths, labels, rules.classes_of(labels)


def keypoint_columns(cfg: DataConfig, columns: list[str], source: Path) -> list[str]:
    if cfg.target_columns:
        return list(cfg.target_columns)
    if cfg.target_prefix:
        names = [c for c in columns if c.startswith(cfg.target_prefix)]
    else:
        names = [c for c in columns if c != cfg.image_column]
    if not names or len(names) % 2:
        raise CvtoolError(f"{source}: keypoints need an even number of x/y target columns (data.target_columns or data.target_prefix)")
    return names


def safe_join(root: Path, relative: str, source: Path) -> Path:
    """root/relative, refusing absolute paths and '..' that leave the data root. Checked on the
    path as written: a symlinked folder the user put inside the root is followed."""
    base = os.path.normpath(os.path.abspath(root))
    candidate = Path(os.path.normpath(os.path.join(base, relative)))
    if not candidate.is_relative_to(base):
        raise CvtoolError(f"{source}: image path escapes the data root: {relative}")
    return candidate.resolve()


def read_tinyimagenet(cfg: DataConfig, split: str, task: str) -> tuple[list[Path], list[str] | None, list[str]]:
    if task not in ("multiclass",):
        raise CvtoolError(f"data.format: tinyimagenet is a multiclass dataset, not {task}")
    root = cfg.root
    wnids = _wnids(root)
    words = _read_words(root / "words.txt")
    names = _unique_names([words.get(w, w) for w in wnids], wnids)
    by_wnid = dict(zip(wnids, names, strict=True))
    base = root / split
    if not base.is_dir():
        raise CvtoolError(f"data.{_key(cfg, split)}: folder not found: {base}")
    annotations = base / f"{split}_annotations.txt"
    paths: list[Path] = []
    labels: list[str] | None = []
    if annotations.is_file():
        for line in annotations.read_text().splitlines():
            parts = line.split("\t")
            if len(parts) >= 2:
                paths.append(safe_join(base / "images", parts[0], annotations))
                labels.append(by_wnid.get(parts[1], parts[1]))
    elif all((base / w).is_dir() for w in wnids[:1]) and (base / wnids[0]).is_dir():
        for wnid in wnids:
            for path in image_files(base / wnid):
                paths.append(path)
                labels.append(by_wnid[wnid])
    else:
        paths = image_files(base / "images")
        labels = None
    return paths, labels, names


def _wnids(root: Path) -> list[str]:
    """The class ids in class order: wnids.txt, else the train folder's class folders."""
    wnids_file = root / "wnids.txt"
    if wnids_file.is_file():
        return [line.strip() for line in wnids_file.read_text().splitlines() if line.strip()]
    return sorted(p.name for p in (root / "train").iterdir() if p.is_dir())


def _read_words(path: Path) -> dict[str, str]:
    if not path.is_file():
        return {}
    words = {}
    for line in path.read_text(encoding="utf-8").splitlines():
        wnid, _, text = line.partition("\t")
        if text:
            words[wnid] = text.split(",")[0].strip()
    return words


def _unique_names(names: list[str], ids: list[str]) -> list[str]:
    seen: dict[str, int] = {}
    for name in names:
        seen[name] = seen.get(name, 0) + 1
    return [f"{name} ({ident})" if seen[name] > 1 else name for name, ident in zip(names, ids, strict=True)]


def _key(cfg: DataConfig, split: str) -> str:
    for key in ("train", "val", "test"):
        if getattr(cfg, key) == split:
            return key
    return split


READERS: dict[str, Reader] = {
    "folder": read_folder,
    "csv": read_csv_split,
    "tinyimagenet": read_tinyimagenet,
}
