"""`cvtool bench startup`: how soon a command starts doing its work, and how soon it ends.

- `cvtool --help` wall time in fresh processes; does `cvtool predict` on an .onnx import torch?
- `cvtool train` on a recipe (default: the README's digits demo for one epoch): from the process
  start to its first training step, for a fresh run (an empty decode cache) and a rerun on the
  same data (the cache filled), and from its last step to the process's exit (the last
  validation, checkpoint, test evaluation, summary and plots).

Each `cvtool train` runs in a fresh process under a probe that patches the run's epoch function
to note when the first batch reaches the step and when the last epoch's steps end; the process's
start and exit are timed from here.
"""

from __future__ import annotations

import json
import os
import statistics
import subprocess
import sys
import tempfile
import time
from pathlib import Path

from cvtool.bench.report import BenchReport, Figure
from cvtool.errors import CvtoolError
from cvtool.model_card import INPUT_NAME, OUTPUT_NAME, ModelCard


def cvtool_command() -> list[str]:
    """The installed `cvtool` script beside this interpreter, else `python -m cvtool`."""
    script = Path(sys.executable).with_name("cvtool")
    return [str(script)] if script.is_file() else [sys.executable, "-m", "cvtool"]


def help_seconds(runs: int = 7) -> list[float]:
    """Wall time of `cvtool --help` in `runs` fresh processes (after one untimed run)."""
    times = []
    for i in range(runs + 1):
        start = time.perf_counter()
        done = subprocess.run([*cvtool_command(), "--help"], capture_output=True, text=True, check=False)
        if done.returncode != 0:
            raise CvtoolError(f"`cvtool --help` failed: {done.stderr.strip()[-300:]}")
        if i:
            times.append(time.perf_counter() - start)
    return times


PROBE = """
import json, sys
from cvtool.cli.main import app
code = 0
try:
    app(sys.argv[2:], prog_name="cvtool")
except SystemExit as exc:
    code = exc.code or 0
loaded = sorted(m for m in sys.modules if m.split(".")[0] in ("torch", "torchvision"))
with open(sys.argv[1], "w") as handle:
    json.dump({"code": code, "torch": loaded[:5]}, handle)
"""


def predict_imports_torch(model: Path, images: Path) -> list[str]:
    """The torch modules a fresh `cvtool predict MODEL.onnx IMAGES` process has loaded."""
    with tempfile.TemporaryDirectory(prefix="cvtool-bench-") as tmp:
        report = Path(tmp) / "probe.json"
        args = ["predict", str(model), str(images), "--out", str(Path(tmp) / "out.csv"), "--quiet"]
        done = subprocess.run([sys.executable, "-c", PROBE, str(report), *args], capture_output=True, text=True,
                              check=False)
        if not report.is_file() or json.loads(report.read_text())["code"] != 0:
            raise CvtoolError(f"`cvtool predict {model}` failed: {(done.stderr or done.stdout).strip()[-300:]}")
        return json.loads(report.read_text())["torch"]


def tiny_onnx(folder: Path) -> tuple[Path, Path]:
    """A tiny cvtool .onnx (mean colour -> 2 classes, built with onnx.helper, no torch) and 3 PNGs."""
    import numpy as np
    import onnx
    from onnx import TensorProto, helper, numpy_helper
    from PIL import Image

    weights = numpy_helper.from_array(np.array([[1.0, -1.0], [0.5, 0.5], [-1.0, 1.0]], np.float32), "w")
    nodes = [helper.make_node("GlobalAveragePool", [INPUT_NAME], ["pooled"]),
             helper.make_node("Flatten", ["pooled"], ["flat"]),
             helper.make_node("MatMul", ["flat", "w"], [OUTPUT_NAME])]
    graph = helper.make_graph(nodes, "bench-tiny", [helper.make_tensor_value_info(INPUT_NAME, TensorProto.FLOAT,
                                                                                   ["batch", 3, 8, 8])],
                              [helper.make_tensor_value_info(OUTPUT_NAME, TensorProto.FLOAT, ["batch", 2])], [weights])
    proto = helper.make_model(graph, opset_imports=[helper.make_opsetid("", 18)], ir_version=9)
    card = ModelCard(task="multiclass", class_names=["dark", "bright"], target_names=[], mean=[0.0] * 3,
                     std=[1.0] * 3, image_size=8, channels=3, num_outputs=2, recipe_name="bench-tiny")
    helper.set_model_props(proto, card.to_metadata())
    model = folder / "tiny.onnx"
    onnx.save(proto, model)
    images = folder / "images"
    images.mkdir(exist_ok=True)
    for i in range(3):
        Image.fromarray(np.full((8, 8, 3), 60 * i, np.uint8)).save(images / f"{i}.png")
    return model, images


TRAIN_PROBE = """
import json, sys, time
marks = {}
import cvtool.cli.launch as launch
import cvtool.runs.train as run
from cvtool.cli.main import app

def fit(*args, **kwargs):
    marks.setdefault("fit", time.time())
    return run_fit(*args, **kwargs)

class Timed:
    def __init__(self, inner):
        self.inner, self.loader = inner, getattr(inner, "loader", inner)
    def __len__(self):
        return len(self.inner)
    def __iter__(self):
        for batch in self.inner:
            marks.setdefault("first_step", time.time())
            yield batch

def epoch(step, loader, *args, **kwargs):
    result = run_epoch(step, Timed(loader), *args, **kwargs)
    marks["last_step"] = time.time()
    return result

run_fit, run_epoch = launch.fit, run.train_one_epoch
launch.fit, run.train_one_epoch = fit, epoch
code = 0
try:
    app(sys.argv[2:], prog_name="cvtool")
except SystemExit as exc:
    code = exc.code or 0
with open(sys.argv[1], "w") as handle:
    json.dump({"code": code, **marks}, handle)
"""


def train_marks(recipe: Path, sets: list[str], cache: Path, out: Path) -> dict[str, float]:
    """Seconds from the start of a fresh `cvtool train RECIPE` process (CVTOOL_CACHE_DIR=`cache`) to
    fit, to its first step, and from its last step to the process's exit."""
    report = out.with_suffix(".json")
    args = ["train", str(recipe), "--out", str(out), "--quiet", *(item for s in sets for item in ("--set", s))]
    env = {**os.environ, "CVTOOL_CACHE_DIR": str(cache)}
    start = time.time()
    done = subprocess.run([sys.executable, "-c", TRAIN_PROBE, str(report), *args], capture_output=True, text=True,
                          check=False, env=env)
    end = time.time()
    marks = json.loads(report.read_text()) if report.is_file() else {}
    if marks.get("code") != 0 or "first_step" not in marks:
        raise CvtoolError(f"`cvtool train {recipe}` failed: {(done.stderr or done.stdout).strip()[-300:]}")
    return {"fit": marks.get("fit", marks["first_step"]) - start, "first_step": marks["first_step"] - start,
            "to_exit": end - marks["last_step"]}


def demo_recipe(folder: Path) -> tuple[Path, list[str]]:
    """The README's digits demo, written into `folder`, for one epoch."""
    from cvtool.data.generate import write_digits

    root = folder / "digits"
    write_digits(root, seed=0)
    recipe = Path(__file__).resolve().parents[2] / "recipes" / "digits.yaml"
    if not recipe.is_file():
        raise CvtoolError(f"{recipe}: the demo recipe is not here; give --recipe")
    return recipe, [f"data.root={root}", "train.epochs=1", "data.normalize=none"]


def train_figures(recipe: Path | None, sets: list[str], runs: int) -> tuple[list[Figure], list[str]]:
    """Start-to-first-step for fresh and cached runs, last-step-to-exit: medians of `runs` pairs."""
    with tempfile.TemporaryDirectory(prefix="cvtool-bench-") as tmp:
        folder = Path(tmp)
        if recipe is None:
            recipe, demo = demo_recipe(folder)
            sets = demo + sets
        fresh, cached = [], []
        for i in range(runs):
            cache = folder / f"cache-{i}"
            fresh.append(train_marks(recipe, sets, cache, folder / f"fresh-{i}"))
            cached.append(train_marks(recipe, sets, cache, folder / f"cached-{i}"))
    median = lambda marks, key: statistics.median(m[key] for m in marks)  # noqa: E731
    figures = [
        Figure("train, fresh: start to first step", median(fresh, "first_step"), unit="s", higher_is_better=False),
        Figure("train, cached: start to first step", median(cached, "first_step"), unit="s", higher_is_better=False),
        Figure("train, cached: fit to first step", median(cached, "first_step") - median(cached, "fit"), 1.0,
               unit="s", higher_is_better=False),
        Figure("train: last step to exit", median(cached + fresh, "to_exit"), unit="s", higher_is_better=False),
    ]
    notes = [f"train: {recipe} {' '.join('--set ' + s for s in sets)}; medians of {runs} fresh/cached pair(s); "
             f"start to fit (imports, recipe): fresh {median(fresh, 'fit'):.2f} s, cached {median(cached, 'fit'):.2f} s"]
    return figures, notes


def bench_startup(runs: int = 7, model: Path | None = None, images: Path | None = None, *, train: bool = True,
                  recipe: Path | None = None, sets: list[str] | None = None, train_runs: int = 1) -> BenchReport:
    """`cvtool --help` median wall time, whether predict on an .onnx imports torch, and (`train`)
    `cvtool train`'s start to first step and last step to exit."""
    if runs < 1 or train_runs < 1:
        raise CvtoolError("--runs and --train-runs need at least 1")
    if (model is None) != (images is None):
        raise CvtoolError("--model and --images go together (an .onnx file and a folder of images)")
    times = help_seconds(runs)
    with tempfile.TemporaryDirectory(prefix="cvtool-bench-") as tmp:
        if model is None:
            model, images = tiny_onnx(Path(tmp))
            which = "a tiny generated .onnx"
        else:
            which = str(model)
        loaded = predict_imports_torch(model, images)
    notes = [f"--help: median of {runs} fresh processes ({', '.join(f'{t:.3f}' for t in times)} s) "
             f"via {' '.join(Path(c).name for c in cvtool_command())}",
             f"predict on {which}: " + (f"loaded {', '.join(loaded)}" if loaded else "no torch module loaded")]
    figures = [Figure("cvtool --help", statistics.median(times), 0.3, unit="s", higher_is_better=False),
               Figure("predict .onnx imports torch", bool(loaded), False)]
    if train:
        more, lines = train_figures(recipe, sets or [], train_runs)
        figures += more
        notes += lines
    return BenchReport("bench startup", figures, notes)
