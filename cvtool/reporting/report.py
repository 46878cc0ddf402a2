"""`cvtool report`: one document that compares runs, so nobody assembles tables and plots by hand.

Runs (or a sweep's points) are ranked by a metric; each row says what differs from the first
run's recipe. Figures overlay the metric across runs (raw faint, smoothed on top, the way
TensorBoard compares runs), the validation loss and the learning rate; each run's confusion
matrix or ROC is copied from its plots folder. Markdown and a self-contained HTML page are
written side by side (reporting/render.py), PNGs into `<stem>_files/` beside them.
"""

from __future__ import annotations

import json
import math
import re
import sys
from collections.abc import Sequence
from pathlib import Path
from typing import Any

from cvtool import plots
from cvtool.errors import CvtoolError
from cvtool.fileio import atomic_open, refuse_inside, write_text
from cvtool.plots import smooth_curve
from cvtool.registry import suggest
from cvtool.reporting.collect import Figure, Report, Row, Run, collect_runs
from cvtool.reporting.render import render_html, render_markdown
from cvtool.runs.layout import RunDir
from cvtool.runs.lock import hold_for_writing
from cvtool.tasks import higher_is_better

IGNORED_KEYS = ("name", "description", "sweep")  # differ between runs without changing the experiment
RUN_PLOTS = ("confusion_best.png", "roc_best.png")  # copied from each run's plots/


def write_report(run_dirs: Sequence[Path], out: Path, metric: str | None = None) -> Report:
    """Rank the runs in `run_dirs` (run or sweep directories) and write `out` (.md) and its .html."""
    runs = collect_runs(run_dirs)
    _check_one_task(runs)
    metric = _metric_name(metric or runs[0].summary.get("monitor") or "val/loss", runs)
    markdown, html = out.with_suffix(".md"), out.with_suffix(".html")
    files_dir = out.parent / f"{out.stem}_files"
    refuse_inside("--out", files_dir, {f"the data root of {run.path}": run.settings.get("data.root") for run in runs})
    hold_for_writing([markdown, html, files_dir], "report")
    report = Report(metric, higher_is_better(metric), [Path(p) for p in run_dirs], rank_runs(runs, metric),
                    varying_keys(runs), runs[0].label, runs[0].smoothing, markdown, html, files_dir)
    report.figures = draw_figures(runs, metric, files_dir)
    add_searches(report, run_dirs, files_dir)
    write_text(markdown, render_markdown(report))
    write_text(html, render_html(report))
    return report


def _check_one_task(runs: list[Run]) -> None:
    """Runs of different tasks share no metric to rank by (accuracy vs rmse): name the groups."""
    groups: dict[str, list[str]] = {}
    for run in runs:
        groups.setdefault(str(run.summary.get("task", "?")), []).append(str(run.path))
    if len(groups) > 1:
        listed = "; ".join(f"{task}: {' '.join(paths)}" for task, paths in groups.items())
        raise CvtoolError(f"report: the runs are of {len(groups)} tasks, which share no metric to rank by; "
                          f"report each task on its own ({listed})")


def add_searches(report: Report, run_dirs: Sequence[Path], files_dir: Path) -> None:
    """Each search directory's trial table and Optuna plots."""
    from cvtool.runs.layout import RunDir
    from cvtool.search.report import search_section

    for folder in run_dirs:
        if RunDir(Path(folder)).is_search():
            section, plots = search_section(Path(folder), files_dir)
            report.searches.append(section)
            report.figures += [Figure(f"{section.name}: {p.stem.replace('_', ' ')}", p) for p in plots]


# ---- ranking ---------------------------------------------------------------------------------

def _metric_name(metric: str, runs: list[Run]) -> str:
    """'auc' -> 'val/auc'; refuses a metric no run recorded."""
    name = metric if metric.startswith(("val/", "train/")) else f"val/{metric}"
    recorded = sorted({key for run in runs for row in run.history for key in row} - {"epoch", "lr", "seconds"})
    if name not in recorded:
        raise CvtoolError(f"--metric {metric}: no run recorded it{suggest(name, recorded)} (have: {', '.join(recorded)})")
    return name


def best_of(run: Run, metric: str) -> tuple[int | None, float | None, int | None, float | None]:
    """(best epoch, best value, smoothed-best epoch, smoothed-best value) of `metric`.

    The run's own summary when it is the metric the run monitored, else from metrics.csv."""
    summary = run.summary
    if summary.get("monitor") == metric and summary.get("best_value") is not None:
        return (summary.get("best_epoch"), summary.get("best_value"),
                summary.get("smoothed_best_epoch"), summary.get("smoothed_best_value"))

    rows = [r for r in run.history if metric in r]
    if not rows:
        return None, None, None, None
    values = [r[metric] for r in rows]
    pick = max if higher_is_better(metric) else min
    finite = [i for i, v in enumerate(values) if math.isfinite(v)]
    if not finite:
        return None, None, None, None
    best = pick(finite, key=lambda i: values[i])
    smoothed = smooth_curve(values, run.smoothing)
    s_best = pick(finite, key=lambda i: smoothed[i])
    return int(rows[best]["epoch"]), values[best], int(rows[s_best]["epoch"]), smoothed[s_best]


def rank_runs(runs: list[Run], metric: str) -> list[Row]:
    """Rows sorted by the best value of `metric` (runs without it last, in the given order)."""
    higher = higher_is_better(metric)
    reference = runs[0].settings
    varying = varying_keys(runs)
    scored = []
    for index, run in enumerate(runs):
        best_epoch, best, s_epoch, smoothed = best_of(run, metric)
        test = (run.summary.get("test") or {}).get(metric.split("/", 1)[1])
        differs = describe_difference(run.settings, reference, varying, is_reference=index == 0)
        scored.append((run, differs, best_epoch, best, s_epoch, smoothed, test))
    # ties on the best value (common on small validation sets) go to the better smoothed value
    ordered = sorted(scored, key=lambda item: (_sort_value(item[3], higher), _sort_value(item[5], higher)))
    spread = lambda run, key: (run.summary.get("spread") or {}).get(key, "")  # noqa: E731
    return [Row(rank, *item, spread(item[0], metric), spread(item[0], f"test/{metric.split('/', 1)[1]}"))
            for rank, item in enumerate(ordered, start=1)]


def _sort_value(value: float | None, higher: bool) -> float:
    if value is None or not math.isfinite(value):
        return float("inf")
    return -value if higher else value


def varying_keys(runs: list[Run]) -> list[str]:
    """Dotted recipe keys whose value is not the same in every run."""
    keys = sorted({k for run in runs for k in run.settings} - set(IGNORED_KEYS))
    return [k for k in keys if len({_show(run.settings.get(k)) for run in runs}) > 1]


def describe_difference(settings: dict[str, Any], reference: dict[str, Any], varying: list[str],
                        is_reference: bool) -> str:
    """'model.dropout=0.5, optim.lr=0.05': this run's values where they differ from the first run."""
    if is_reference:
        shown = ", ".join(f"{k}={_show(settings.get(k))}" for k in varying)
        return f"reference ({shown})" if shown else "reference"
    changed = [k for k in varying if _show(settings.get(k)) != _show(reference.get(k))]
    return ", ".join(f"{k}={_show(settings.get(k))}" for k in changed) or "same recipe"


def _show(value: Any, limit: int = 80) -> str:
    if isinstance(value, str):
        text = value
    elif isinstance(value, bool) or value is None:
        text = json.dumps(value)
    elif isinstance(value, float):
        text = format(value, "g")
    else:
        text = json.dumps(value, separators=(",", ":"), ensure_ascii=False)
    return text if len(text) <= limit else text[: limit - 1] + "…"


# ---- figures ---------------------------------------------------------------------------------

def draw_figures(runs: list[Run], metric: str, files_dir: Path) -> list[Figure]:
    """Overlays of the metric, the validation loss and the lr; each run's confusion matrix / ROC."""

    smoothing = runs[0].smoothing
    figures = []
    overlays = [(metric, f"{metric} across runs", _slug(metric), smoothing, False)]
    if metric != "val/loss":
        overlays.append(("val/loss", "val/loss across runs", "val_loss", smoothing, False))
    overlays.append(("lr", "learning rate", "lr", None, True))
    for key, title, stem, smooth, logy in overlays:
        series = {run.label: _series(run, key) for run in runs}
        series = {label: xy for label, xy in series.items() if xy[0]}
        if series:
            path = plots.curves(series, title, key, files_dir / f"{stem}.png", smoothing=smooth, logy=logy)
            figures.append(Figure(title, path))
    for index, run in enumerate(runs, start=1):
        for name in RUN_PLOTS:
            source = RunDir(run.path).plots / name
            if source.is_file():
                target = files_dir / f"{index:02d}_{_slug(run.label)}_{name}"
                with atomic_open(target, "wb") as handle:
                    handle.write(source.read_bytes())
                kind = "confusion matrix" if name.startswith("confusion") else "ROC"
                figures.append(Figure(f"{run.label}: {kind}, best epoch", target, run.label))
    return figures + error_overlays(runs, files_dir)


def error_overlays(runs: list[Run], files_dir: Path) -> list[Figure]:
    """Grad-CAM overlays of each run's most confident errors (with the `explain` extra)."""
    from cvtool.evaluation.explain import INSTALL, explain_errors, require_grad_cam

    try:
        require_grad_cam()
    except CvtoolError:
        print(f"cvtool: report without Grad-CAM overlays of the errors: {INSTALL}", file=sys.stderr)
        return []
    figures = []
    for index, run in enumerate(runs, start=1):
        path = explain_errors(run.path, files_dir / f"{index:02d}_{_slug(run.label)}_errors.png")
        if path is not None:
            figures.append(Figure(f"{run.label}: Grad-CAM of the most confident errors", path, run.label))
    return figures


def _series(run: Run, key: str) -> tuple[list[float], list[float]]:
    rows = [r for r in run.history if key in r]
    return [r["epoch"] for r in rows], [r[key] for r in rows]


def _slug(text: str) -> str:
    return re.sub(r"[^A-Za-z0-9_.=-]+", "_", text).strip("_")[:80] or "run"
