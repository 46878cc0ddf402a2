"""Reading finished runs back: summary, metrics history, resolved recipe."""

from __future__ import annotations

import csv
import json
from pathlib import Path
from typing import Any

from cvtool.errors import CvtoolError


def read_summary(run_dir: Path) -> dict[str, Any]:
    path = run_dir / "summary.json"
    try:
        return json.loads(path.read_text(encoding="utf-8"))
    except FileNotFoundError:
        raise CvtoolError(f"{run_dir}: no summary.json (is it a finished cvtool run?)") from None
    except json.JSONDecodeError as exc:
        raise CvtoolError(f"{path}: invalid JSON ({exc.msg})") from None


def read_history(run_dir: Path) -> list[dict[str, float]]:
    path = run_dir / "metrics.csv"
    if not path.is_file():
        raise CvtoolError(f"{run_dir}: no metrics.csv")
    with path.open(newline="", encoding="utf-8") as handle:
        return [{k: float(v) for k, v in row.items() if v not in ("", None)} for row in csv.DictReader(handle)]
