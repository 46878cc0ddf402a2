"""Reading finished runs and sweeps back for a report: summary, metrics history, resolved recipe."""

from __future__ import annotations

import itertools
import json
from collections import Counter
from collections.abc import Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import TYPE_CHECKING, Any

import yaml

from cvtool.errors import CvtoolError
from cvtool.recipe.sweep import sweep_point_name
from cvtool.runs.layout import RunDir

if TYPE_CHECKING:
    from cvtool.search.report import SearchSection

DEFAULT_SMOOTHING = 0.6  # TensorBoard's weight the seeds read their smoothed values with


@dataclass(frozen=True)
class Run:
    """One finished run directory, read back."""

    label: str
    path: Path
    summary: dict[str, Any]
    history: list[dict[str, float]]
    settings: dict[str, Any]  # the resolved recipe as dotted keys

    @property
    def smoothing(self) -> float:
        return float(self.settings.get("train.smoothing", DEFAULT_SMOOTHING))


@dataclass(frozen=True)
class Row:
    rank: int
    run: Run
    differs: str
    best_epoch: int | None
    best: float | None
    smoothed_epoch: int | None
    smoothed: float | None
    test: float | None
    spread: str = ""  # a fold set: " ± std (min–max)" over its folds
    test_spread: str = ""


@dataclass(frozen=True)
class Figure:
    title: str
    path: Path  # inside the files folder
    run: str | None = None  # the run a per-run figure belongs to


@dataclass
class Report:
    metric: str
    higher: bool
    sources: list[Path]
    rows: list[Row]
    varying: list[str]
    reference: str  # label of the first run, which "differs" compares against
    smoothing: float
    markdown: Path
    html: Path
    files_dir: Path
    figures: list[Figure] = field(default_factory=list)
    searches: list[SearchSection] = field(default_factory=list)  # one per search dir


def collect_runs(run_dirs: Sequence[Path]) -> list[Run]:
    """Every run in `run_dirs`, in the order given; a sweep directory contributes its points."""
    if not run_dirs:
        raise CvtoolError("report: give at least one run directory")
    runs: list[Run] = []
    seen: set[Path] = set()
    for given in run_dirs:
        folder = Path(given)
        if not folder.is_dir():
            raise CvtoolError(f"{folder}: {'not a directory' if folder.exists() else 'no such directory'}")
        if RunDir(folder).is_fold_set():
            if folder.resolve() not in seen:
                seen.add(folder.resolve())
                runs.append(read_fold_set(folder))
            continue
        if RunDir(folder).is_sweep():
            points = [(f"{_sweep_name(folder)}/{p.name}", p) for p in sweep_points(folder)]
        elif RunDir(folder).is_search():
            from cvtool.search.report import search_points

            points = [(f"{name}/{p.name}", p) for name, p in search_points(folder)]
        elif RunDir(folder).summary.is_file():
            points = [(None, folder)]
        else:
            raise CvtoolError(f"{folder}: not a cvtool run (no summary.json) or sweep (no sweep.json)")
        for label, path in points:
            if path.resolve() not in seen:
                seen.add(path.resolve())
                runs.append(read_run(path, label))
    return _unique_labels(runs)


def sweep_points(sweep_dir: Path) -> list[Path]:
    """A sweep's finished points, in grid order (the order `cvtool train` ran them)."""
    done = {p.name: p for p in sorted(sweep_dir.iterdir()) if RunDir(p).summary.is_file()}
    if not done:
        raise CvtoolError(f"{sweep_dir}: a sweep without any finished run")
    order: list[str] = []
    try:
        grid = (yaml.safe_load(RunDir(sweep_dir).recipe.read_text(encoding="utf-8")) or {}).get("sweep") or {}
        keys = list(grid)
        order = [sweep_point_name(dict(zip(keys, combo, strict=True)))
                 for combo in itertools.product(*(grid[k] for k in keys))]
    except (OSError, yaml.YAMLError, AttributeError, TypeError):
        order = []  # fall back to name order
    ordered = [done.pop(name) for name in order if name in done]
    return ordered + list(done.values())


def read_run(path: Path, label: str | None = None) -> Run:
    run = RunDir(path)
    summary = run.read_summary()
    history = run.read_history()
    settings: dict[str, Any] = {}
    recipe_file = run.recipe
    if recipe_file.is_file():
        try:
            settings = flatten(yaml.safe_load(recipe_file.read_text(encoding="utf-8")) or {})
        except yaml.YAMLError as exc:
            raise CvtoolError(f"{recipe_file}: invalid YAML ({getattr(exc, 'problem', exc)})") from None
    return Run(label or str(summary.get("name") or path.name), path, summary, history, settings)


def read_fold_set(path: Path) -> Run:
    """A k-fold set as one run: the folds' mean history and best values, with their spread."""
    import numpy as np

    folds = [read_run(p) for p in RunDir(path).fold_runs() if RunDir(p).summary.is_file()]
    if not folds:
        raise CvtoolError(f"{path}: a fold set without any finished fold")
    first = folds[0].summary
    epochs = set.intersection(*({int(r["epoch"]) for r in f.history} for f in folds))
    history = [{key: float(np.mean([next(r for r in f.history if r["epoch"] == epoch)[key] for f in folds]))
                for key in folds[0].history[0] if all(key in r for f in folds for r in f.history)}
               for epoch in sorted(epochs)]
    values: dict[str, list[float]] = {}
    for fold in folds:
        for split in ("val", "test"):
            for key, value in (fold.summary.get(split) or {}).items():
                values.setdefault(f"{split}/{key}", []).append(float(value))
    full = {k: v for k, v in values.items() if len(v) == len(folds)}
    mean = lambda key: float(np.mean([f.summary[key] for f in folds]))  # noqa: E731
    tasks = {f.summary.get("task") for f in folds}
    summary = {"name": first.get("name"), "task": tasks.pop() if len(tasks) == 1 else None,
               "monitor": first.get("monitor"), "folds": len(folds),
               "best_epoch": None, "best_value": mean("best_value"), "smoothed_best_epoch": None,
               "smoothed_best_value": mean("smoothed_best_value"),
               "epochs_run": max(int(f.summary.get("epochs_run") or 0) for f in folds),
               "seconds": round(sum(float(f.summary.get("seconds") or 0) for f in folds), 2),
               "test": {k.removeprefix("test/"): float(np.mean(v)) for k, v in full.items() if k.startswith("test/")},
               "spread": {k: f" ± {np.std(v, ddof=1):.4f} ({min(v):.4f}–{max(v):.4f})" for k, v in full.items()}}
    settings = {k: v for k, v in folds[0].settings.items() if k != "data.fold"}
    return Run(f"{first.get('name') or path.name} ({len(folds)} folds)", path, summary, history, settings)


def _sweep_name(folder: Path) -> str:
    try:
        return str(json.loads(RunDir(folder).sweep.read_text(encoding="utf-8")).get("name") or folder.name)
    except (OSError, json.JSONDecodeError):
        return folder.name


def _unique_labels(runs: list[Run]) -> list[Run]:
    """Runs of the same recipe get their directory name appended."""
    counts = Counter(run.label for run in runs)
    return [Run(f"{r.label} ({r.path.name})", r.path, r.summary, r.history, r.settings) if counts[r.label] > 1 else r
            for r in runs]


def flatten(data: Any, prefix: str = "") -> dict[str, Any]:
    """{'optim': {'lr': 0.1}} -> {'optim.lr': 0.1}; lists stay whole values."""
    if not isinstance(data, dict):
        return {prefix: data} if prefix else {}
    flat: dict[str, Any] = {}
    for key, value in data.items():
        dotted = f"{prefix}.{key}" if prefix else str(key)
        if isinstance(value, dict) and value:
            flat.update(flatten(value, dotted))
        else:
            flat[dotted] = value
    return flat
