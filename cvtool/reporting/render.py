"""Markdown and self-contained HTML for `cvtool report` (images inlined as base64 data URIs)."""

from __future__ import annotations

import base64
import html
import os
from pathlib import Path
from typing import TYPE_CHECKING

if TYPE_CHECKING:
    from cvtool.reporting.collect import Report, Row

STYLE = """
body { font-family: system-ui, sans-serif; max-width: 1100px; margin: 2em auto; padding: 0 1em; color: #222; }
table { border-collapse: collapse; margin: 1em 0; font-size: 0.9em; }
th, td { border: 1px solid #ccc; padding: 0.3em 0.6em; text-align: left; vertical-align: top; }
th { background: #f3f3f3; }
td.num { text-align: right; font-variant-numeric: tabular-nums; }
code { background: #f5f5f5; padding: 0 0.2em; }
figure { display: inline-block; margin: 0.5em; vertical-align: top; }
figure img { max-width: 520px; border: 1px solid #eee; }
figcaption { font-size: 0.85em; color: #555; }
"""


PER_RUN = "Confusion matrices and ROC (best epoch), Grad-CAM of the most confident errors"


def table_header(report: Report) -> list[str]:
    short = report.metric.split("/", 1)[1]
    return ["rank", "run", "differs from the first run", "best epoch", f"best {report.metric}",
            f"smoothed best {report.metric} (epoch)", f"test {short}"]


def table_cells(row: Row) -> list[str]:
    smoothed = "—" if row.smoothed is None else _number(row.smoothed) + (
        "" if row.smoothed_epoch is None else f" ({row.smoothed_epoch})")
    return [str(row.rank), row.run.label, row.differs, "—" if row.best_epoch is None else str(row.best_epoch),
            _number(row.best) + row.spread, smoothed, _number(row.test) + row.test_spread]


def _number(value: float | None) -> str:
    return "—" if value is None else f"{value:.4f}"


def _intro(report: Report) -> list[str]:
    direction = "higher is better" if report.higher else "lower is better"
    sources = ", ".join(f"`{p}`" for p in report.sources)
    varying = ", ".join(f"`{k}`" for k in report.varying) or "none (same recipe)"
    return [
        f"{len(report.rows)} runs from {sources}, ranked by the best `{report.metric}` ({direction}).",
        f"Smoothed values use TensorBoard's exponential moving average with weight {report.smoothing:g}.",
        f"Recipe keys that differ between runs: {varying}; the reference is the first run, `{report.reference}`.",
    ]


def render_markdown(report: Report) -> str:
    """The report as Markdown; figures are links into the files folder."""
    lines = [f"# cvtool report: {report.metric}", "", *_intro(report), ""]
    header = table_header(report)
    lines += ["| " + " | ".join(header) + " |", "|" + "---|" * len(header)]
    lines += ["| " + " | ".join(_md_cell(c) for c in table_cells(row)) + " |" for row in report.rows]
    lines += ["", "## Runs", ""]
    for row in report.rows:
        run = row.run
        description = run.settings.get("description") or ""
        lines.append(f"- **{_md_cell(run.label)}** — `{run.path}`, {run.summary.get('epochs_run', '?')} epochs, "
                     f"{run.summary.get('seconds', '?')} s" + (f". {description}" if description else ""))
    for section in report.searches:
        from cvtool.search.report import section_markdown

        lines += section_markdown(section)
    shared = [f for f in report.figures if f.run is None]
    per_run = [f for f in report.figures if f.run is not None]
    if shared:
        lines += ["", "## Curves across runs", ""]
        lines += [f"![{f.title}]({_relative(f.path, report.markdown)})" for f in shared]
    if per_run:
        lines += ["", f"## {PER_RUN}", ""]
        for figure in per_run:
            lines += [f"**{figure.title}**", "", f"![{figure.title}]({_relative(figure.path, report.markdown)})", ""]
    return "\n".join(lines).rstrip() + "\n"


def _md_cell(text: str) -> str:
    return text.replace("|", "\\|").replace("\n", " ")


def _relative(path: Path, document: Path) -> str:
    return Path(os.path.relpath(path, document.parent)).as_posix()


def render_html(report: Report) -> str:
    """The report as one HTML page with every image inlined (no external assets)."""
    esc = html.escape
    parts = ["<!DOCTYPE html>", '<html lang="en"><head><meta charset="utf-8">',
             f"<title>cvtool report: {esc(report.metric)}</title><style>{STYLE}</style></head><body>",
             f"<h1>cvtool report: {esc(report.metric)}</h1>"]
    parts += [f"<p>{_inline_code(line)}</p>" for line in _intro(report)]
    parts.append("<table><thead><tr>" + "".join(f"<th>{esc(h)}</th>" for h in table_header(report)) + "</tr></thead><tbody>")
    for row in report.rows:
        cells = table_cells(row)
        parts.append("<tr>" + "".join(
            f'<td class="num">{esc(c)}</td>' if i in (0, 3, 4, 5, 6) else f"<td>{esc(c)}</td>"
            for i, c in enumerate(cells)) + "</tr>")
    parts.append("</tbody></table><h2>Runs</h2><ul>")
    for row in report.rows:
        run = row.run
        description = run.settings.get("description") or ""
        parts.append(f"<li><b>{esc(run.label)}</b> — <code>{esc(str(run.path))}</code>, "
                     f"{esc(str(run.summary.get('epochs_run', '?')))} epochs, {esc(str(run.summary.get('seconds', '?')))} s"
                     + (f". {esc(str(description))}" if description else "") + "</li>")
    parts.append("</ul>")
    if report.searches:
        from cvtool.search.report import section_html

        parts += [section_html(section) for section in report.searches]
    shared = [f for f in report.figures if f.run is None]
    per_run = [f for f in report.figures if f.run is not None]
    for title, figures in (("Curves across runs", shared), (PER_RUN, per_run)):
        if figures:
            parts.append(f"<h2>{esc(title)}</h2>")
            parts += [f'<figure><img alt="{esc(f.title)}" src="{data_uri(f.path)}">'
                      f"<figcaption>{esc(f.title)}</figcaption></figure>" for f in figures]
    parts.append("</body></html>")
    return "\n".join(parts) + "\n"


def _inline_code(line: str) -> str:
    """Markdown `code` spans -> <code>, everything else escaped."""
    pieces = line.split("`")
    return "".join(f"<code>{html.escape(p)}</code>" if i % 2 else html.escape(p) for i, p in enumerate(pieces))


def data_uri(path: Path) -> str:
    return "data:image/png;base64," + base64.b64encode(path.read_bytes()).decode("ascii")
