"""A search directory in a report: its trials in rank order (pruned and failed ones included)
and Optuna's optimisation-history and parameter-importance plots, drawn from the study."""

from __future__ import annotations

import json
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from cvtool.errors import CvtoolError
from cvtool.runs.layout import RunDir


@dataclass(frozen=True)
class SearchSection:
    name: str
    path: Path
    columns: list[str]
    rows: list[dict[str, Any]]


def search_points(search_dir: Path) -> list[tuple[str, Path]]:
    """(search name, trial dir) of a search's finished trials (with a summary.json), best first."""
    try:
        summary = json.loads(RunDir(search_dir).search.read_text(encoding="utf-8"))
    except (OSError, json.JSONDecodeError) as exc:
        raise CvtoolError(f"{RunDir(search_dir).search}: unreadable ({exc})") from None
    name = str(summary.get("name") or search_dir.name)
    points = [search_dir / row["run"] for row in summary.get("trials") or [] if row.get("run")]
    points = [(name, p) for p in points if RunDir(p).summary.is_file()]
    if not points:
        raise CvtoolError(f"{search_dir}: a search without any finished trial")
    return points


def search_section(search_dir: Path, files_dir: Path) -> tuple[SearchSection, list[Path]]:
    """The ranked trial table from the study itself (it may have moved on since search.json),
    and the plots written into `files_dir`."""
    from cvtool.search.table import load_search, search_plots, trial_rows
    from cvtool.tasks import get_task, higher_is_better

    recipe, study = load_search(search_dir)
    monitor = recipe.train.monitor or get_task(recipe.task).default_monitor
    keys = list(recipe.search.space)
    rows = trial_rows(study, keys, higher_is_better(monitor))
    columns = ["rank", "trial", "state", "value", "epochs", *keys, "run"]
    plots = search_plots(study, files_dir / f"search_{search_dir.name}")
    return SearchSection(recipe.name, search_dir, columns, rows), plots


def section_markdown(section: SearchSection) -> list[str]:
    lines = ["", f"## Search trials: {section.name} (`{section.path}`)", "",
             "| " + " | ".join(section.columns) + " |", "|" + "---|" * len(section.columns)]
    for row in section.rows:
        lines.append("| " + " | ".join(_cell(row.get(c)) for c in section.columns) + " |")
    return lines


def _cell(value: Any) -> str:
    if value is None:
        return "—"
    return f"{value:.4g}" if isinstance(value, float) else str(value)


def section_html(section: SearchSection) -> str:
    import html

    head = "".join(f"<th>{html.escape(c)}</th>" for c in section.columns)
    body = "".join("<tr>" + "".join(f"<td>{html.escape(_cell(row.get(c)))}</td>" for c in section.columns) + "</tr>"
                   for row in section.rows)
    return (f"<h2>Search trials: {html.escape(section.name)} (<code>{html.escape(str(section.path))}</code>)</h2>"
            f"<table><thead><tr>{head}</tr></thead><tbody>{body}</tbody></table>")
