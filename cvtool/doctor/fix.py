"""`cvtool doctor --fix`: files that take duplicates out of training, never a change to the data.

- `exclude.txt`: one image per line (relative to the data root) for `data.exclude`; per duplicate
  group one copy stays (the test one, else val, else the first), test images always stay.
- `<train>.csv` with a `doctor_group` column (format csv): the training CSV as it is plus one
  group id per image, the same for every member of a duplicate group, for
  `data.folds.group_column` (GroupKFold keeps a group in one fold).
"""

from __future__ import annotations

from pathlib import Path

from cvtool.doctor.duplicates import DuplicateGroup, to_exclude
from cvtool.doctor.scan import ImageFacts, relative
from cvtool.fileio import read_csv_rows, write_csv, write_text
from cvtool.recipe.schema import DataConfig

EXCLUDE = "exclude.txt"
GROUP_COLUMN = "doctor_group"


def write_exclude(out: Path, facts: list[ImageFacts], groups: list[DuplicateGroup]) -> Path:
    names = to_exclude(facts, groups)
    header = (f"# cvtool doctor --fix: {len(names)} duplicate images to leave out; use with\n"
              f"# --set data.exclude={out / EXCLUDE}\n")
    write_text(out / EXCLUDE, header + "".join(f"{name}\n" for name in names))
    return out / EXCLUDE


def write_group_csv(out: Path, cfg: DataConfig, facts: list[ImageFacts], groups: list[DuplicateGroup]) -> Path | None:
    """The training CSV with a group column (None for formats without a training CSV)."""
    if cfg.format != "csv":
        return None
    source = cfg.root / (cfg.train if cfg.train.endswith(".csv") else f"{cfg.train}.csv")
    columns, rows = read_csv_rows(source)
    group_of = {facts[i].name: f"dup{number:05d}" for number, group in enumerate(groups) for i in group.members}
    image_root = cfg.root / cfg.images_dir
    cells = []
    for row in rows:
        name = relative(image_root / (row[cfg.image_column] + cfg.image_extension), cfg.root)
        cells.append([*(row.get(c, "") for c in columns), group_of.get(name, f"img:{name}")])
    target = out / source.name
    write_csv(target, [*columns, GROUP_COLUMN], cells)
    return target
