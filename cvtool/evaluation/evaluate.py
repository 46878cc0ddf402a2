"""`cvtool evaluate`: a checkpoint on one split of the data its recipe describes.

The data pipeline is rebuilt from the recipe stored in the checkpoint and normalized with the
checkpoint's own mean/std (never recomputed), so `--data` can point at another root of the
same layout. Decision thresholds come from the checkpoint (tuned ones when stored).
"""

from __future__ import annotations

import dataclasses
from pathlib import Path
from typing import TYPE_CHECKING

import numpy as np

from cvtool.data.loaders import Normalize
from cvtool.data.pipeline import eval_dataset, prepare_data
from cvtool.engine.accel import select_device
from cvtool.engine.checkpoint import update_meta
from cvtool.engine.inference import predict_split
from cvtool.errors import CvtoolError
from cvtool.evaluation.calibration import calibrate_run, check_calibratable
from cvtool.evaluation.reports import per_class_table, write_predictions_csv, write_reports
from cvtool.evaluation.results import EvalReport, EvalResult, Tuning
from cvtool.evaluation.thresholds import check_tunable, score, tune_thresholds
from cvtool.recipe.schema import Recipe
from cvtool.runs.layout import RunDir
from cvtool.runs.lock import hold_for_writing
from cvtool.runs.model import load_model
from cvtool.runs.outputs import check_file, check_folder

if TYPE_CHECKING:
    import torch

    from cvtool.data.loaders import SampleDataset
    from cvtool.data.pipeline import DataBundle
    from cvtool.runs.model import LoadedModel

SPLITS = ("train", "val", "test")


def check_split(split: str) -> None:
    if split not in SPLITS:
        raise CvtoolError(f"--split: unknown split '{split}' (use {', '.join(SPLITS)})")


def recipe_for(loaded: LoadedModel, data_root: str | Path | None = None) -> Recipe:
    """The checkpoint's recipe, with data.root replaced by `data_root` when given."""
    recipe = loaded.recipe
    if data_root is None:
        return recipe
    return recipe.model_copy(update={"data": recipe.data.model_copy(update={"root": Path(data_root)})})


def load_splits(loaded: LoadedModel, splits: tuple[str, ...], data_root: str | Path | None = None,
                progress: bool = False) -> DataBundle:
    """Decode the wanted splits (those that exist) with the checkpoint's normalization."""

    for split in splits:
        check_split(split)
    meta = loaded.meta
    recipe = recipe_for(loaded, data_root)
    # only the splits asked for are read (train always: it fixes the class order), so a --data root
    # without test/ still evaluates val
    data = recipe.data.model_copy(update={name: None for name in ("val", "test") if name not in splits})
    bundle = prepare_data(data, loaded.task, recipe.seed, splits, progress, normalization=(meta.mean, meta.std))
    names = list(bundle.info.target_names or bundle.info.class_names)
    expected = list(meta.target_names or meta.class_names)
    if names != expected:
        raise CvtoolError(f"data: classes {names[:6]} do not match the checkpoint's {expected[:6]}")
    return bundle


def require_split(bundle: DataBundle, split: str, labelled: bool = True) -> None:
    if split not in bundle.splits:
        have = ", ".join(bundle.splits) or "none"
        raise CvtoolError(f"--split {split}: the recipe's data has no {split} split (decoded: {have})")
    if labelled and bundle.splits[split].targets is None:
        raise CvtoolError(f"--split {split}: the split has no labels, nothing to evaluate (use cvtool predict)")


def model_device(loaded: LoadedModel) -> torch.device:
    return next(loaded.model.parameters()).device


def default_threshold(loaded: LoadedModel) -> np.ndarray:
    """The stored (tuned) thresholds, else the recipe's evaluate.threshold."""
    return np.asarray(loaded.meta.labels(loaded.recipe.evaluate.threshold).thresholds)


def dataset_for(loaded: LoadedModel, bundle: DataBundle, split: str) -> SampleDataset:
    return eval_dataset(bundle, split, loaded.task)


def evaluate_split(loaded: LoadedModel, split: str, data_root: str | Path | None = None,
                   bundle: DataBundle | None = None, progress: bool = False) -> EvalResult:
    """Plain inference of the checkpoint on one split, with the task's sklearn metrics."""

    bundle = bundle if bundle is not None else load_splits(loaded, (split,), data_root, progress)
    require_split(bundle, split, labelled=False)
    dataset = dataset_for(loaded, bundle, split)
    device = model_device(loaded)
    recipe, task = loaded.recipe, loaded.task
    normalize = Normalize(loaded.meta.mean, loaded.meta.std, loaded.meta.image_size).to(device)
    # the training criterion (its class weights and pos_weight), so the val loss matches summary.json
    loss_fn = task.build_loss(recipe.loss, loaded.meta.class_weights, loaded.meta.pos_weight,
                              image_size=recipe.data.image_size).to(device)
    threshold = default_threshold(loaded)
    found = predict_split(loaded.model, normalize, dataset, task, recipe.data, device, threshold=threshold,
                          loss_fn=loss_fn, dtype=loaded.dtype, channels_last=loaded.channels_last)
    return EvalResult(split, found.outputs, found.targets, found.frames,
                      [dataset.split.paths[i] for i in found.indices], found.metrics, found.loss, threshold)


def rescore(loaded: LoadedModel, result: EvalResult, threshold: np.ndarray | float) -> EvalResult:
    """The same outputs scored with other decision thresholds."""
    metrics = ({} if result.targets is None
               else loaded.task.metrics(result.targets, result.outputs, threshold, result.sizes))
    return dataclasses.replace(result, metrics=metrics, threshold=threshold)


def tune_and_store(loaded: LoadedModel, val: EvalResult, test: EvalResult | None) -> Tuning:
    """Tune thresholds on val, score them on test, store the per-class ones in the checkpoint."""

    metric = loaded.recipe.evaluate.tune_metric
    check_tunable(loaded.task, metric)
    if val.targets is None:
        raise CvtoolError("--tune-thresholds: the validation split has no labels")
    tuned = tune_thresholds(val.targets, val.outputs, metric, loaded.recipe.evaluate.threshold)
    test_scores = None
    if test is not None and test.targets is not None:
        test_scores = {name: score(metric, test.targets, test.outputs, threshold) for name, threshold in
                       (("default", tuned.default), ("global", tuned.global_threshold),
                        ("per_class", tuned.per_class))}
    thresholds = [float(t) for t in tuned.per_class]
    update_meta(loaded.path, thresholds=thresholds, thresholds_epoch=loaded.epoch)
    loaded.meta = dataclasses.replace(loaded.meta, thresholds=thresholds, thresholds_epoch=loaded.epoch)
    return Tuning(tuned, test_scores, loaded.path)


def check_outputs(loaded: LoadedModel, folder: Path, predictions_csv: str | Path | None,
                  data_root: str | Path | None, updates_checkpoint: bool) -> None:
    """Before any work: the report folder outside the data, the predictions CSV none of the
    inputs, and the lock of every run written into (its checkpoint, when it is updated)."""
    data = recipe_for(loaded, data_root).data
    check_folder("--out", folder, {"the checkpoint": loaded.path}, {"the data root": data.root}, purpose="evaluate")
    if predictions_csv is not None:
        check_file("--save-predictions", Path(predictions_csv), {"the checkpoint": loaded.path}, data,
                   purpose="evaluate")
    if updates_checkpoint:
        hold_for_writing([loaded.path], "evaluate")


def default_out_dir(checkpoint: Path, split: str) -> Path:
    """<run_dir>/eval/<split>-<checkpoint name> (a loose .pt: beside it)."""

    run = RunDir.from_checkpoint(checkpoint) or RunDir(checkpoint.parent)
    return run.eval_dir(split, checkpoint.stem)


def run_evaluation(target: str | Path, split: str = "test", which: str = "best",
                   data_root: str | Path | None = None, out_dir: str | Path | None = None,
                   predictions_csv: str | Path | None = None, tune: bool = False,
                   progress: bool = False, calibrate: bool = False) -> EvalReport:
    """Everything `cvtool evaluate` does: (calibrate), (tune), evaluate, write metrics, tables and plots."""

    check_split(split)
    loaded = load_model(target, which, select_device("auto"), calibrated=not calibrate)
    if tune:
        check_tunable(loaded.task, loaded.recipe.evaluate.tune_metric)
    if calibrate:
        check_calibratable(loaded.task)
    folder = Path(out_dir) if out_dir is not None else default_out_dir(loaded.path, split)
    check_outputs(loaded, folder, predictions_csv, data_root, tune or calibrate)
    wanted = tuple(dict.fromkeys((split, "val", "test") if tune else (split, "val") if calibrate else (split,)))
    bundle = load_splits(loaded, wanted, data_root, progress)
    require_split(bundle, split)
    calibration = None
    if calibrate:  # fitted on the raw model's val outputs; `loaded` is calibrated from here on
        require_split(bundle, "val")
        raw = {name: evaluate_split(loaded, name, bundle=bundle) for name in dict.fromkeys(("val", split))}
        calibration = calibrate_run(loaded, raw, folder)
    tuning, result = None, None
    if tune:
        require_split(bundle, "val")
        val = evaluate_split(loaded, "val", bundle=bundle)
        test = evaluate_split(loaded, "test", bundle=bundle) if "test" in bundle.splits else None
        tuning = tune_and_store(loaded, val, test)
        cached = {"val": val, "test": test}.get(split)
        result = rescore(loaded, cached, default_threshold(loaded)) if cached is not None else None
    if result is None:
        result = evaluate_split(loaded, split, bundle=bundle)
    table = per_class_table(loaded.task, loaded.meta, result)
    files = write_reports(loaded, result, table, folder, tuning, calibration.record() if calibration else None)
    if predictions_csv is not None:
        files.append(write_predictions_csv(Path(predictions_csv), loaded.task, loaded.meta, result))
    return EvalReport(result, table, folder, files, loaded.path, loaded.epoch, tuning, calibration)
