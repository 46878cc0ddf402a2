"""timm's train.py and `cvtool train`, side by side on one machine, on the same generated images.

What it measures: for each tool, the wall time of the whole training command (process start,
imports, data loading, compile, every epoch with its validation pass, checkpoints, exit), its
steady-state throughput and its final validation top-1; then the ratio of the wall times,
cvtool / timm, against the target: cvtool at most 0.85 x timm's time at equal or better top-1.

Why this way: the wall time of the whole command is what a user waits for, so nothing is
subtracted from it. Both tools get the same data, model, optimizer, schedule, epochs, batch,
precision and memory layout, and neither augments, so the runs differ only in how each tool
moves images and steps the model. The throughput leaves out the first epoch (compile, cache
decode, worker start) and counts train images per second of an epoch *including* its
validation pass, for both tools alike: cvtool's metrics.csv `seconds` covers both, and timm's
log gives each epoch's train and val time (its train-only rate is kept in the JSON file too).
"outside epochs" is the wall time minus the epochs: start, imports, data, compile, exit.

The data: a seeded folder `ROOT/{train,val}/<class>/*.png` of 64 px RGB images of 100 classes,
written once (a process pool over the cores) and reused while its parameters are unchanged.
Each class is a fixed random 8 x 8 colour pattern, upsampled; an image is its class's pattern
blended with a random other class's, circularly shifted and noised: learnable in a few epochs,
not at once. The default counts are multiples of the batch: no short last batch (which
torch.compile would compile again) and the same images per epoch on both sides.

What the two commands share, and where they cannot match exactly:
- timm runs the release's own train.py and `timm` package from `.bench/timm` (first on
  PYTHONPATH, for both commands), with `--opt momentum` (timm's `sgd` is Nesterov, cvtool's is
  not), `--no-aug`, label smoothing, mixup, cutmix and random erasing off, `--crop-pct 1.0`
  (no resize or crop at 64 px), ImageNet mean/std, `--warmup-epochs 0`, `-vb` 2 x batch (cvtool's
  eval batch).
- The model is timm's ResNet18 on both sides: cvtool builds `timm/resnet18` from that package
  (with a fresh 100-class head). cvtool's plain `resnet18` is torchvision's, which learns this
  data much faster in the first epochs because timm zero-initializes the last BatchNorm of each
  block (`--cvtool-arch resnet18` shows it).
- The cosine schedule steps per optimizer update on both sides (timm: `--sched-on-updates`;
  cvtool: cvtool/engine/schedule.py). For a cvtool that steps cosine per epoch, give
  `--timm-sched epochs`. Per update, cvtool's period is one update shorter (its last update
  runs at lr 0).
- timm exempts biases and norm weights from weight decay; cvtool decays every parameter.
- Checkpoints are each tool's default and count in the wall time: timm writes last.pth.tar and
  keeps up to 10 best (`--checkpoint-hist 10`); cvtool writes last.pt, best.pt and its plots.
- timm decodes PNGs every epoch in `--workers` processes; cvtool decodes each split once into
  memory and gathers batches from there (`data.num_workers`: the recipe's 0 unless
  `--cvtool-workers`).

Usage (the GPU machine: cvtool's dependencies importable, the repo root on PYTHONPATH):
    python3 scripts/side_by_side.py --json side_by_side.json
The CPU dry run at tiny size:
    .venv/bin/python scripts/side_by_side.py --device cpu --train-images 2048 --val-images 256 \\
        --epochs 2 --batch 64
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
TIMM_SOURCE = REPO / ".bench" / "timm"  # a timm release's train.py and timm/ package (git archive)
RECIPE = REPO / "recipes" / "bench" / "side_by_side_resnet18.yaml"
TARGET_RATIO = 0.85  # cvtool's wall time at most this share of timm's
IMAGENET_MEAN = ("0.485", "0.456", "0.406")
IMAGENET_STD = ("0.229", "0.224", "0.225")
IMAGE_SIZE = 64  # the default of --image-size

# The generated data. Bump DATA_VERSION when the generator changes: old folders are rewritten.
DATA_VERSION = 1
PATTERN_CELLS = 8  # each class: an 8 x 8 random colour pattern, upsampled to the image size
MAX_BLEND = 0.45  # share of a random other class's pattern mixed in (< 0.5: the own class dominates)
MAX_SHIFT = 8  # pixels of circular shift in x and y
NOISE_STD = 0.20  # Gaussian pixel noise, in [0, 1] units


# ------------------------------------------------------------------------------------- data


def class_patterns(classes: int, seed: int, image_size: int = IMAGE_SIZE) -> np.ndarray:
    """classes x size x size x 3 float32 in [0, 1]: each class's pattern, bilinearly upsampled."""
    shape = (classes, PATTERN_CELLS, PATTERN_CELLS, 3)
    cells = np.random.default_rng(seed).integers(0, 256, shape, dtype=np.uint8)
    size = (image_size, image_size)
    return np.stack([np.asarray(Image.fromarray(c).resize(size, Image.BILINEAR), np.float32) / 255 for c in cells])


def draw_image(patterns: np.ndarray, label: int, rng: np.random.Generator) -> np.ndarray:
    """One uint8 image of class `label`: its pattern blended with another class's, shifted, noised."""
    other = (label + rng.integers(1, len(patterns))) % len(patterns)
    blend = rng.uniform(0, MAX_BLEND)
    image = (1 - blend) * patterns[label] + blend * patterns[other]
    shift = MAX_SHIFT * patterns.shape[1] // IMAGE_SIZE  # the same share of the image at any size
    image = np.roll(image, tuple(rng.integers(-shift, shift + 1, 2)), axis=(0, 1))
    image = image + rng.normal(0, NOISE_STD, image.shape)
    return (np.clip(image, 0, 1) * 255 + 0.5).astype(np.uint8)


def _write_images(job: tuple[Path, int, range, int, int, int]) -> None:
    """Write one range of a split's images (in a pool process; each image has its own seed)."""
    folder, split_no, indices, classes, seed, image_size = job
    patterns = class_patterns(classes, seed, image_size)
    for index in indices:
        label = index % classes
        image = draw_image(patterns, label, np.random.default_rng((seed, split_no, index)))
        Image.fromarray(image).save(folder / f"c{label:03d}" / f"{index:06d}.png", compress_level=1)


def make_dataset(root: Path, splits: dict[str, int], classes: int, seed: int, image_size: int = IMAGE_SIZE) -> float:
    """Write the image folder unless `root` holds this exact one already; the seconds it took."""
    params = {"version": DATA_VERSION, "splits": splits, "classes": classes, "size": image_size, "seed": seed}
    stamp = root / "dataset.json"  # written first with complete: false, so a broken-off run is redone
    if stamp.is_file() and json.loads(stamp.read_text()) == {**params, "complete": True}:
        return 0.0
    if root.is_dir() and any(root.iterdir()) and not stamp.is_file():
        sys.exit(f"side_by_side: {root} is not empty and not written by this script; give another --data")
    start = time.perf_counter()
    root.mkdir(parents=True, exist_ok=True)
    stamp.write_text(json.dumps({**params, "complete": False}))
    jobs = []
    chunk = max(1, sum(splits.values()) // (4 * (os.cpu_count() or 1)))
    for split_no, (split, count) in enumerate(splits.items()):
        shutil.rmtree(root / split, ignore_errors=True)
        for label in range(classes):
            (root / split / f"c{label:03d}").mkdir(parents=True)
        jobs += [(root / split, split_no, range(i, min(i + chunk, count)), classes, seed, image_size)
                 for i in range(0, count, chunk)]
    with multiprocessing.Pool() as pool:
        pool.map(_write_images, jobs)
    stamp.write_text(json.dumps({**params, "complete": True}))
    return time.perf_counter() - start


# --------------------------------------------------------------------------------- commands


def timm_command(args: argparse.Namespace, out: Path) -> list[str]:
    command = [
        args.python, "-u", str(TIMM_SOURCE / "train.py"), "--data-dir", str(args.data),
        "--train-split", "train", "--val-split", "val", "--model", "resnet18", "--num-classes", str(args.classes),
        "--img-size", str(args.image_size), "--crop-pct", "1.0", "--mean", *IMAGENET_MEAN, "--std", *IMAGENET_STD,
        "-b", str(args.batch), "-vb", str(2 * args.batch),
        "--opt", "momentum", "--lr", str(args.lr), "--momentum", "0.9", "--weight-decay", str(args.weight_decay),
        "--sched", "cosine", "--warmup-epochs", "0", "--min-lr", "0", "--epochs", str(args.epochs),
        "--no-aug", "--smoothing", "0", "--mixup", "0", "--cutmix", "0", "--reprob", "0",
        "--channels-last", "--workers", str(args.workers), "--device", args.device, "--seed", "0",
        "--output", str(out), "--experiment", "timm", "--log-interval", "50",
    ]
    if args.precision == "bf16":
        command += ["--amp", "--amp-dtype", "bfloat16"]
    if args.device == "cuda":
        command += ["--pin-mem"]
    if args.timm_sched == "updates":
        command += ["--sched-on-updates"]
    if args.timm_compile:
        command += ["--torchcompile"]
    return command


def cvtool_command(args: argparse.Namespace, out: Path) -> list[str]:
    sets = {
        "data.root": args.data, "train.device": args.device, "train.epochs": args.epochs,
        "data.batch_size": args.batch, "data.eval_batch_size": 2 * args.batch,
        "optim.lr": args.lr, "optim.weight_decay": args.weight_decay,
        "train.amp": "bf16" if args.precision == "bf16" else "none",
        "train.compile": args.cvtool_compile, "model.arch": args.cvtool_arch, "data.image_size": args.image_size,
    }
    if args.test_images:
        sets["data.test"] = "test"
    if args.cvtool_workers is not None:
        sets["data.num_workers"] = args.cvtool_workers
    command = [args.python, "-m", "cvtool", "train", str(RECIPE), "--out", str(out), "--quiet"]
    for key, value in sets.items():
        command += ["--set", f"{key}={value}"]
    return command


def run_command(command: list[str], log: Path) -> tuple[float, int]:
    """Run `command` with stdout and stderr into `log`: (wall seconds, exit status)."""
    env = dict(os.environ)
    # the release's timm before any installed one, then the repo (cvtool is not installed there)
    paths = (str(TIMM_SOURCE), str(REPO), env.get("PYTHONPATH"))
    env["PYTHONPATH"] = os.pathsep.join(p for p in paths if p)
    with open(log, "w") as handle:
        start = time.perf_counter()
        status = subprocess.run(command, stdout=handle, stderr=subprocess.STDOUT, env=env, cwd=REPO).returncode
        return time.perf_counter() - start, status


# ---------------------------------------------------------------------------------- results

# timm's last log line of an epoch's training and of its validation pass (running averages)
TIMM_TRAIN_END = re.compile(r"Train: (\d+) \[\s*\d+/(\d+) \(100%\)\].*?\(([\d.]+)s,\s*([\d.]+)/s\)")
TIMM_TEST_LINE = re.compile(r"Test: \[\s*(\d+)/(\d+)\]\s+Time: [\d.]+ \(([\d.]+)\)")
CVTOOL_COMPILE_FAILED = re.compile(r"cvtool: torch\.compile failed \((.*?)\); training without it")


def steady_rate(epochs: list[dict], seconds_key: str = "seconds") -> float:
    """Train images per second over the epochs after the first (all of them if there is one)."""
    steady = epochs[1:] or epochs
    return sum(e["train_images"] for e in steady) / sum(e[seconds_key] for e in steady)


def timm_result(log: Path, out: Path, batch: int) -> dict:
    """Per epoch: train and val seconds from the log's running averages; top-1 from summary.csv."""
    text = log.read_text(errors="replace")
    val_seconds = [(int(m[2]) + 1) * float(m[3]) for m in TIMM_TEST_LINE.finditer(text) if m[1] == m[2]]
    epochs = []
    for match, val_s in zip(TIMM_TRAIN_END.finditer(text), val_seconds, strict=True):
        updates, update_s = int(match[2]), float(match[3])  # drop_last: every update is a full batch
        epochs.append({"epoch": int(match[1]) + 1, "train_images": updates * batch,
                       "train_seconds": updates * update_s, "seconds": updates * update_s + val_s})
    with open(out / "timm" / "summary.csv", newline="") as handle:
        top1 = [float(row["eval_top1"]) for row in csv.DictReader(handle)]
    return {"epochs": epochs, "final_top1": top1[-1], "best_top1": max(top1), "images_per_s": steady_rate(epochs),
            "train_only_images_per_s": steady_rate(epochs, "train_seconds")}


def cvtool_result(log: Path, run: Path, compile_option: str) -> dict:
    """Per epoch from metrics.csv (`seconds`: train and val); the train image count from summary.json."""
    images = int(json.loads((run / "summary.json").read_text())["train_images"])
    with open(run / "metrics.csv", newline="") as handle:
        rows = list(csv.DictReader(handle))
    epochs = [{"epoch": int(row["epoch"]), "train_images": images, "seconds": float(row["seconds"])} for row in rows]
    top1 = [100 * float(row["val/accuracy"]) for row in rows]
    failed = CVTOOL_COMPILE_FAILED.search(log.read_text(errors="replace"))
    return {"epochs": epochs, "final_top1": top1[-1], "best_top1": max(top1), "images_per_s": steady_rate(epochs),
            "compile": f"{compile_option} (failed: {failed[1]})" if failed else compile_option}


def measure(tool: str, args: argparse.Namespace, repeat: int) -> dict:
    """One run of one tool: its command, wall time and figures (or the error that stopped them)."""
    out, log = args.work / f"{tool}-{repeat}", args.work / f"{tool}-{repeat}.log"
    shutil.rmtree(out, ignore_errors=True)
    out.mkdir(parents=True)
    command = timm_command(args, out) if tool == "timm" else cvtool_command(args, out / "run")
    print(f"side_by_side: {tool}, run {repeat + 1} of {args.repeats} ...", flush=True)
    wall, status = run_command(command, log)
    print(f"side_by_side: {tool} took {wall:.1f} s", flush=True)
    record = {"tool": tool, "repeat": repeat, "wall_s": wall, "status": status, "log": str(log),
              "command": " ".join(command), "compile": "on" if args.timm_compile else "off"}
    try:
        if status != 0:
            raise RuntimeError(f"exit status {status}")
        record.update(timm_result(log, out, args.batch) if tool == "timm"
                      else cvtool_result(log, out / "run", args.cvtool_compile))
    except (OSError, KeyError, ValueError, IndexError, ZeroDivisionError, RuntimeError) as exc:
        tail = log.read_text(errors="replace").splitlines()[-15:]
        print(f"side_by_side: {tool} failed ({exc}); the end of {log}:", *tail, sep="\n  ", file=sys.stderr)
        record["error"] = str(exc)
    return record


def combine(records: list[dict], tool: str) -> dict | None:
    """Medians over a tool's repeats (accuracy: of its median-time run); None if any run failed."""
    runs = sorted((r for r in records if r["tool"] == tool), key=lambda r: r["wall_s"])
    if not runs or any("error" in r for r in runs):
        return None
    middle = runs[(len(runs) - 1) // 2]
    return {"wall_s": statistics.median(r["wall_s"] for r in runs),
            "outside_epochs_s": statistics.median(r["wall_s"] - sum(e["seconds"] for e in r["epochs"]) for r in runs),
            "images_per_s": statistics.median(r["images_per_s"] for r in runs),
            "final_top1": middle["final_top1"], "best_top1": middle["best_top1"], "compile": middle["compile"]}


def judge(timm: dict | None, cvtool: dict | None, top1_slack: float) -> dict:
    if not (timm and cvtool):
        return {"result": "NO RESULT"}
    wall_ratio = cvtool["wall_s"] / timm["wall_s"]
    top1_diff = cvtool["final_top1"] - timm["final_top1"]
    passed = wall_ratio <= TARGET_RATIO and top1_diff >= -top1_slack
    return {"wall_ratio": wall_ratio, "rate_ratio": cvtool["images_per_s"] / timm["images_per_s"],
            "top1_diff": top1_diff, "result": "PASS" if passed else "FAIL"}


def print_table(timm: dict | None, cvtool: dict | None, verdict: dict) -> None:
    rows = [("", "wall s", "outside epochs s", "images/s", "val top-1 %", "best top-1 %", "notes")]
    for name, result in (("timm", timm), ("cvtool", cvtool)):
        if result is None:
            rows.append((name, "failed", "-", "-", "-", "-", "see its log"))
            continue
        rows.append((name, f"{result['wall_s']:.1f}", f"{result['outside_epochs_s']:.1f}",
                     f"{result['images_per_s']:.0f}", f"{result['final_top1']:.2f}",
                     f"{result['best_top1']:.2f}", f"compile {result['compile']}"))
    ratio = (f"{verdict['wall_ratio']:.3f}", "", f"{verdict['rate_ratio']:.2f}x", f"{verdict['top1_diff']:+.2f}",
             "") if "wall_ratio" in verdict else ("-", "", "-", "-", "")
    rows.append(("cvtool/timm", *ratio, f"target wall <= {TARGET_RATIO} x timm: {verdict['result']}"))
    widths = [max(len(row[i]) for row in rows) for i in range(len(rows[0]))]
    print()
    for row in rows:
        print("  ".join(cell.ljust(width) for cell, width in zip(row, widths, strict=True)).rstrip())


# ------------------------------------------------------------------------------------- main


def parse_args() -> argparse.Namespace:
    scratch = Path(tempfile.gettempdir())
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    add = parser.add_argument
    add("--data", type=Path, default=scratch / "side-by-side-data", help="image folder to write (once) and train on")
    add("--work", type=Path, default=scratch / "side-by-side-runs", help="logs (<tool>-<n>.log) and run folders")
    add("--json", type=Path, help="write every figure here")
    add("--train-images", type=int, default=20480, help="best a multiple of --batch (no short last batch)")
    add("--val-images", type=int, default=2048)
    add("--test-images", type=int, default=0, help="a test split too (cvtool evaluates it after training; timm does not)")
    add("--classes", type=int, default=100)
    add("--image-size", type=int, default=IMAGE_SIZE, help="pixels of the generated images (and both tools' input)")
    add("--epochs", type=int, default=8)
    add("--batch", type=int, default=256)
    add("--lr", type=float, default=0.1)
    add("--weight-decay", type=float, default=5e-5)
    add("--workers", type=int, default=min(16, os.cpu_count() or 1), help="timm's loader processes")
    add("--device", choices=["cuda", "cpu"], default="cuda")
    add("--precision", choices=["bf16", "fp32"], default="bf16", help="autocast dtype of both tools")
    add("--cvtool-compile", choices=["auto", "false"], default="auto", help="cvtool's train.compile (auto: on CUDA)")
    add("--cvtool-arch", default="timm/resnet18", help="timm/resnet18 (timm's model) or resnet18 (torchvision's)")
    add("--cvtool-workers", type=int, help="cvtool's data.num_workers (default: the recipe's, 0)")
    add("--timm-sched", choices=["updates", "epochs"], default="updates", help="timm's cosine steps per update (as cvtool's does) or per epoch")
    add("--timm-compile", action="store_true", help="give timm --torchcompile too (default: off)")
    add("--top1-slack", type=float, default=0.0, help="points of top-1 cvtool may trail timm by and pass")
    add("--repeats", type=int, default=1, help="runs per tool, alternating timm and cvtool")
    add("--python", default=sys.executable, help="the interpreter of both commands")
    return parser.parse_args()


def main() -> int:
    args = parse_args()
    if not (TIMM_SOURCE / "train.py").is_file():
        sys.exit(f"side_by_side: no {TIMM_SOURCE / 'train.py'}: export a timm release's train.py and timm/ there")
    started = time.perf_counter()
    splits = {"train": args.train_images, "val": args.val_images}
    if args.test_images:
        splits["test"] = args.test_images
    data_s = make_dataset(args.data, splits, args.classes, seed=0, image_size=args.image_size)
    print(f"side_by_side: data in {args.data} ({f'written in {data_s:.1f} s' if data_s else 'reused'})", flush=True)
    args.work.mkdir(parents=True, exist_ok=True)
    records = [measure(tool, args, repeat) for repeat in range(args.repeats) for tool in ("timm", "cvtool")]
    timm, cvtool = combine(records, "timm"), combine(records, "cvtool")
    verdict = judge(timm, cvtool, args.top1_slack)
    if args.json:
        settings = {key: str(value) if isinstance(value, Path) else value for key, value in vars(args).items()}
        timm_version = re.search(r"__version__ = '(.*?)'", (TIMM_SOURCE / "timm" / "version.py").read_text())
        settings["timm_source_version"] = timm_version[1] if timm_version else "?"
        report = {"settings": settings, "data_seconds": data_s, "timm": timm, "cvtool": cvtool, "verdict": verdict,
                  "runs": records, "total_seconds": time.perf_counter() - started}
        args.json.write_text(json.dumps(report, indent=2))
    print_table(timm, cvtool, verdict)
    return 0 if verdict["result"] == "PASS" else 1


if __name__ == "__main__":
    sys.exit(main())
