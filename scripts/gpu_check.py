"""`make gpu-check`: the CUDA paths of cvtool end to end, in one run of at most 8 minutes on one GPU.

1. tests/test_gpu.py (amp dtype per compute capability, no host sync per step, fp16 resume exact,
   DDP over nccl with EMA, compile, export of a CUDA-trained checkpoint, device-resident data, ...);
2. `cvtool bench train` for resnet18 at 64 px (batch 256) and efficientnet_b0 at 224 px decoded
   at 64 (batch 128), each in bf16 and fp32, each through the loader and with `data.on_device`;
3. with --side-by-side: timm's train.py and `cvtool train` on the same generated images
   (scripts/side_by_side.py; needs .bench/timm);
4. one summary table. Exit status: non-zero when a test or a bench fails (with --strict also
   when a target is missed); without CUDA the tests skip and the check says so and passes.

Benchmarks run with `train.compile=false` unless --compile auto: each compile costs tens of
seconds per process, which eight benchmark processes cannot afford inside the budget; the loader
/ ceiling ratio and the bf16 / fp32 ratio compare like with like either way.

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


def run_tests(log: Path, timeout: float) -> dict[str, int]:
    """pytest on tests/test_gpu.py; counts of passed, failed (errors included) and skipped tests."""
    report = log.with_suffix(".xml")
    cmd = [sys.executable, "-m", "pytest", "-q", "-rs", "-p", "no:cacheprovider", f"--junitxml={report}",
           "tests/test_gpu.py"]
    try:
        import pytest_timeout  # noqa: F401  (a hung collective fails its test instead of the check)

        cmd.insert(3, "--timeout=90")
    except ImportError:
        pass
    with log.open("w") as out:
        try:
            code = subprocess.run(cmd, stdout=out, stderr=subprocess.STDOUT, check=False, timeout=timeout).returncode
        except subprocess.TimeoutExpired:
            code = -1
    print(log.read_text()[-3000:])
    counts = {"passed": 0, "failed": 0, "skipped": 0}
    if report.is_file():
        suite = ElementTree.parse(report).getroot()
        suite = suite if suite.tag == "testsuite" else suite.find("testsuite")
        total = int(suite.get("tests", 0))
        counts["failed"] = int(suite.get("failures", 0)) + int(suite.get("errors", 0))
        counts["skipped"] = int(suite.get("skipped", 0))
        counts["passed"] = total - counts["failed"] - counts["skipped"]
    if code not in (0, 5) and counts["failed"] == 0:  # pytest itself failed (collection, usage, time-out)
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
    if timeout < 5:
        print("bench skipped: the check's budget is spent")
        return None
    try:
        done = subprocess.run(cmd, check=False, timeout=timeout, env={**os.environ, "COLUMNS": "160"})
    except subprocess.TimeoutExpired:
        print(f"bench timed out after {timeout:.0f} s (the check's budget)")
        return None
    return json.loads(out.read_text()) if done.returncode == 0 and out.is_file() else None


def run_side_by_side(out: Path, timeout: float, epochs: int) -> dict | None:
    cmd = [sys.executable, "scripts/side_by_side.py", "--json", str(out), "--epochs", str(epochs),
           "--cvtool-compile", "false"]
    print("$", " ".join(cmd), flush=True)
    try:
        subprocess.run(cmd, check=False, timeout=max(timeout, 1))
    except subprocess.TimeoutExpired:
        print(f"side-by-side timed out after {timeout:.0f} s")
    return json.loads(out.read_text()) if out.is_file() else None


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


def bench_rows(results: list[tuple[str, str, dict | None, dict | None]]) -> tuple[list[list[str]], int, int]:
    """Rows per model and data path: loader, ceiling, ratio, peak memory, bf16 / fp32 ceiling."""
    rows = [["benchmark", "data path", "loader img/s", "ceiling img/s", f"ratio (≥ {RATIO_TARGET})", "peak GiB",
             f"bf16/fp32 (≥ {BF16_TARGET:g}×)"]]
    failed = missed = 0
    for label, path, fast, fp32 in results:
        if fast is None or fp32 is None:
            failed += 1
        loader, ceiling, peak = figure(fast, "real loader"), figure(fast, "compute ceiling"), figure(fast, "peak GPU memory")
        ratio = loader / ceiling if loader and ceiling else None
        fp32_ceiling = figure(fp32, "compute ceiling")
        speedup = ceiling / fp32_ceiling if ceiling and fp32_ceiling else None
        missed += (ratio is not None and ratio < RATIO_TARGET and path == "on_device")
        missed += speedup is not None and speedup < BF16_TARGET
        rows.append([label, path, _num(loader, ",.0f"), _num(ceiling, ",.0f"), _mark(ratio, RATIO_TARGET),
                     _num(peak, ".2f"), _mark(speedup, BF16_TARGET)])
    return rows, failed, missed


def side_rows(report: dict | None) -> tuple[list[list[str]], int]:
    rows = [["side by side (resnet18, 64 px)", "wall s", "images/s", "val top-1 %", "result"]]
    if report is None or "verdict" not in report:
        return rows + [["no result", "-", "-", "-", "FAILED"]], 1
    for tool in ("timm", "cvtool"):
        result = report.get(tool)
        rows.append([tool, *(("failed", "-", "-") if result is None else (
            f"{result['wall_s']:.1f}", f"{result['images_per_s']:,.0f}", f"{result['final_top1']:.2f}")), ""])
    verdict = report["verdict"]
    ratio = verdict.get("wall_ratio")
    rows.append(["cvtool / timm", "-" if ratio is None else f"{ratio:.3f}", "", "",
                 f"{verdict['result']} (target ≤ 0.85, top-1 not lower)"])
    return rows, int(verdict["result"] != "PASS")


def _num(value: float | None, spec: str) -> str:
    return "FAILED" if value is None else format(value, spec)


def _mark(value: float | None, target: float) -> str:
    return "FAILED" if value is None else f"{value:.3f} {'pass' if value >= target else 'miss'}"


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--strict", action="store_true", help="also fail when a target is missed")
    parser.add_argument("--no-bench", action="store_true", help="run the tests only")
    parser.add_argument("--side-by-side", action="store_true", help="also run scripts/side_by_side.py (timm)")
    parser.add_argument("--epochs", type=int, default=6, help="side-by-side epochs")
    parser.add_argument("--compile", choices=["false", "auto"], default="false", help="train.compile of the benches")
    parser.add_argument("--tests-s", type=float, default=200, help="time cap of the GPU tests")
    parser.add_argument("--workers", type=int, default=min(8, os.cpu_count() or 1), help="data.num_workers")
    parser.add_argument("--budget", type=float, default=BUDGET_S, help="seconds for the whole check")
    parser.add_argument("--out", type=Path, help="folder for logs and JSON figures (default: a temporary one)")
    args = parser.parse_args(argv)
    start = time.perf_counter()
    import torch

    cuda = torch.cuda.is_available()
    out = args.out or Path(tempfile.mkdtemp(prefix="cvtool-gpu-check-"))
    out.mkdir(parents=True, exist_ok=True)
    counts = run_tests(out / "test_gpu.log", args.tests_s)
    results: list[tuple[str, str, dict | None, dict | None]] = []
    side = None
    left = lambda: args.budget - (time.perf_counter() - start)  # noqa: E731
    if cuda and args.side_by_side:
        side = run_side_by_side(out / "side_by_side.json", min(left(), 150), args.epochs)
    if cuda and not args.no_bench:
        ensure_data()
        for i, (label, recipe, sets) in enumerate(BENCHES):
            for path in ("on_device", "loader"):
                common = [*sets, f"data.on_device={'true' if path == 'on_device' else 'false'}",
                          f"train.compile={args.compile}"]
                fast = run_bench(recipe, common, out / f"bench{i}-{path}.json", left(), args.workers)
                fp32 = run_bench(recipe, [*common, "train.amp=none"], out / f"bench{i}-{path}-fp32.json", left(),
                                 args.workers)
                results.append((label, path, fast, fp32))
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
    if args.side_by_side and cuda:
        rows, side_missed = side_rows(side)
        print(table(rows))
        missed += side_missed
    if not cuda:
        print(f"no CUDA device: {counts['skipped']} GPU tests skipped")
    elif seconds > args.budget:
        print(f"over budget: {seconds:.0f} s > {args.budget:.0f} s")
        failed += 1
    print(f"logs: {out}")
    return 1 if failed or (args.strict and missed) else 0


if __name__ == "__main__":
    sys.exit(main())
