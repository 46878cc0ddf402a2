"""`cvtool bench`: the performance figures that matter to a user, each with its target.

- train: a recipe's real training loop (build_session, train_dataset, make_loader, train_one_epoch)
  against the pure-compute ceiling, the same loop fed one fixed in-memory batch.
- predict (bench/predict.py): onnxruntime vs torch eager, files -> CSV vs the bare session,
  TTA with N passes vs N plain passes.
- startup: `cvtool --help` wall time in fresh processes; does `cvtool predict` on an .onnx import torch?

Speeds are measured here and printed; tests only check that the figures are produced.
"""

from __future__ import annotations

import json
import os
import statistics
import subprocess
import sys
import tempfile
import time
from collections.abc import Iterable
from dataclasses import dataclass, field, replace
from pathlib import Path
from typing import Any

from cvtool.bench.steps import StepClock, ceiling_batch, on_cpu
from cvtool.data.device import augment_on_device
from cvtool.data.loaders import EpochSampler
from cvtool.data.pipeline import train_dataset
from cvtool.data.resident import is_resident, training_loader
from cvtool.engine.cpu import with_cpu_runtime
from cvtool.engine.loop import train_one_epoch
from cvtool.errors import CvtoolError
from cvtool.model_card import INPUT_NAME, OUTPUT_NAME, ModelCard
from cvtool.recipe.schema import Recipe
from cvtool.runs.step import build_session, build_step


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


# ---- training ------------------------------------------------------------------------------

@with_cpu_runtime
def bench_train(recipe: Recipe, *, steps: int = 10, warmup: int = 2, rounds: int = 5,
                target: float = 0.95) -> BenchReport:
    """Images/s of training steps through the recipe's real loader, and of the same loop fed one
    fixed in-memory batch (the compute ceiling; on CUDA a random batch already on the device, its
    augmentation still applied there). Rounds alternate the two, each block starting from the same
    weights; the best block of each is kept (other load only ever slows a block). CUDA: also the
    peak GPU memory."""
    import torch

    if steps < 1 or warmup < 1 or rounds < 1:
        raise CvtoolError("--steps, --warmup and --rounds need at least 1")
    if not 0 < target <= 1:  # a ratio of two throughputs; nan would pass or miss every comparison silently
        raise CvtoolError(f"--target {target}: a ratio above 0 and at most 1")
    session = build_session(recipe, quiet=True)
    defer = augment_on_device(session.device, recipe.data.num_workers, recipe.data.on_device)
    train_set = train_dataset(session.bundle, session.task, recipe.augment, recipe.seed, recipe.data.flip_pairs,
                              defer_augment=defer)
    batch = recipe.data.batch_size
    sampler = EpochSampler(len(train_set), recipe.seed, True)
    loader = training_loader(train_set, batch, sampler, recipe.data.num_workers, session.device,
                             recipe.data.on_device, drop_last=True)
    resident = is_resident(loader)  # data.on_device (`--set data.on_device=true|false` picks the path)
    if len(loader) <= warmup:
        raise CvtoolError(f"bench train: {len(loader)} full batches of {batch} per epoch; "
                          f"--warmup {warmup} leaves none to time")
    notes = []
    if warmup + steps > len(loader):
        notes.append(f"--steps {steps} cut to {len(loader) - warmup}: one epoch has {len(loader)} batches")
        steps = len(loader) - warmup
    timed = session.recipe.train.model_copy(update={"max_batches": warmup + steps})
    session = replace(session, recipe=session.recipe.model_copy(update={"train": timed}))
    step = build_step(session, steps=len(loader), batch=batch,
                      augment=train_set.batched if train_set.defer_augment else None)
    cuda = session.device.type == "cuda"
    if cuda:  # GPU only
        torch.cuda.reset_peak_memory_stats(session.device)
    real, ceiling = _time_blocks(step, loader, sampler, steps, warmup, rounds)
    paired = statistics.median(r / c for r, c in zip(real, ceiling, strict=True))
    size = f"{recipe.data.image_size} px" + (f" (decoded at {recipe.data.decode_size})"
                                             if recipe.data.cached_size != recipe.data.image_size else "")
    notes.append(f"{recipe.name}: {recipe.model.arch} at {size}, batch {batch}, precision "
                 f"{str(step.dtype or torch.float32).removeprefix('torch.')}, "
                 f"compiled {'yes' if step.forward is not step.model else 'no'}, "
                 f"{len(recipe.augment)} augmentations, {len(train_set)} train images, device {session.device}, "
                 f"torch threads {torch.get_num_threads()}, data.num_workers {recipe.data.num_workers}")
    notes.insert(0, "data path: " + ("the training split kept on the device (data.on_device), batches gathered there"
                                     if resident else f"DataLoader ({recipe.data.num_workers} workers) + DeviceFeeder"))
    notes.append(f"{rounds} rounds of {steps} timed steps (after {warmup}) per source; best block kept; "
                 f"median of the per-round ratios {paired:.3f}")
    notes.append(f"per round, loader: {', '.join(f'{v:.0f}' for v in real)} images/s; "
                 f"ceiling: {', '.join(f'{v:.0f}' for v in ceiling)} images/s")
    figures = [
        Figure("real loader", max(real), unit="images/s"),
        Figure(f"compute ceiling ({'device-resident random batch' if cuda else 'one fixed batch'})", max(ceiling),
               unit="images/s"),
        Figure("real loader / ceiling", max(real) / max(ceiling), target, unit="x"),
        Figure("device-resident training split", resident),
    ]
    if cuda:  # GPU only
        figures.append(Figure("peak GPU memory", torch.cuda.max_memory_allocated(session.device) / 2**30,
                              unit="GiB"))
    return BenchReport(f"bench train {recipe.name}", figures, notes)


def _time_blocks(step: Any, loader: Any, sampler: Any, steps: int, warmup: int,
                 rounds: int) -> tuple[list[float], list[float]]:
    """Images/s per round through `loader` and on its first batch repeated, in blocks of
    warmup + steps calls of train_one_epoch, each from the same weights and optimizer state."""
    import torch

    fixed = ceiling_batch(step, next(iter(loader)))
    # the starting point in host memory: a copy on the GPU would count in the peak memory
    start = on_cpu((step.module.state_dict(), step.optimizer.state_dict()))
    cuda = step.device.type == "cuda"

    def timed(source: Iterable, epoch: int) -> float:
        step.module.load_state_dict(start[0])
        step.optimizer.load_state_dict(start[1])
        clock = StepClock(torch.cuda.synchronize if cuda else None, (warmup, warmup + steps))
        train_one_epoch(step, source, epoch, progress=clock)
        return steps * len(fixed[0]) / (clock.times[warmup + steps] - clock.times[warmup])

    real, ceiling = [], []
    for epoch in range(1, rounds + 1):
        sampler.set_epoch(epoch)
        blocks = [(ceiling, [fixed] * (warmup + steps)), (real, loader)]
        for results, source in blocks if epoch % 2 else blocks[::-1]:
            results.append(timed(source, epoch))
    return real, ceiling


# ---- start-up ------------------------------------------------------------------------------

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


def bench_startup(runs: int = 7, model: Path | None = None, images: Path | None = None) -> BenchReport:
    """`cvtool --help` median wall time, and whether predict on an .onnx imports torch."""
    if runs < 1:
        raise CvtoolError("--runs needs at least 1")
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
    return BenchReport("bench startup", figures, notes)
