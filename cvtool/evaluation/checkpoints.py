"""`cvtool evaluate RUN --checkpoint all`: every kept checkpoint of a run (best, last, epoch_NNN)
on one split, in one table. The best test figure need not come from the best-on-val checkpoint
(seed 002's 49.06 % came from epoch 46), and this is how to see it.

Built on evaluate's public functions: the split is decoded once and each checkpoint scored on it.
"""

from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path
from typing import Any

from cvtool.errors import CvtoolError
from cvtool.fileio import refuse_inside, write_csv, write_json
from cvtool.runs.layout import CHECKPOINT_METRICS, CHECKPOINT_TABLE, RunDir
from cvtool.runs.lock import hold_for_writing


@dataclass
class CheckpointTable:
    split: str
    header: list[str]  # checkpoint, epoch, images, loss, then the task's metrics
    rows: list[list[Any]]
    files: list[Path]


def evaluate_checkpoints(target: str | Path, split: str = "test", data_root: str | Path | None = None,
                         out_dir: str | Path | None = None, progress: bool = False) -> CheckpointTable:
    """Score every kept checkpoint of the run `target` on `split`; write CSV and JSON tables."""
    from cvtool.engine.accel import select_device
    from cvtool.evaluation.evaluate import check_split, evaluate_split, load_splits, require_split
    from cvtool.runs.model import load_model

    check_split(split)
    run = RunDir(Path(target))
    if not Path(target).is_dir() or not run.checkpoints.is_dir():
        raise CvtoolError(f"{target}: --checkpoint all needs a run directory with a {run.checkpoints.name}/ folder")
    paths = run.kept_checkpoints()
    if not paths:
        raise CvtoolError(f"{run.checkpoints}: no checkpoints")
    folder = Path(out_dir) if out_dir is not None else run.eval_dir(split, "all")
    device, bundle, records = select_device("auto"), None, []
    for path in paths:
        loaded = load_model(path, device=device)
        if bundle is None:  # before the first decoding: the folder outside the data, the run's lock
            refuse_inside("--out", folder, {"the data root": data_root or loaded.recipe.data.root})
            hold_for_writing([folder], "evaluate")
            bundle = load_splits(loaded, (split,), data_root, progress)
            require_split(bundle, split)
        result = evaluate_split(loaded, split, bundle=bundle)
        records.append({"checkpoint": path.stem, "epoch": loaded.epoch, "images": len(result.outputs),
                        "loss": result.loss, **result.metrics})
    header = list(dict.fromkeys(key for record in records for key in record))
    rows = [[record.get(key) for key in header] for record in records]
    write_csv(folder / CHECKPOINT_TABLE, header, rows)
    write_json(folder / CHECKPOINT_METRICS, {"split": split, "checkpoints": records})
    return CheckpointTable(split, header, rows, [folder / CHECKPOINT_TABLE, folder / CHECKPOINT_METRICS])
