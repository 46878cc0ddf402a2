"""`cvtool train --fold all|N`: k-fold cross-validation into one fold set.

DIR/recipe.yaml (the recipe as given), DIR/folds.csv (image, fold: fixed when the set starts,
checked on every resume), DIR/fold_<N>/ (an ordinary run whose val split is fold N), and once
every fold is done DIR/folds.json (each fold's metrics, their mean and std) and DIR/oof.csv.
A resumed set skips finished folds and continues the interrupted one from its last.pt.
"""

from __future__ import annotations

import json
import sys
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np

from cvtool.data.folds import assign_folds
from cvtool.data.formats import DatasetInfo, read_dataset
from cvtool.errors import CvtoolError
from cvtool.fileio import read_csv_rows, write_csv, write_json, write_text
from cvtool.folds.oof import OofPredictions, read_oof, write_oof
from cvtool.recipe.load import recipe_to_yaml
from cvtool.recipe.schema import Recipe
from cvtool.runs.layout import RunDir
from cvtool.runs.plotting import load_predictions
from cvtool.runs.sweep import changed_epochs, check_epochs, new_run, prepare_now
from cvtool.runs.train import fit
from cvtool.tasks import get_task


def fold_recipe(recipe: Recipe, fold: int) -> Recipe:
    """The recipe of fold run N: the same, with data.fold = N."""
    return recipe.model_copy(update={"data": recipe.data.model_copy(update={"fold": fold})})


def parse_fold(value: str, k: int) -> list[int]:
    """--fold all -> [0 .. k-1]; --fold N -> [N]."""
    if value == "all":
        return list(range(k))
    if not value.isdigit() or int(value) >= k:
        raise CvtoolError(f"--fold: expected all or a fold index 0 to {k - 1}, got {value!r}")
    return [int(value)]


def run_folds(recipe: Recipe, run_dir: Path, fold: str = "all", *, resume: bool = False, overwrite: bool = False,
              quiet: bool = False, stop: Any = None, extend: bool = False) -> dict[str, Any]:
    """Train the folds asked for into run_dir; returns folds.json's content once all are done
    (else the summaries so far, with "complete": False)."""
    folds = start_fold_set(recipe, run_dir, fold, resume=resume, overwrite=overwrite, extend=extend)
    for index in folds.wanted:
        train_fold(fold_recipe(folds.recipe, index), RunDir(run_dir).fold(index), quiet=quiet, stop=stop,
                   extend=extend)
    return collect_folds(folds.recipe, folds.info, folds.fold_of, RunDir(run_dir))


@dataclass(frozen=True)
class FoldSet:
    """A fold set's recipe (data.fold unset), dataset, fold of every training image, folds asked for."""

    recipe: Recipe
    info: DatasetInfo
    fold_of: np.ndarray
    wanted: list[int]


def start_fold_set(recipe: Recipe, run_dir: Path, fold: str = "all", *, resume: bool, overwrite: bool,
                   extend: bool = False) -> FoldSet:
    """The fold set's folder with its recipe.yaml and folds.csv (checked against it on a resume)."""
    if recipe.data.folds is None:
        raise CvtoolError("--fold: the recipe has no data.folds (e.g. data: {folds: {k: 5}})")
    if recipe.sweep:
        raise CvtoolError("--fold: a recipe with a sweep cannot be folded (fold one of its points)")
    recipe = recipe.model_copy(update={"data": recipe.data.model_copy(update={"fold": None})})
    wanted = parse_fold(fold, recipe.data.folds.k)
    prepare_now(run_dir, resume, overwrite, recipe)
    info = read_dataset(recipe.data, recipe.task, recipe.seed)
    fold_of = fixed_assignment(recipe, info, RunDir(run_dir), resume)
    for index in wanted if resume else ():  # a changed train.epochs needs --extend: refused before any write
        check_epochs(fold_recipe(recipe, index), RunDir(RunDir(run_dir).fold(index)), extend)
    write_text(RunDir(run_dir).recipe, recipe_to_yaml(recipe))
    return FoldSet(recipe, info, fold_of, wanted)


def train_fold(point: Recipe, fold_dir: Path, *, quiet: bool = False, stop: Any = None, extend: bool = False) -> None:
    """One fold run (`fold_recipe`) into fold_dir: skipped once finished (unless train.epochs
    changed: then --extend trains it on, checked in start_fold_set), else continued from its last.pt."""
    run = RunDir(fold_dir)
    if run.summary.is_file() and not changed_epochs(run, point):
        return
    started = run.checkpoint("last").is_file()
    with new_run(point, run.path, resume=started, overwrite=True, extend=extend) as (work, moved):
        fit(point, work, resume=started, extend=extend, quiet=quiet, stop=stop, started=moved)


def fixed_assignment(recipe: Recipe, info: DatasetInfo, run: RunDir, resume: bool) -> np.ndarray:
    """The fold of every training image: computed and written to folds.csv, or (resume) checked
    against it, so a changed dataset cannot silently move images between folds."""
    train = info.splits["train"]
    fold_of = assign_folds(train, recipe.data, recipe.task, recipe.seed)
    names = [relative_name(p, recipe.data.root) for p in train.paths]
    if resume and run.folds_table.is_file():
        _, rows = read_csv_rows(run.folds_table)
        stored = [(r.get("image"), r.get("fold")) for r in rows]
        if stored != [(n, str(int(f))) for n, f in zip(names, fold_of, strict=True)]:
            raise CvtoolError(f"{run.folds_table}: the training split or data.folds changed since the fold set "
                              "started; start a new fold set (--out elsewhere or --overwrite)")
        return fold_of
    write_csv(run.folds_table, ["image", "fold"], [[n, int(f)] for n, f in zip(names, fold_of, strict=True)])
    return fold_of


def relative_name(path: Path, root: Path) -> str:
    try:
        return Path(path).resolve().relative_to(Path(root).resolve()).as_posix()
    except ValueError:
        return str(path)


def collect_folds(recipe: Recipe, info: DatasetInfo, fold_of: np.ndarray, run: RunDir) -> dict[str, Any]:
    """folds.json and oof.csv when every fold has finished."""
    k = recipe.data.folds.k
    summaries = {i: RunDir(run.fold(i)).read_summary() for i in range(k) if RunDir(run.fold(i)).summary.is_file()}
    task = get_task(recipe.task)
    monitor = next(iter(summaries.values()))["monitor"] if summaries else (recipe.train.monitor or task.default_monitor)
    rows = [{"fold": i, "best_epoch": s.get("best_epoch"), "best_value": s.get("best_value"),
             "val": s.get("val") or {}, "test": s.get("test")} for i, s in sorted(summaries.items())]
    result: dict[str, Any] = {"folds": True, "name": recipe.name, "task": task.name, "monitor": monitor, "k": k,
                              "complete": len(summaries) == k, "runs": rows}
    if len(summaries) < k:
        return result
    result.update(mean_std(rows))
    oof = gather_oof(recipe, info, fold_of, run)
    result["thresholds"] = _stored_thresholds(run)  # tuned on this OOF before a later resume: kept
    if result["thresholds"] is not None and (_stale_flag(run) or _outputs_changed(run, oof)):
        result["thresholds_stale"] = True  # the folds were trained on after the tuning (--resume --extend)
        print(f"cvtool: {run.folds}: the thresholds were tuned on out-of-fold outputs that have changed since; "
              f"kept, marked stale: rerun cvtool evaluate {run.path} --oof --tune-thresholds", file=sys.stderr)
    write_oof(run.oof, oof)
    result["oof"] = task.metrics(oof.targets, oof.outputs, recipe.evaluate.threshold, oof.sizes)
    write_json(run.folds, result)
    return result


def _outputs_changed(run: RunDir, oof: OofPredictions) -> bool:
    """Whether the out-of-fold outputs differ from those in the oof.csv written before."""
    try:
        before = read_oof(run.oof)
    except CvtoolError:
        return True
    return not np.array_equal(before.outputs, oof.outputs.astype(np.float32))


def _stale_flag(run: RunDir) -> bool:
    try:
        return bool(json.loads(run.folds.read_text(encoding="utf-8")).get("thresholds_stale"))
    except (OSError, json.JSONDecodeError):
        return False


def _stored_thresholds(run: RunDir) -> list[float] | None:
    if not run.folds.is_file():
        return None
    try:
        return json.loads(run.folds.read_text(encoding="utf-8")).get("thresholds")
    except json.JSONDecodeError:
        return None


def mean_std(rows: list[dict[str, Any]]) -> dict[str, dict[str, float]]:
    """Mean and sample std (ddof 1) over the folds of every val/ and test/ metric."""
    values: dict[str, list[float]] = {}
    for row in rows:
        for split in ("val", "test"):
            for key, value in (row[split] or {}).items():
                values.setdefault(f"{split}/{key}", []).append(float(value))
    full = {key: v for key, v in values.items() if len(v) == len(rows)}
    return {"mean": {key: float(np.mean(v)) for key, v in full.items()},
            "std": {key: float(np.std(v, ddof=1)) if len(v) > 1 else 0.0 for key, v in full.items()}}


def gather_oof(recipe: Recipe, info: DatasetInfo, fold_of: np.ndarray, run: RunDir) -> OofPredictions:
    """Each fold's best-epoch predictions of its held-out images, back in training-split order."""
    train = info.splits["train"]
    count = len(train)
    outputs: np.ndarray | None = None
    targets: np.ndarray | None = None
    sizes = np.zeros((count, 2), np.int64)
    seen = np.zeros(count, np.int64)
    for index in range(recipe.data.folds.k):
        data = load_predictions(RunDir(run.fold(index)).predictions / "val_best.npz")
        rows = np.flatnonzero(fold_of == index)[data["indices"]]
        if outputs is None:
            outputs = np.zeros((count, *data["outputs"].shape[1:]), np.float32)
            targets = np.zeros((count, *data["targets"].shape[1:]), data["targets"].dtype)
        outputs[rows], targets[rows], sizes[rows] = data["outputs"], data["targets"], data["sizes"]
        seen[rows] += 1
    if outputs is None or targets is None or not (seen == 1).all():
        raise CvtoolError(f"{run.path}: the folds' predictions do not cover every training image once")
    output_names = list(info.target_names) or list(info.class_names)[-outputs.shape[1]:]
    target_names = list(info.target_names) or list(info.class_names)
    names = [relative_name(p, recipe.data.root) for p in train.paths]
    threshold = np.asarray(_stored_thresholds(run) or recipe.evaluate.threshold, np.float32)
    predicted = get_task(recipe.task).predicted_labels(outputs, list(info.class_names), threshold)
    return OofPredictions(names, fold_of, sizes, targets, outputs, target_names, output_names, predicted)
