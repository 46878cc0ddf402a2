"""`make gpu-check`: the CUDA paths of cvtool end to end, in one run of at most 8 minutes on one GPU.

1. tests/test_gpu.py (bf16 and fp16 with loss scaling, channels_last, torch.compile, DDP over nccl
   with one process, resume on the GPU, export of a CUDA-trained checkpoint, onnxruntime's CUDA
   provider when present, device-side augmentation, the side-stream feeder, bench on CUDA);
2. `cvtool bench train` for resnet18 at 64 px (batch 256) and efficientnet_b0 at 224 px decoded
   at 64 (batch 128), each in the default precision (bf16 where supported) and in fp32;
3. one summary table. Exit status: non-zero when a test or a bench fails (with --strict also
   when a target is missed); without CUDA the tests skip and the check says so and passes.

Run from the repository root with cvtool importable (scripts/gpu_check.sh sets that up).
"""

from __future__ import annotations

import argparse
import json
import os
import subprocess
import sys
import tempfile
import time
import xml.etree.ElementTree as ElementTree
from pathlib import Path

BUDGET_S = 480  # the limit for the whole check on one GPU
DATA = Path("data/bench-64")  # what `make bench` writes too: 7200 synthetic 64 px PNGs
BENCHES = [  # (label, recipe, --set overrides)
    ("resnet18 64 px, batch 256", "recipes/bench/resnet18_64.yaml", ["data.batch_size=256"]),
    ("efficientnet_b0 224 px (decoded at 64), batch 128", "recipes/bench/efficientnet_b0_64.yaml",
     ["data.image_size=224", "data.decode_size=64", "data.batch_size=128"]),
]
RATIO_TARGET, BF16_TARGET = 0.95, 2.0


def run_tests(log: Path) -> dict[str, int]:
    """pytest on tests/test_gpu.py; counts of passed, failed (errors included) and skipped tests."""
    report = log.with_suffix(".xml")
    cmd = [sys.executable, "-m", "pytest", "-q", "-rs", "-p", "no:cacheprovider", f"--junitxml={report}",
           "tests/test_gpu.py"]
    with log.open("w") as out:
        code = subprocess.run(cmd, stdout=out, stderr=subprocess.STDOUT, check=False).returncode
    print(log.read_text()[-3000:])
    counts = {"passed": 0, "failed": 0, "skipped": 0}
    if report.is_file():
        suite = ElementTree.parse(report).getroot()
        suite = suite if suite.tag == "testsuite" else suite.find("testsuite")
        total = int(suite.get("tests", 0))
        counts["failed"] = int(suite.get("failures", 0)) + int(suite.get("errors", 0))
        counts["skipped"] = int(suite.get("skipped", 0))
        counts["passed"] = total - counts["failed"] - counts["skipped"]
    if code not in (0, 5) and counts["failed"] == 0:  # pytest itself failed (collection, usage)
        counts["failed"] = 1
    return counts


def ensure_data() -> None:
    if not (DATA / "train").is_dir():
        subprocess.run([sys.executable, "-m", "cvtool", "data", "synthetic", str(DATA), "--n", "7200", "--size", "64",
                        "--seed", "0"], check=True, stdout=subprocess.DEVNULL)


def run_bench(recipe: str, sets: list[str], out: Path, timeout: float, workers: int) -> dict | None:
    """`cvtool bench train` in its own process (a crash stays its own); its --json figures, or None."""
    overrides = [*sets, "train.device=cuda", f"data.num_workers={workers}"]
    cmd = [sys.executable, "-m", "cvtool", "bench", "train", recipe, "--steps", "15", "--warmup", "3",
           "--rounds", "3", "--target", str(RATIO_TARGET), "--json", str(out)]
    for item in overrides:
        cmd += ["--set", item]
    print("$", " ".join(cmd), flush=True)
    try:
        done = subprocess.run(cmd, check=False, timeout=max(timeout, 1), env={**os.environ, "COLUMNS": "160"})
    except subprocess.TimeoutExpired:
        print(f"bench timed out after {timeout:.0f} s (the check's {BUDGET_S} s budget)")
        return None
    return json.loads(out.read_text()) if done.returncode == 0 and out.is_file() else None


def figure(report: dict | None, prefix: str) -> float | None:
    """The first figure whose name is `prefix` or starts with `prefix (`."""
    if report is None:
        return None
    return next((f["measured"] for f in report["figures"] if f["name"] == prefix or f["name"].startswith(prefix + " (")),
                None)


def table(rows: list[list[str]]) -> str:
    widths = [max(len(row[i]) for row in rows) for i in range(len(rows[0]))]
    lines = ["  ".join(cell.ljust(w) for cell, w in zip(row, widths, strict=True)).rstrip() for row in rows]
    lines.insert(1, "  ".join("-" * w for w in widths))
    return "\n".join(lines)


def bench_rows(results: list[tuple[str, dict | None, dict | None]]) -> tuple[list[list[str]], int, int]:
    """Rows per model: loader, ceiling, ratio, peak memory, default-precision / fp32 ceiling."""
    rows = [["benchmark", "loader img/s", "ceiling img/s", f"ratio (≥ {RATIO_TARGET})", "peak GiB",
             f"bf16/fp32 (≥ {BF16_TARGET:g}×)"]]
    failed = missed = 0
    for label, fast, fp32 in results:
        if fast is None or fp32 is None:
            failed += 1
        loader, ceiling, peak = figure(fast, "real loader"), figure(fast, "compute ceiling"), figure(fast, "peak GPU memory")
        ratio = loader / ceiling if loader and ceiling else None
        speedup = ceiling / figure(fp32, "compute ceiling") if ceiling and figure(fp32, "compute ceiling") else None
        missed += (ratio is not None and ratio < RATIO_TARGET) + (speedup is not None and speedup < BF16_TARGET)
        rows.append([label, _num(loader, ",.0f"), _num(ceiling, ",.0f"), _mark(ratio, RATIO_TARGET),
                     _num(peak, ".2f"), _mark(speedup, BF16_TARGET)])
    return rows, failed, missed


def _num(value: float | None, spec: str) -> str:
    return "FAILED" if value is None else format(value, spec)


def _mark(value: float | None, target: float) -> str:
    return "FAILED" if value is None else f"{value:.3f} {'pass' if value >= target else 'miss'}"


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--strict", action="store_true", help="also fail when a target is missed")
    parser.add_argument("--no-bench", action="store_true", help="run the tests only")
    parser.add_argument("--workers", type=int, default=min(8, os.cpu_count() or 1), help="data.num_workers")
    args = parser.parse_args(argv)
    start = time.perf_counter()
    import torch

    cuda = torch.cuda.is_available()
    out = Path(tempfile.mkdtemp(prefix="cvtool-gpu-check-"))
    counts = run_tests(out / "test_gpu.log")
    results: list[tuple[str, dict | None, dict | None]] = []
    if cuda and not args.no_bench:
        ensure_data()
        for i, (label, recipe, sets) in enumerate(BENCHES):
            left = BUDGET_S - (time.perf_counter() - start)
            fast = run_bench(recipe, sets, out / f"bench{i}.json", left, args.workers)
            left = BUDGET_S - (time.perf_counter() - start)
            fp32 = run_bench(recipe, [*sets, "train.amp=none"], out / f"bench{i}-fp32.json", left, args.workers)
            results.append((label, fast, fp32))
    seconds = time.perf_counter() - start
    print(f"\n== cvtool gpu-check: {torch.cuda.get_device_name() if cuda else 'no CUDA device'}, torch "
          f"{torch.__version__}, {time.strftime('%Y-%m-%d %H:%M UTC', time.gmtime())}, {seconds:.0f} s ==")
    print(table([["tests/test_gpu.py", "passed", "failed", "skipped"],
                 ["", str(counts["passed"]), str(counts["failed"]), str(counts["skipped"])]]))
    failed, missed = counts["failed"], 0
    if results:
        rows, bench_failed, missed = bench_rows(results)
        print(table(rows))
        failed += bench_failed
    if not cuda:
        print(f"no CUDA device: {counts['skipped']} GPU tests skipped")
    elif seconds > BUDGET_S:
        print(f"over budget: {seconds:.0f} s > {BUDGET_S} s")
        failed += 1
    print(f"logs: {out}")
    return 1 if failed or (args.strict and missed) else 0


if __name__ == "__main__":
    sys.exit(main())
