"""What `cvtool doctor` writes: doctor.json (every finding), doctor.md and a self-contained
doctor.html with thumbnails (PNG files in doctor_files/, inlined in the HTML)."""

from __future__ import annotations

import html
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from cvtool.data.images import open_image
from cvtool.errors import BadImageError
from cvtool.fileio import atomic_open, write_json, write_text
from cvtool.reporting.render import STYLE, data_uri

SHOWN = 40  # rows per section in the Markdown / HTML report (doctor.json has them all)
THUMB = 96  # thumbnail side; smaller images are enlarged with nearest-neighbour (8 px digits)


@dataclass
class Section:
    title: str
    intro: list[str]
    header: list[str]
    rows: list[list[Any]] = field(default_factory=list)  # cells: text, or a list of (thumbnail, caption)


def thumbnail(source: Path, target: Path) -> Path | None:
    """A PNG of at most THUMB px a side, written atomically; None when the image cannot be read."""
    from PIL import Image

    try:
        image = open_image(source).convert("RGB")
    except BadImageError:
        return None
    scale = THUMB / max(image.size)
    size = (max(1, round(image.width * scale)), max(1, round(image.height * scale)))
    image = image.resize(size, Image.NEAREST if scale > 1 else Image.BILINEAR)
    with atomic_open(target, "wb") as handle:
        image.save(handle, format="PNG")
    return target


def write_documents(out: Path, title: str, summary: list[str], sections: list[Section],
                    record: dict[str, Any]) -> list[Path]:
    """doctor.json, doctor.md and doctor.html in `out`."""
    files = [out / "doctor.json", out / "doctor.md", out / "doctor.html"]
    write_json(files[0], record)
    write_text(files[1], markdown(out, title, summary, sections))
    write_text(files[2], page(title, summary, sections))
    return files


def markdown(out: Path, title: str, summary: list[str], sections: list[Section]) -> str:
    lines = [f"# {title}", "", *(f"- {line}" for line in summary), ""]
    for section in sections:
        lines += [f"## {section.title}", "", *section.intro, ""]
        if not section.rows:
            continue
        lines += ["| " + " | ".join(section.header) + " |", "|" + "---|" * len(section.header)]
        lines += ["| " + " | ".join(_md_cell(cell, out) for cell in row) + " |" for row in section.rows[:SHOWN]]
        if len(section.rows) > SHOWN:
            lines.append(f"\n{len(section.rows) - SHOWN} more in doctor.json")
        lines.append("")
    return "\n".join(lines).rstrip() + "\n"


def _md_cell(cell: Any, out: Path) -> str:
    if isinstance(cell, list):
        return " ".join(f"![{_escape_md(caption)}]({path.relative_to(out).as_posix()}) {_escape_md(caption)}"
                        if path is not None else _escape_md(caption) for path, caption in cell)
    return _escape_md(f"{cell:.4f}" if isinstance(cell, float) else str(cell))


def _escape_md(text: str) -> str:
    return text.replace("|", "\\|").replace("\n", " ")


def page(title: str, summary: list[str], sections: list[Section]) -> str:
    esc = html.escape
    parts = ["<!DOCTYPE html>", '<html lang="en"><head><meta charset="utf-8">',
             f"<title>{esc(title)}</title><style>{STYLE}"
             ".thumb { display: inline-block; margin: 2px 4px; text-align: center; font-size: 0.8em; }"
             ".thumb img { display: block; image-rendering: pixelated; border: 1px solid #ddd; }</style></head><body>",
             f"<h1>{esc(title)}</h1><ul>", *(f"<li>{esc(line)}</li>" for line in summary), "</ul>"]
    for section in sections:
        parts.append(f"<h2>{esc(section.title)}</h2>")
        parts += [f"<p>{esc(line)}</p>" for line in section.intro]
        if not section.rows:
            continue
        parts.append("<table><thead><tr>" + "".join(f"<th>{esc(h)}</th>" for h in section.header) + "</tr></thead><tbody>")
        parts += ["<tr>" + "".join(_html_cell(cell) for cell in row) + "</tr>" for row in section.rows[:SHOWN]]
        parts.append("</tbody></table>")
        if len(section.rows) > SHOWN:
            parts.append(f"<p>{len(section.rows) - SHOWN} more in doctor.json</p>")
    parts.append("</body></html>")
    return "\n".join(parts) + "\n"


def _html_cell(cell: Any) -> str:
    if isinstance(cell, list):
        return "<td>" + "".join(
            f'<div class="thumb"><img alt="{html.escape(caption)}" src="{data_uri(path)}">{html.escape(caption)}</div>'
            if path is not None else f'<div class="thumb">{html.escape(caption)}</div>' for path, caption in cell) + "</td>"
    if isinstance(cell, float):
        return f'<td class="num">{cell:.4f}</td>'
    return f"<td>{html.escape(str(cell))}</td>"
