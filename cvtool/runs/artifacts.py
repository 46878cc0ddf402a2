"""What a finished run leaves behind: split metrics, saved predictions, summary.json, plots."""

from __future__ import annotations

import csv
from dataclasses import replace
from pathlib import Path
from typing import TYPE_CHECKING, Any

import numpy as np
import torch

from cvtool.data.pipeline import eval_dataset, skipped_counts
from cvtool.engine.checkpoint import load_checkpoint
from cvtool.engine.inference import predict_split
from cvtool.engine.state import TrainState
from cvtool.fileio import atomic_open, write_csv, write_json
from cvtool.plots import smooth_curve
from cvtool.runs import plotting
from cvtool.runs.layout import RunDir
from cvtool.runs.session import Session
from cvtool.tasks import Task, higher_is_better

if TYPE_CHECKING:
    from cvtool.engine.loop import Step


def split_metrics(session: Session, step: Step, dataset: Any, split: str, *, model: torch.nn.Module | None = None,
                  keep_outputs: bool = True, epoch: int | None = None, loader: Any = None) -> dict[str, Any]:
    """Loss and task metrics of `model` (default: the step's) on one split, gathered over ranks
    (`loader`: the split's `engine.inference.split_loader`, when the caller keeps one)."""
    from cvtool.engine.loop import NonFiniteOutputs

    recipe = session.recipe
    try:
        found = predict_split(step.model if model is None else model, step.normalize, dataset, session.task,
                              recipe.data, session.device, threshold=recipe.evaluate.threshold, loss_fn=step.loss_fn,
                              dtype=step.dtype, channels_last=step.channels_last, dist=session.dist,
                              loader=loader)
    except NonFiniteOutputs:
        raise NonFiniteOutputs(split, epoch) from None  # name the epoch training stopped at
    result = {"split": split, "loss": found.loss, "metrics": found.metrics}
    if keep_outputs:
        result.update(outputs=found.outputs, targets=found.targets, indices=found.indices, sizes=found.sizes,
                      frames=found.frames)
    return result


def save_predictions(path: Path, result: dict[str, Any]) -> None:
    with atomic_open(path, "wb") as handle:
        np.savez_compressed(handle, outputs=result["outputs"], targets=result["targets"],
                            indices=result["indices"], sizes=result["sizes"], frames=result["frames"])


def finish_run(session: Session, step: Step, state: TrainState, run_dir: Path | None, quiet: bool,
               plotter: plotting.Plotter | None = None) -> dict[str, Any]:
    """After the last epoch (rank 0 alone, no gathering): the plotting process gets its job, the
    best checkpoint is evaluated on the test split (first: the plots draw at the lowest priority, in
    the CPU time it leaves), summary.json is written, and the plots are waited for last."""
    if run_dir is not None and plotter is not None:
        write_plots(run_dir, state.history, session.task, session.meta.class_names, session.recipe.train.smoothing,
                    session.recipe.evaluate.threshold, plotter)
    try:
        test = _test_metrics(session, step, run_dir)
        summary = build_summary(session, state, test)
        if run_dir is not None:
            write_json(RunDir(run_dir).summary, summary)
    finally:
        if plotter is not None:
            plotter.wait()
    return summary


def _test_metrics(session: Session, step: Step, run_dir: Path | None) -> dict[str, float] | None:
    """The best checkpoint's loss and metrics on the labelled test split (its predictions saved)."""
    if run_dir is None or "test" not in session.bundle.splits or session.bundle.splits["test"].targets is None:
        return None
    best = load_checkpoint(RunDir(run_dir).checkpoint("best"))
    step.module.load_state_dict(best["model"])
    alone = replace(session, dist=None)  # only rank 0 gets here: no DDP wrapper, no gathering
    result = split_metrics(alone, step, eval_dataset(alone.bundle, "test", alone.task), "test", model=step.module)
    save_predictions(RunDir(run_dir).prediction("test_best"), result)
    return {"loss": result["loss"], **result["metrics"]}


def build_summary(session: Session, state: TrainState, test: dict[str, float] | None) -> dict[str, Any]:
    monitor = session.monitor
    values = [row[monitor] for row in state.history]
    smoothed = smooth_curve(values, session.recipe.train.smoothing)
    defined = [i for i, value in enumerate(smoothed) if np.isfinite(value)]  # undefined epochs: never picked
    pick = max if higher_is_better(monitor) else min
    best_row = next((r for r in state.history if r["epoch"] == state.best_epoch), {})
    s_index = pick(defined, key=lambda i: smoothed[i]) if defined else None
    return {
        "name": session.recipe.name,
        "task": session.task.name,
        "monitor": monitor,
        "best_epoch": state.best_epoch,
        "best_value": state.best_value,
        "weights": state.best_weights or "raw",  # train.ema: "ema" or "raw", what best.pt's "model" holds
        "smoothed_best_epoch": state.history[s_index]["epoch"] if s_index is not None else None,
        "smoothed_best_value": smoothed[s_index] if s_index is not None else None,
        "epochs_run": state.epoch,
        "val": {k.removeprefix("val/"): v for k, v in best_row.items() if k.startswith("val/")},
        "test": test,
        "seconds": round(sum(r["seconds"] for r in state.history), 2),
        "device": str(session.device),
        "classes": len(session.meta.class_names),
        "train_images": len(session.bundle.splits["train"]),
        "skipped_images": skipped_counts(session.bundle),
    }


def write_plots(run_dir: Path, history: list[dict[str, float]], task: Task, class_names: list[str],
                smoothing: float, threshold: float, plotter: plotting.Plotter) -> None:
    """Loss, every metric (raw and smoothed), lr, confusion matrices and ROC curves: the job of the
    run's plotting process (`runs.plotting`), which draws them while the run goes on."""
    if history:
        plotter.draw(run_dir, history, list(task.figures), class_names, smoothing, threshold)


def record_sampling(sampler: Any, session: Session, run_dir: Path, epoch: int) -> None:
    """data.sampler: append how many images of each class the epoch drew to sampling.csv."""
    if not hasattr(sampler, "group_counts"):
        return
    names = list(session.bundle.info.class_names)
    groups = int(sampler.groups.max()) + 1
    names += ["(no tag)"] * (groups > len(names))
    path = RunDir(run_dir).sampling
    rows: list[list[str]] = []
    if epoch > 1 and path.is_file():
        with path.open(newline="", encoding="utf-8") as handle:
            rows = list(csv.reader(handle))[1:]
    rows = [r for r in rows if int(r[0]) < epoch] + [[str(epoch), *map(str, sampler.group_counts(len(names)))]]
    write_csv(path, ["epoch", *names], rows)
