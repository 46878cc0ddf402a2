"""timm's train.py and `cvtool train`, side by side on one machine, on the same generated images.

What it measures: for each tool, the wall time of the whole training command (process start,
imports, data loading, compile, every epoch with its validation pass, checkpoints, exit), its
steady-state training throughput and its final validation top-1; then the ratio of the wall
times, cvtool / timm, against a target (0.85: cvtool at most 85% of timm's time at equal or
better accuracy).

Why this way: the wall time of the whole command is what a user waits for, so nothing is
subtracted from it. Both tools get the same data, model (ResNet18 from scratch), optimizer,
schedule, epochs, batch, precision and memory layout, and neither augments, so the two runs
differ only in how each tool moves images and steps the model. The throughput leaves out the
first epoch (compile, cache decode, worker start) and counts, for both tools alike, train
images per second of an epoch including its validation pass (cvtool's `seconds` column covers
both; timm's log gives the train and val time of each epoch). timm's train-only rate is kept in
the JSON file beside it.

The data: a seeded folder `ROOT/{train,val}/<class>/*.png` of 64 px RGB images of 100 classes,
written once (multiprocessing over the cores) and reused while its parameters are unchanged.
Each class is a fixed random 8 x 8 colour pattern, upsampled; an image is its class's pattern
blended with a random other class's pattern, circularly shifted and noised, so a ResNet18 learns
it in a few epochs but does not reach 100% at once.

What the two commands share, and where they cannot match exactly:
- timm runs the release's own train.py and `timm` package from `.bench/timm` (PYTHONPATH), with
  `--opt momentum` (timm's `sgd` is Nesterov; cvtool's `sgd` is not unless asked), `--no-aug`,
  label smoothing, mixup, cutmix and random erasing off, `--crop-pct 1.0` (no resize or crop
  at 64 px), ImageNet mean/std, `--warmup-epochs 0`.
- The cosine schedule is stepped per optimizer update on both sides (timm: `--sched-on-updates`;
  cvtool: cvtool/engine/schedule.py). Against a cvtool that still steps cosine per epoch, give
  `--timm-sched epochs`. Per update the two curves differ by one update in the period (timm
  divides by the update count, cvtool by one less, so its last update runs at lr 0).
- timm leaves bias and norm parameters out of weight decay; cvtool decays every parameter.
- The model is timm's ResNet18 on both sides: cvtool builds `timm/resnet18` from the same
  `.bench/timm` package (a fresh 100-class head instead of timm's `num_classes=100`). cvtool's
  plain `resnet18` is torchvision's, which learns this data much faster early on (timm
  zero-initializes the last BatchNorm of each block): `--cvtool-arch resnet18` shows that.
- timm saves last.pth.tar and up to 10 best checkpoints (its default `--checkpoint-hist 10`);
  cvtool saves last.pt and best.pt. Both are left at their defaults and counted in the wall time.
- timm validates with its own loader (`--workers` processes); cvtool decodes each split once into
  memory and gathers batches from there (`data.num_workers`, default the recipe's 0).

Usage (the GPU machine; python3 with cvtool's dependencies, the repo root on PYTHONPATH):
    python3 scripts/side_by_side.py --json side_by_side.json
The CPU dry run at tiny size:
    .venv/bin/python scripts/side_by_side.py --device cpu --precision fp32 \\
        --train-images 1024 --val-images 256 --epochs 2 --batch 64
"""

from __future__ import annotations

import argparse
import csv
import json
import multiprocessing
import os
import re
import shutil
import statistics
import subprocess
import sys
import tempfile
import time
from pathlib import Path

import numpy as np
from PIL import Image

REPO = Path(__file__).resolve().parent.parent
TIMM_TRAIN = REPO / ".bench" / "timm" / "train.py"
RECIPE = REPO / "recipes" / "bench" / "side_by_side_resnet18.yaml"
TARGET_RATIO = 0.85  # cvtool's wall time at most this share of timm's
IMAGENET_MEAN = ("0.485", "0.456", "0.406")
IMAGENET_STD = ("0.229", "0.224", "0.225")

# The generated data. Bump DATA_VERSION when the generator changes, so old folders are rewritten.
DATA_VERSION = 1
PATTERN_CELLS = 8  # each class: an 8 x 8 random colour pattern, upsampled to the image size
MAX_BLEND = 0.45  # share of a random other class's pattern mixed in (below 0.5: the label stays dominant)
MAX_SHIFT = 8  # pixels of circular shift in x and y
NOISE_STD = 0.20  # Gaussian pixel noise, in [0, 1] units


# --------------------------------------------------------------------------------------- data


def class_patterns(classes: int, size: int, seed: int) -> np.ndarray:
    """classes x size x size x 3 float32 in [0, 1]: each class's pattern, bilinearly upsampled."""
    cells = np.random.default_rng(seed).integers(0, 256, (classes, PATTERN_CELLS, PATTERN_CELLS, 3), dtype=np.uint8)
    return np.stack([np.asarray(Image.fromarray(c).resize((size, size), Image.BILINEAR), np.float32) / 255
                     for c in cells])


def draw_image(patterns: np.ndarray, label: int, rng: np.random.Generator) -> np.ndarray:
    """One uint8 image of class `label`: its pattern blended with another class's, shifted, noised."""
    other = (label + rng.integers(1, len(patterns))) % len(patterns)
    blend = rng.uniform(0, MAX_BLEND)
    image = (1 - blend) * patterns[label] + blend * patterns[other]
    image = np.roll(image, tuple(rng.integers(-MAX_SHIFT, MAX_SHIFT + 1, 2)), axis=(0, 1))
    image = image + rng.normal(0, NOISE_STD, image.shape)
    return (np.clip(image, 0, 1) * 255 + 0.5).astype(np.uint8)


def _write_chunk(job: tuple[Path, int, int, int, int, int, int]) -> None:
    """Write images start..stop-1 of one split (a worker process; every image has its own seed)."""
    folder, split_no, start, stop, classes, size, seed = job
    patterns = class_patterns(classes, size, seed)
    for index in range(start, stop):
        label = index % classes
        image = draw_image(patterns, label, np.random.default_rng((seed, split_no, index)))
        Image.fromarray(image).save(folder / f"c{label:03d}" / f"{index:06d}.png", compress_level=1)


def make_dataset(root: Path, splits: dict[str, int], classes: int, size: int, seed: int) -> float:
    """Write the image folder unless `root` already holds this exact one; returns the seconds spent."""
    params = {"version": DATA_VERSION, "splits": splits, "classes": classes, "size": size, "seed": seed}
    stamp = root / "dataset.json"
    if stamp.is_file() and json.loads(stamp.read_text()) == params:
        return 0.0
    if root.exists() and any(root.iterdir()) and not stamp.is_file():
        sys.exit(f"side_by_side: {root} is not empty and was not written by this script; give another --data")
    start = time.perf_counter()
    stamp.unlink(missing_ok=True)
    jobs = []
    for split_no, (split, count) in enumerate(splits.items()):
        shutil.rmtree(root / split, ignore_errors=True)
        for label in range(classes):
            (root / split / f"c{label:03d}").mkdir(parents=True)
        step = max(1, -(-count // (4 * (os.cpu_count() or 1))))
        jobs += [(root / split, split_no, i, min(i + step, count), classes, size, seed) for i in range(0, count, step)]
    with multiprocessing.Pool() as pool:
        pool.map(_write_chunk, jobs)
    stamp.write_text(json.dumps(params))
    return time.perf_counter() - start


# ----------------------------------------------------------------------------------- commands


def timm_command(args: argparse.Namespace, data: Path, out: Path) -> list[str]:
    command = [args.python, "-u", str(TIMM_TRAIN), "--data-dir", str(data), "--train-split", "train",
               "--val-split", "val", "--model", "resnet18", "--num-classes", str(args.classes),
               "--img-size", "64", "--crop-pct", "1.0", "--mean", *IMAGENET_MEAN, "--std", *IMAGENET_STD,
               "-b", str(args.batch), "-vb", str(2 * args.batch), "--opt", "momentum", "--lr", str(args.lr),
               "--momentum", "0.9", "--weight-decay", str(args.weight_decay), "--sched", "cosine",
               "--warmup-epochs", "0", "--min-lr", "0", "--epochs", str(args.epochs), "--no-aug",
               "--smoothing", "0", "--mixup", "0", "--cutmix", "0", "--reprob", "0", "--channels-last",
               "--workers", str(args.workers), "--device", args.device, "--seed", "0",
               "--output", str(out), "--experiment", "timm", "--log-interval", "50"]
    if args.precision == "bf16":
        command += ["--amp", "--amp-dtype", "bfloat16"]
    if args.device == "cuda":
        command += ["--pin-mem"]
    if args.timm_sched == "updates":
        command += ["--sched-on-updates"]
    if args.timm_compile:
        command += ["--torchcompile"]
    return command


def cvtool_command(args: argparse.Namespace, data: Path, out: Path) -> list[str]:
    sets = {"data.root": data, "train.device": args.device, "train.epochs": args.epochs,
            "data.batch_size": args.batch, "data.eval_batch_size": 2 * args.batch, "optim.lr": args.lr,
            "optim.weight_decay": args.weight_decay, "train.amp": "bf16" if args.precision == "bf16" else "none",
            "train.compile": args.cvtool_compile, "model.arch": args.cvtool_arch}
    if args.cvtool_workers is not None:
        sets["data.num_workers"] = args.cvtool_workers
    command = [args.python, "-m", "cvtool", "train", str(RECIPE), "--out", str(out), "--quiet"]
    for key, value in sets.items():
        command += ["--set", f"{key}={value}"]
    return command


def run_command(command: list[str], log: Path) -> tuple[float, int]:
    """Run `command` with stdout and stderr into `log`; (wall seconds, exit status)."""
    env = dict(os.environ)
    # the release's timm first (so timm's side never picks up another installed timm), then the repo
    env["PYTHONPATH"] = os.pathsep.join(p for p in (str(TIMM_TRAIN.parent), str(REPO), env.get("PYTHONPATH")) if p)
    with open(log, "w") as handle:
        start = time.perf_counter()
        status = subprocess.run(command, stdout=handle, stderr=subprocess.STDOUT, env=env, cwd=REPO).returncode
        wall = time.perf_counter() - start
    return wall, status


# ------------------------------------------------------------------------------------ results

# timm's last log line of an epoch's training and of its validation pass (running averages)
TIMM_TRAIN_END = re.compile(r"Train: (\d+) \[\s*(\d+)/(\d+) \(100%\)\].*?\(([\d.]+)s,\s*([\d.]+)/s\)")
TIMM_TEST_END = re.compile(r"Test: \[\s*(\d+)/(\d+)\]\s+Time: [\d.]+ \(([\d.]+)\)")


def timm_result(log: Path, out: Path, batch: int) -> dict:
    """Per epoch: train and val seconds from the log's running averages; top-1 from summary.csv."""
    text = log.read_text(errors="replace")
    train = [(int(m[1]), int(m[3]), float(m[4]), float(m[5])) for m in TIMM_TRAIN_END.finditer(text)]
    tests = [(int(m[2]) + 1) * float(m[3]) for m in TIMM_TEST_END.finditer(text) if m[1] == m[2]]
    epochs = [{"epoch": e + 1, "train_images": updates * batch, "train_seconds": updates * avg_s,
               "train_rate": rate, "seconds": updates * avg_s + (tests[i] if i < len(tests) else 0.0)}
              for i, (e, updates, avg_s, rate) in enumerate(train)]
    with open(out / "timm" / "summary.csv", newline="") as handle:
        top1 = [float(row["eval_top1"]) for row in csv.DictReader(handle)]
    steady = epochs[1:] or epochs
    return {"epochs": epochs, "final_top1": top1[-1], "best_top1": max(top1),
            "images_per_s": sum(e["train_images"] for e in steady) / sum(e["seconds"] for e in steady),
            "train_only_images_per_s": sum(e["train_images"] for e in steady) / sum(e["train_seconds"] for e in steady)}


def cvtool_result(log: Path, run: Path, compile_option: str) -> dict:
    """Per epoch from metrics.csv (`seconds`: train + val); the train image count from summary.json."""
    summary = json.loads((run / "summary.json").read_text())
    with open(run / "metrics.csv", newline="") as handle:
        rows = list(csv.DictReader(handle))
    images = int(summary["train_images"])
    epochs = [{"epoch": int(r["epoch"]), "train_images": images, "seconds": float(r["seconds"])} for r in rows]
    top1 = [100 * float(r["val/accuracy"]) for r in rows]
    steady = epochs[1:] or epochs
    failed = re.search(r"cvtool: torch\.compile failed \((.*?)\); training without it", log.read_text(errors="replace"))
    return {"epochs": epochs, "final_top1": top1[-1], "best_top1": max(top1),
            "images_per_s": sum(e["train_images"] for e in steady) / sum(e["seconds"] for e in steady),
            "compile": f"{compile_option}, failed: {failed[1]}" if failed else compile_option}


def measure(tool: str, args: argparse.Namespace, data: Path, work: Path, repeat: int) -> dict:
    out, log = work / f"{tool}-{repeat}", work / f"{tool}-{repeat}.log"
    shutil.rmtree(out, ignore_errors=True)
    out.mkdir(parents=True)
    command = timm_command(args, data, out) if tool == "timm" else cvtool_command(args, data, out / "run")
    print(f"side_by_side: {tool} run {repeat + 1}/{args.repeats} ...", flush=True)
    wall, status = run_command(command, log)
    record = {"tool": tool, "repeat": repeat, "wall_s": wall, "status": status, "log": str(log),
              "command": " ".join(command), "compile": "on" if args.timm_compile else "off"}
    try:
        if status != 0:
            raise RuntimeError(f"exit status {status}")
        record.update(timm_result(log, out, args.batch) if tool == "timm"
                      else cvtool_result(log, out / "run", args.cvtool_compile))
    except (OSError, KeyError, ValueError, IndexError, ZeroDivisionError, RuntimeError) as exc:
        tail = log.read_text(errors="replace").splitlines()[-15:]
        print(f"side_by_side: {tool} failed ({exc}); last lines of {log}:", *tail, sep="\n  ", file=sys.stderr)
        record["error"] = str(exc)
    print(f"side_by_side: {tool} took {wall:.1f} s", flush=True)
    return record


def combine(records: list[dict], tool: str) -> dict | None:
    """Median wall time and throughput over a tool's repeats; accuracy of the median-time run."""
    done = sorted((r for r in records if r["tool"] == tool and "error" not in r), key=lambda r: r["wall_s"])
    if len(done) < len([r for r in records if r["tool"] == tool]) or not done:
        return None
    middle = done[(len(done) - 1) // 2]
    return {"wall_s": statistics.median(r["wall_s"] for r in done),
            "outside_epochs_s": statistics.median(r["wall_s"] - sum(e["seconds"] for e in r["epochs"]) for r in done),
            "images_per_s": statistics.median(r["images_per_s"] for r in done),
            "final_top1": middle["final_top1"], "best_top1": middle["best_top1"],
            "compile": middle["compile"]}


def print_table(timm: dict | None, cvtool: dict | None, verdict: dict) -> None:
    rows = [("tool", "wall s", "outside epochs s", "images/s", "val top-1 %", "best top-1 %", "notes")]
    for name, result in (("timm", timm), ("cvtool", cvtool)):
        if result is None:
            rows.append((name, "failed", "-", "-", "-", "-", "see its log"))
        else:
            rows.append((name, f"{result['wall_s']:.1f}", f"{result['outside_epochs_s']:.1f}",
                         f"{result['images_per_s']:.0f}", f"{result['final_top1']:.2f}", f"{result['best_top1']:.2f}",
                         f"compile {result['compile']}"))
    if timm and cvtool:
        rows.append(("cvtool/timm", f"{verdict['wall_ratio']:.3f}", "", f"{verdict['rate_ratio']:.2f}x",
                     f"{verdict['top1_diff']:+.2f}", "", f"target wall <= {TARGET_RATIO}: {verdict['result']}"))
    widths = [max(len(row[i]) for row in rows) for i in range(len(rows[0]))]
    print()
    for row in rows:
        print("  ".join(cell.ljust(width) for cell, width in zip(row, widths)).rstrip())


# --------------------------------------------------------------------------------------- main


def parse_args() -> argparse.Namespace:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--data", type=Path, default=Path(tempfile.gettempdir()) / "side-by-side-data",
                        help="image folder to write (once) and train on")
    parser.add_argument("--work", type=Path, default=Path(tempfile.gettempdir()) / "side-by-side-runs",
                        help="logs (<tool>-<n>.log) and run folders")
    parser.add_argument("--json", type=Path, help="write every figure here")
    parser.add_argument("--train-images", type=int, default=20480, help="a multiple of --batch: no short last batch")
    parser.add_argument("--val-images", type=int, default=2048)
    parser.add_argument("--classes", type=int, default=100)
    parser.add_argument("--epochs", type=int, default=8)
    parser.add_argument("--batch", type=int, default=256)
    parser.add_argument("--lr", type=float, default=0.1)
    parser.add_argument("--weight-decay", type=float, default=5e-5)
    parser.add_argument("--workers", type=int, default=min(16, os.cpu_count() or 1), help="timm's loader processes")
    parser.add_argument("--device", choices=["cuda", "cpu"], default="cuda")
    parser.add_argument("--precision", choices=["bf16", "fp32"], default="bf16", help="autocast dtype, both tools")
    parser.add_argument("--cvtool-compile", choices=["auto", "false"], default="auto",
                        help="cvtool's train.compile (auto: on for CUDA)")
    parser.add_argument("--timm-sched", choices=["updates", "epochs"], default="updates",
                        help="timm steps its cosine per update (cvtool's way) or per epoch")
    parser.add_argument("--timm-compile", action="store_true", help="give timm --torchcompile too (default: off)")
    parser.add_argument("--cvtool-arch", default="timm/resnet18",
                        help="timm/resnet18 (timm's model, as timm trains) or resnet18 (torchvision's)")
    parser.add_argument("--cvtool-workers", type=int, help="cvtool's data.num_workers (default: the recipe's)")
    parser.add_argument("--top1-slack", type=float, default=0.0,
                        help="points of val top-1 cvtool may trail timm by and still pass (default: none)")
    parser.add_argument("--repeats", type=int, default=1, help="runs per tool, alternating timm and cvtool")
    parser.add_argument("--python", default=sys.executable, help="interpreter for both commands")
    return parser.parse_args()


def main() -> int:
    args = parse_args()
    if not TIMM_TRAIN.is_file():
        sys.exit(f"side_by_side: {TIMM_TRAIN} is missing (timm's release source, exported into .bench/timm)")
    started = time.perf_counter()
    data_s = make_dataset(args.data, {"train": args.train_images, "val": args.val_images}, args.classes, 64, seed=0)
    print(f"side_by_side: data in {args.data} ({'written in %.1f s' % data_s if data_s else 'reused'})", flush=True)
    args.work.mkdir(parents=True, exist_ok=True)
    records = [measure(tool, args, args.data, args.work, repeat)
               for repeat in range(args.repeats) for tool in ("timm", "cvtool")]
    timm, cvtool = combine(records, "timm"), combine(records, "cvtool")
    verdict: dict = {"result": "no result"}
    if timm and cvtool:
        wall_ratio = cvtool["wall_s"] / timm["wall_s"]
        top1_diff = cvtool["final_top1"] - timm["final_top1"]
        verdict = {"wall_ratio": wall_ratio, "rate_ratio": cvtool["images_per_s"] / timm["images_per_s"],
                   "top1_diff": top1_diff,
                   "result": "PASS" if wall_ratio <= TARGET_RATIO and top1_diff >= -args.top1_slack else "FAIL"}
    if args.json:
        settings = {k: str(v) if isinstance(v, Path) else v for k, v in vars(args).items()}
        args.json.write_text(json.dumps({"settings": settings, "data_seconds": data_s, "timm": timm, "cvtool": cvtool,
                                         "verdict": verdict, "runs": records,
                                         "total_seconds": time.perf_counter() - started}, indent=2))
    print_table(timm, cvtool, verdict)
    return 0 if verdict["result"] == "PASS" else 1


if __name__ == "__main__":
    sys.exit(main())
