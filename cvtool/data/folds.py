"""K-fold assignment of the training split, and the fold run's view of the data.

Stratified by class for single-label tasks (scikit-learn `StratifiedKFold`), by tags for
multi-label (iterative stratification, Sechidis et al. 2011, from the `iterative-stratification`
package), plain `KFold` otherwise, or `GroupKFold` when `data.folds.group_column` names a CSV
column. The assignment depends only on the training split and the seed, so every fold run
(and a resumed one) sees the same folds.
"""

from __future__ import annotations

import sys
from dataclasses import replace

import numpy as np

from cvtool.data.formats import DatasetInfo, Split, safe_join
from cvtool.errors import CvtoolError
from cvtool.fileio import read_csv_rows
from cvtool.recipe.schema import DataConfig
from cvtool.tasks import get_task


def assign_folds(split: Split, cfg: DataConfig, task: str, seed: int) -> np.ndarray:
    """The fold index (0 to k-1) of every image of `split`, in its order."""
    folds = cfg.folds
    assert folds is not None, "assign_folds needs data.folds"
    count = len(split)
    if count < folds.k:
        raise CvtoolError(f"data.folds.k: {folds.k} folds need at least {folds.k} training images, have {count}")
    seed = seed if folds.seed is None else folds.seed
    index = np.zeros((count, 1))
    if folds.group_column is not None:
        from sklearn.model_selection import GroupKFold

        groups = _groups(split, cfg, folds.group_column)
        if len(set(groups)) < folds.k:
            raise CvtoolError(f"data.folds.group_column: {len(set(groups))} groups for {folds.k} folds")
        return _fill(GroupKFold(n_splits=folds.k, shuffle=True, random_state=seed).split(index, groups=groups), count)
    splitter, labels = _splitter(split, folds.k, folds.stratify, get_task(task).fold_stratify, seed)
    return _fill(splitter.split(index, labels), count)


def _splitter(split: Split, k: int, stratify: str, by: str, seed: int):
    from sklearn.model_selection import KFold, StratifiedKFold

    if stratify == "none" or by == "none" or split.targets is None:
        return KFold(n_splits=k, shuffle=True, random_state=seed), None
    if by == "classes":
        smallest = int(np.bincount(split.targets).min(initial=k))
        if smallest < k:
            print(f"cvtool: data.folds: a class has {smallest} images for {k} folds; folds are not stratified",
                  file=sys.stderr)
            return KFold(n_splits=k, shuffle=True, random_state=seed), None
        return StratifiedKFold(n_splits=k, shuffle=True, random_state=seed), split.targets
    try:
        from iterstrat.ml_stratifiers import MultilabelStratifiedKFold
    except ImportError:
        print("cvtool: data.folds: multi-label stratification needs the 'folds' extra "
              "(pip install iterative-stratification); using plain KFold", file=sys.stderr)
        return KFold(n_splits=k, shuffle=True, random_state=seed), None
    return MultilabelStratifiedKFold(n_splits=k, shuffle=True, random_state=seed), split.targets


def _fill(pairs, count: int) -> np.ndarray:
    fold_of = np.full(count, -1, np.int64)
    for fold, (_, held_out) in enumerate(pairs):
        fold_of[held_out] = fold
    assert (fold_of >= 0).all(), "every image belongs to one fold"
    return fold_of


def _groups(split: Split, cfg: DataConfig, column: str) -> list[str]:
    """The group column's value of every image (format csv: read from the train CSV)."""
    if cfg.format != "csv":
        raise CvtoolError(f"data.folds.group_column: needs data.format csv, not {cfg.format}")
    csv_path = cfg.root / (cfg.train if cfg.train.endswith(".csv") else f"{cfg.train}.csv")
    columns, rows = read_csv_rows(csv_path)
    if column not in columns:
        raise CvtoolError(f"{csv_path}: no column '{column}' (data.folds.group_column); columns: {columns[:8]}")
    image_root = cfg.root / cfg.images_dir
    group_of = {safe_join(image_root, row[cfg.image_column] + cfg.image_extension, csv_path): row[column]
                for row in rows}
    return [group_of[path] for path in split.paths]


def fold_view(info: DatasetInfo, cfg: DataConfig, task: str, seed: int) -> DatasetInfo:
    """A fold run's data: train without fold `cfg.fold`, and that fold as its val split (the
    recipe's own val split is not trained on by any fold: it stays a hold-out)."""
    if cfg.fold is None:
        return info
    train = info.splits["train"]
    fold_of = assign_folds(train, cfg, task, seed)
    held_out = np.flatnonzero(fold_of == cfg.fold)
    kept = np.flatnonzero(fold_of != cfg.fold)
    splits = {**info.splits, "train": train.subset(kept, "train"), "val": train.subset(held_out, "val")}
    return replace(info, splits=splits)
