"""Rich tables of a `cvtool doctor` report (cvtool.doctor.run.DoctorReport)."""

from __future__ import annotations

from typing import Any

from rich.markup import escape
from rich.table import Table

from cvtool.cli.common import console


def _table(title: str, header: list[str], rows: list[list[str]], limit: int, total: int) -> Table:
    table = Table(*header, title=title, title_justify="left")
    for row in rows[:limit]:
        table.add_row(*(escape(cell) for cell in row))
    if total > limit:
        table.caption = f"{total - limit} more in the report"
    return table


def render(report: Any, limit: int) -> None:
    """Summary lines, then duplicates, quality outliers, label issues and missing classes."""
    from cvtool.doctor.run import summary_lines

    for line in summary_lines(report):
        console.print(line, markup=False, soft_wrap=True)
    facts = report.scan.facts
    name = lambda i: f"{facts[i].split}:{facts[i].name}" + (f" ({facts[i].label})" if facts[i].label else "")  # noqa: E731
    if report.groups:
        rows = [[str(n), "exact" if g.exact else f"near, {g.distance} bits", " + ".join(g.splits),
                 ", ".join(name(i) for i in g.members[:4]) + (f" +{len(g.members) - 4}" if len(g.members) > 4 else "")]
                for n, g in enumerate(report.groups)]
        console.print(_table("duplicate groups (leaking ones first)", ["group", "kind", "splits", "images"], rows,
                             limit, len(rows)))
    if report.quality:
        rows = [[q.kind, f"{q.score:.1f}", q.detail, q.typical, name(q.index)] for q in report.quality]
        console.print(_table("image-quality outliers", ["issue", "z", "value", "typical", "image"], rows,
                             limit, len(rows)))
    if report.labels is not None:
        shown = report.labels.flagged or report.labels.ranking
        rows = [[f"{i.score:.4f}", i.given, i.suggested, "yes" if i.flagged else "", i.name] for i in shown]
        console.print(_table("likely label errors (lowest label quality first)",
                             ["quality", "given", "suggested", "flagged", "image"], rows, limit, len(rows)))
    if report.absent:
        rows = [[c, s] for c, s in report.absent]
        console.print(_table("classes a split has no image of", ["class", "split"], rows, limit, len(rows)))
