"""Shared fixtures: small datasets written once per test session, and a recipe writer.

- `digits_dir` (Path): scikit-learn's real digits as a `folder` dataset, 1797 grey 8x8 PNGs in
  train/val/test (about 70/15/15, stratified), via `cvtool.data.generate.write_digits`.
- `synthetic(task, format=None, n=80, size=16, seed=0)` -> dict: a tiny learnable dataset in the
  task's real layout (`write_synthetic`), written once per argument set. The dict has `root`,
  `task`, `format`, `splits` (image counts), `classes` or `targets`, and `data`: a recipe-ready
  data section (format, root, splits, columns, image_size, channels).
- `make_recipe(tmp_path, data_root, task=None, **sections)` -> Path: writes a small valid recipe
  YAML (simplenet, 1 epoch on cpu, normalize none) for `data_root`: a folder or a dataset dict
  from `synthetic`; sections deep-merge over the defaults, e.g. data={"normalize": "auto"}.

Session datasets are shared: treat them as read-only (copy with shutil.copytree to change one).
Every test session keeps its decode cache (`data.cache`, CVTOOL_CACHE_DIR) in a temp folder of its
own, never the user's ~/.cache/cvtool.
`cvtool stats` writes DATA/cvtool-stats.json unless given --out, and `normalize: auto` writes it too.
"""

from __future__ import annotations

from collections.abc import Callable, Iterator
from pathlib import Path
from typing import Any

import pytest
import yaml

from cvtool.data.generate import write_digits, write_synthetic
from cvtool.recipe.load import deep_merge


@pytest.fixture(scope="session", autouse=True)
def decode_cache(tmp_path_factory: pytest.TempPathFactory) -> Iterator[Path]:
    """The session's own persistent decode cache folder (CVTOOL_CACHE_DIR, inherited by subprocesses)."""
    folder = tmp_path_factory.mktemp("cvtool-cache")
    with pytest.MonkeyPatch.context() as patch:
        patch.setenv("CVTOOL_CACHE_DIR", str(folder))
        yield folder


@pytest.fixture(scope="session")
def digits_dir(tmp_path_factory: pytest.TempPathFactory) -> Path:
    """The real digits dataset in `folder` layout (root/{train,val,test}/<digit>/<index>.png)."""
    root = tmp_path_factory.mktemp("digits") / "digits"
    write_digits(root, seed=0)
    return root


@pytest.fixture(scope="session")
def synthetic(tmp_path_factory: pytest.TempPathFactory) -> Callable[..., dict[str, Any]]:
    """Factory: synthetic(task, format=None, n=80, size=16, seed=0) -> dataset dict (cached)."""
    cache: dict[tuple, dict[str, Any]] = {}

    def make(task: str, format: str | None = None, n: int = 80, size: int = 16, seed: int = 0) -> dict[str, Any]:
        key = (task, format, n, size, seed)
        if key not in cache:
            root = tmp_path_factory.mktemp("synthetic") / f"{task}-{format or 'default'}-{n}-{size}-{seed}"
            cache[key] = write_synthetic(root, task, n=n, size=size, seed=seed, format=format)
        return cache[key]

    return make


def write_recipe(tmp_path: Path, data_root: Path | str | dict[str, Any], /, task: str | None = None,
                 **sections: Any) -> Path:
    """tmp_path/<name>.yaml for `data_root` (a root folder, or a dataset dict from `synthetic`).

    `sections` are deep-merged over the defaults, e.g. `optim={"lr": 0.1}`, `train={"epochs": 2}`,
    `data={"normalize": "auto"}`, `name="run2"`.
    """
    info = data_root if isinstance(data_root, dict) else {"data": {"root": str(data_root)}}
    recipe: dict[str, Any] = {
        "name": "test",
        "task": task or info.get("task", "multiclass"),
        "seed": 0,
        "data": {"image_size": 16, "batch_size": 16, "num_workers": 0, "normalize": "none", **info["data"]},
        "model": {"arch": "simplenet", "blocks": [8, 16]},
        "train": {"epochs": 1, "device": "cpu"},
    }
    recipe = deep_merge(recipe, sections)
    path = tmp_path / f"{recipe['name']}.yaml"
    path.write_text(yaml.safe_dump(recipe, sort_keys=False), encoding="utf-8")
    return path


@pytest.fixture
def make_recipe() -> Callable[..., Path]:
    """`write_recipe` as a fixture: make_recipe(tmp_path, data_root, task=None, **sections) -> Path."""
    return write_recipe


# ONNX export setups, one per task (trained and exported once per session, shared by
# test_export.py, test_predict.py and test_bench.py through the helpers below).
STATS = {"mean": [0.2, 0.25, 0.3], "std": [0.3, 0.35, 0.4]}
# One setup per task: simplenet at 16 px for 2 epochs; binary is resnet18 at 32 px (torchvision +
# BatchNorm) for 1 epoch on 40 images to keep the CPU time down; keypoints are exported with
# --raw-input, multilabel with an explicit --opset.
SETUPS: dict[str, dict[str, Any]] = {
    "multiclass": {"model": {"arch": "simplenet", "batch_norm": True}, "data": {}, "export": {}},
    "binary": {"model": {"arch": "resnet18"}, "data": {"image_size": 32}, "export": {}, "epochs": 1, "n": 40},
    "multilabel": {"model": {"arch": "simplenet"}, "data": {"normalize": STATS}, "export": {"opset": 18}},
    "keypoints": {"model": {"arch": "simplenet"}, "data": {"normalize": STATS}, "export": {"raw_input": True}},
}
TASKS = list(SETUPS)


def shared_dir(factory: pytest.TempPathFactory) -> Path:
    folder = factory.getbasetemp() / "cvtool-onnx"
    folder.mkdir(exist_ok=True)
    return folder


def dataset(synthetic: Callable[..., dict], task: str) -> dict[str, Any]:
    return synthetic(task, n=SETUPS[task].get("n", 80))


def trained_run(factory: pytest.TempPathFactory, synthetic: Callable[..., dict], task: str) -> Path:
    """A run of the task's setup (trained once per session)."""
    from cvtool.cli.launch import run_recipe
    from cvtool.runs.recipes import load_recipe

    run = shared_dir(factory) / f"run-{task}"
    if (run / "summary.json").is_file():
        return run
    setup = SETUPS[task]
    recipe = write_recipe(shared_dir(factory), dataset(synthetic, task), name=f"onnx-{task}",
                          model=setup["model"], data=setup["data"], train={"epochs": setup.get("epochs", 2)})
    run_recipe(load_recipe(recipe), run, overwrite=True, quiet=True)
    return run


def onnx_file(factory: pytest.TempPathFactory, synthetic: Callable[..., dict], task: str) -> Path:
    """The task's .onnx export (exported once per session)."""
    out = shared_dir(factory) / f"{task}.onnx"
    if not out.is_file():
        from cvtool.inference.export import export_onnx

        export_onnx(trained_run(factory, synthetic, task), out, **SETUPS[task]["export"])
    return out


def one_line_error(result: Any) -> str:
    """A CliRunner result that failed with exit 2 and printed exactly one `cvtool:` line."""
    assert result.exit_code == 2, result.output
    lines = [line for line in result.output.strip().splitlines() if line.strip()]
    assert len(lines) == 1 and lines[0].startswith("cvtool:") and "Traceback" not in result.output, result.output
    return lines[0]


def stop_line(result: Any) -> str:
    """A run that stopped after printing its epoch rows: exit 2 and one error line, the last."""
    assert result.exit_code == 2, result.output
    errors = [line for line in result.output.splitlines() if line.startswith("cvtool:")]
    assert len(errors) == 1 and result.output.strip().splitlines()[-1] == errors[0], result.output
    assert "Traceback" not in result.output
    return errors[0]


def snapshot(folder: Path) -> dict[str, bytes]:
    """Every file under `folder` (hidden temp files included) with its bytes."""
    return {str(p.relative_to(folder)): p.read_bytes() for p in sorted(folder.rglob("*")) if p.is_file()}


# A k=2 fold set on generated CSV data with 5 % of its training labels flipped (doctor --oof,
# evaluate --oof --calibrate); trained once per session, about 40 s on 2 cores.
_FLIPPED: dict[str, Any] = {}


def flipped_fold_set(factory: pytest.TempPathFactory) -> dict[str, Any]:
    """{"run": fold set dir, "root": data root, "recipe": recipe path, "flipped": flipped image names}."""
    if _FLIPPED:
        return _FLIPPED
    import csv

    import numpy as np
    from typer.testing import CliRunner

    from cvtool.cli.main import app

    tmp = factory.mktemp("flipped")
    info = write_synthetic(tmp / "data", "multiclass", n=300, size=16, seed=3, format="csv")
    train = tmp / "data" / "train.csv"
    with train.open(newline="") as handle:
        rows = list(csv.DictReader(handle))
    rng = np.random.default_rng(0)
    classes = sorted({row["label"] for row in rows})
    flipped = []
    for index in rng.choice(len(rows), size=round(0.05 * len(rows)), replace=False):
        rows[index]["label"] = str(rng.choice([c for c in classes if c != rows[index]["label"]]))
        flipped.append(rows[index]["image"])
    with train.open("w", newline="") as handle:
        writer = csv.DictWriter(handle, ["image", "label"], lineterminator="\n")
        writer.writeheader()
        writer.writerows(rows)
    recipe = write_recipe(tmp, info, name="flipped", data={"batch_size": 32, "folds": {"k": 2}},
                          model={"arch": "simplenet", "blocks": [16, 32]}, optim={"name": "adam", "lr": 0.005},
                          train={"epochs": 4, "loggers": ["csv"]})
    result = CliRunner().invoke(app, ["train", str(recipe), "--fold", "all", "--out", str(tmp / "run"), "--quiet"])
    assert result.exit_code == 0, result.output
    _FLIPPED.update(run=tmp / "run", root=tmp / "data", recipe=recipe, flipped=flipped)
    return _FLIPPED


def interrupt_and_resume(recipe: Any, run: Path, batches: int) -> None:
    """Train `recipe` into `run`, stopped (as by SIGINT) before its batch number `batches` + 1,
    then continue it with `cvtool train --resume RUN`."""
    from typer.testing import CliRunner

    from cvtool.cli.launch import run_recipe
    from cvtool.cli.main import app
    from cvtool.engine.loop import StopRequested

    seen = {"batches": 0}

    def stop() -> bool:
        seen["batches"] += 1
        return seen["batches"] > batches

    with pytest.raises(StopRequested):
        run_recipe(recipe, run, quiet=True, stop=stop)
    result = CliRunner().invoke(app, ["train", "--resume", str(run), "--quiet"])
    assert result.exit_code == 0, result.output
