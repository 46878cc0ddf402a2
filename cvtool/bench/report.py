"""What a bench reports: figures with their targets, notes, and the machine they come from."""

from __future__ import annotations

import os
import sys
from dataclasses import dataclass, field
from pathlib import Path


@dataclass(frozen=True)
class Figure:
    """One measured figure; `target` None means informational (no pass/miss)."""

    name: str
    measured: float | bool
    target: float | bool | None = None
    unit: str = ""  # "x" (a ratio), "s", "images/s"; booleans print as yes/no
    higher_is_better: bool = True

    @property
    def passed(self) -> bool | None:
        if self.target is None:
            return None
        if isinstance(self.target, bool):
            return self.measured == self.target
        return self.measured >= self.target if self.higher_is_better else self.measured <= self.target

    def measured_text(self) -> str:
        return _fmt(self.measured, self.unit)

    def target_text(self) -> str:
        if self.target is None:
            return ""
        if isinstance(self.target, bool):
            return _fmt(self.target, self.unit)
        return f"{'≥' if self.higher_is_better else '≤'} {_fmt(self.target, self.unit)}"


def _fmt(value: float | bool, unit: str) -> str:
    if isinstance(value, bool):
        return "yes" if value else "no"
    if unit == "x":
        return f"{value:.3f}×"
    if unit == "s":
        return f"{value:.3f} s"
    return f"{value:,.1f} {unit}".strip()


@dataclass
class BenchReport:
    title: str
    figures: list[Figure]
    notes: list[str] = field(default_factory=list)


def write_report(report: BenchReport, path: Path) -> None:
    """The report as JSON: title, figures (name, measured, target, unit, passed), notes, machine."""
    from cvtool.fileio import write_json

    figures = [{"name": f.name, "measured": f.measured, "target": f.target, "unit": f.unit, "passed": f.passed}
               for f in report.figures]
    write_json(Path(path), {"title": report.title, "figures": figures, "notes": report.notes, "machine": machine()})


def machine() -> str:
    """'2 cores (Intel(R) Xeon(R) Processor), load average 0.42 0.80 1.10': where the figures come from."""
    model = ""
    try:
        model = next((line.split(":", 1)[1].strip() for line in Path("/proc/cpuinfo").read_text().splitlines()
                      if line.startswith("model name")), "")
    except OSError:
        pass
    load = " ".join(f"{v:.2f}" for v in os.getloadavg()) if hasattr(os, "getloadavg") else "n/a"
    torch = sys.modules.get("torch")  # named only when a bench already imported it
    gpu = f", {torch.cuda.get_device_name()}" if torch is not None and torch.cuda.is_available() else ""  # GPU only
    return f"{os.cpu_count()} cores{f' ({model})' if model else ''}{gpu}, load average {load}"
