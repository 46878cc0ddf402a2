"""`cvtool doctor DATA --recipe R [--oof RUN]`: can the data and its validation score be trusted?

Duplicates within and across splits (leakage), image-quality outliers, likely label errors (with a
fold set's out-of-fold probabilities) and class presence per split (`cvtool stats`' own counts).
Nothing in the data folder is written, moved or deleted: findings go to OUT/, and `--fix` writes
an exclude list (and for CSV data a training CSV with a duplicate-group column) there too.
"""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from cvtool.data.class_stats import label_stats
from cvtool.data.formats import DatasetInfo, read_dataset
from cvtool.doctor.duplicates import DEFAULT_DISTANCE, MIN_CORRELATION, DuplicateGroup, find_duplicates
from cvtool.doctor.fix import write_exclude, write_group_csv
from cvtool.doctor.labels import LabelReport, rank_label_issues
from cvtool.doctor.quality import QualityIssue, Z, quality_issues
from cvtool.doctor.report import Section, thumbnail, write_documents
from cvtool.doctor.scan import Scan, scan_dataset
from cvtool.errors import CvtoolError
from cvtool.recipe.schema import Recipe
from cvtool.runs.outputs import check_folder

FILES = "doctor_files"


@dataclass
class DoctorReport:
    root: Path
    task: str
    splits: dict[str, int]
    scan: Scan
    distance: int
    groups: list[DuplicateGroup]
    quality: list[QualityIssue]
    classes: dict[str, Any] | None  # `cvtool stats`' class section: names, counts per split, ...
    labels: LabelReport | None
    out: Path
    files: list[Path] = field(default_factory=list)
    fixes: list[Path] = field(default_factory=list)

    @property
    def absent(self) -> list[tuple[str, str]]:
        """(class, split) pairs where a class has no image (or no positive)."""
        if not self.classes:
            return []
        return [(name, split) for split, counts in self.classes["counts"].items()
                for name, count in zip(self.classes["names"], counts, strict=True) if count == 0]


def run_doctor(recipe: Recipe, data_root: Path, out: Path, oof: Path | None = None, fix: bool = False,
               distance: int = DEFAULT_DISTANCE, progress: Callable[[int], None] | None = None) -> DoctorReport:
    """Scan, check and write the report (and the fixes) into `out`."""
    if not 0 <= distance <= 32:
        raise CvtoolError(f"--distance {distance}: give a number of bits from 0 to 32 (of the 64-bit pHash)")
    cfg = recipe.data.model_copy(update={"root": Path(data_root), "fold": None})
    check_folder("--out", Path(out), {"--oof": oof}, {"the data root": cfg.root}, purpose="doctor")  # thumbnails, --fix's CSV
    info = read_dataset(cfg, recipe.task, recipe.seed)
    scan = scan_dataset(info, cfg.root, progress)
    labels = rank_label_issues(oof, recipe.task, info.class_names) if oof is not None else None
    report = DoctorReport(cfg.root, recipe.task, {n: len(s) for n, s in info.splits.items()}, scan, distance,
                          find_duplicates(scan.facts, distance), quality_issues(scan.facts),
                          _classes(info), labels, Path(out))
    thumbs = _thumbnails(report)
    report.files = write_documents(report.out, f"cvtool doctor: {cfg.root}", summary_lines(report),
                                   sections(report, thumbs), record(report))
    if fix:
        report.fixes = [write_exclude(report.out, scan.facts, report.groups)]
        report.fixes += [p for p in [write_group_csv(report.out, cfg, scan.facts, report.groups)] if p]
    return report


def _classes(info: DatasetInfo) -> dict[str, Any] | None:
    return label_stats(info, list(info.splits)).get("classes")


def summary_lines(report: DoctorReport) -> list[str]:
    leaks = [g for g in report.groups if g.leaks]
    lines = [f"{sum(report.splits.values())} images ({', '.join(f'{n} {s}' for s, n in report.splits.items())}), "
             f"task {report.task}; {len(report.scan.unreadable)} unreadable",
             f"{len(report.groups)} duplicate groups (identical files, or pHash within {report.distance} bits and "
             f"thumbnails correlating >= {MIN_CORRELATION}), "
             f"{len(leaks)} of them across splits (leakage: "
             f"{sum(len(g.members) for g in leaks)} images)",
             f"{len(report.quality)} image-quality outliers (robust z-score beyond {Z:g})"]
    if report.absent:
        lines.append("classes without images: " + ", ".join(f"{c} in {s}" for c, s in report.absent[:10]))
    if report.labels is not None:
        lines.append(f"{len(report.labels.flagged)} likely label errors by confident learning on "
                     f"{len(report.labels.ranking)} out-of-fold predictions of {report.labels.fold_set}")
    return lines


def _thumbnails(report: DoctorReport) -> dict[str, Path | None]:
    """Thumbnails of every image the Markdown / HTML report shows, by name."""
    from cvtool.doctor.report import SHOWN

    facts = report.scan.facts
    wanted = [i for g in report.groups[:SHOWN] for i in g.members[:6]] + [q.index for q in report.quality[:SHOWN]]
    by_name = {f.name: i for i, f in enumerate(facts)}
    if report.labels is not None:
        wanted += [by_name[issue.name] for issue in _shown_labels(report.labels) if issue.name in by_name]
    folder = report.out / FILES
    return {facts[i].name: thumbnail(facts[i].path, folder / f"{i:06d}.png") for i in dict.fromkeys(wanted)}


def _shown_labels(labels: LabelReport) -> list[Any]:
    from cvtool.doctor.report import SHOWN

    return (labels.flagged or labels.ranking)[:SHOWN]


def sections(report: DoctorReport, thumbs: dict[str, Path | None]) -> list[Section]:
    facts = report.scan.facts
    cell = lambda i: (thumbs.get(facts[i].name), f"{facts[i].split}: {facts[i].name} ({facts[i].label})")  # noqa: E731
    duplicates = Section("Duplicates and leakage", [
        f"Identical files, or images whose 64-bit pHash differ in at most {report.distance} bits and whose 16x16 "
        f"thumbnails correlate at {MIN_CORRELATION} or more. A group across splits inflates the score of its "
        "held-out split."],
        ["group", "kind", "splits", "images"],
        [[str(n), "exact" if g.exact else f"near ({g.distance} bits)", " + ".join(g.splits),
          [cell(i) for i in g.members[:6]]] for n, g in enumerate(report.groups)])
    quality = Section("Image quality", [f"Far from the data set's median (robust z-score beyond {Z:g})."],
                      ["issue", "z", "value", "typical", "image"],
                      [[q.kind, q.score, q.detail, q.typical, [cell(q.index)]] for q in report.quality])
    found = [duplicates, quality]
    if report.labels is not None:
        rows = [[f"{issue.score:.4f}", issue.given, issue.suggested, "yes" if issue.flagged else "",
                 [(thumbs.get(issue.name), issue.name)]] for issue in _shown_labels(report.labels)]
        found.append(Section("Label issues", [
            f"Confident learning (cleanlab) on the out-of-fold probabilities of {report.labels.fold_set}; "
            "label quality: lower is more suspicious."], ["quality", "given", "suggested", "flagged", "image"], rows))
    if report.classes:
        counts = report.classes["counts"]
        found.append(Section(f"Classes ({report.classes['count_of']} per split)", [
            "Counts as `cvtool stats` reports them; a 0 is a class the split cannot score."],
            ["class", *counts], [[name, *(str(counts[s][i]) for s in counts)]
                                 for i, name in enumerate(report.classes["names"])]))
    return found


def record(report: DoctorReport) -> dict[str, Any]:
    facts = report.scan.facts
    image = lambda i: {"split": facts[i].split, "image": facts[i].name, "label": facts[i].label}  # noqa: E731
    return {
        "root": str(report.root), "task": report.task, "splits": report.splits,
        "unreadable": [{"split": s, "image": n, "reason": r} for s, n, r in report.scan.unreadable],
        "duplicates": {"distance": report.distance, "groups": [
            {"exact": g.exact, "distance": g.distance, "splits": g.splits, "leaks": g.leaks,
             "images": [image(i) for i in g.members]} for g in report.groups]},
        "quality": [{**image(q.index), "issue": q.kind, "z": q.score, "value": q.detail, "typical": q.typical}
                    for q in report.quality],
        "classes": report.classes, "absent": [{"class": c, "split": s} for c, s in report.absent],
        "labels": None if report.labels is None else {
            "fold_set": str(report.labels.fold_set), "flagged": len(report.labels.flagged),
            "ranking": [{"image": i.name, "given": i.given, "suggested": i.suggested, "quality": i.score,
                         "flagged": i.flagged} for i in report.labels.ranking]},
    }
