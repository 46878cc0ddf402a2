"""`cvtool bench predict`: inference figures of one model.

- onnxruntime against torch eager on the same model and batch (target >= 1.0);
- end-to-end `predict` (files -> CSV, session creation included) against the bare session running
  the same images already decoded and normalized (target >= 0.8);
- TTA with N passes against N plain passes on the same images (target <= 1.1).
"""

from __future__ import annotations

import re
import statistics
import tempfile
import time
from collections.abc import Callable
from pathlib import Path
from typing import Any

import numpy as np

from cvtool.bench.report import BenchReport, Figure
from cvtool.data.images import decode, normalize_batch
from cvtool.errors import CvtoolError
from cvtool.evaluation.tta import tta_outputs, tta_transforms
from cvtool.inference.export import export_onnx
from cvtool.inference.onnx_runtime import OnnxPredictor
from cvtool.inference.predict import predict
from cvtool.inference.submission import read_images
from cvtool.runs.model import load_model

SOURCE = re.compile(r"^(?P<path>.+) \(epoch \d+\)$")


def bench_predict(model: Path, *, batch_size: int = 64, images: Path | None = None, passes: int = 8,
                  repeats: int = 10, which: str = "best", tta_images: int = 256) -> BenchReport:
    """The three inference figures of an .onnx file (with the checkpoint it was exported from)
    or of a run dir / checkpoint (exported to a temporary .onnx first)."""

    if min(batch_size, passes, repeats, tta_images) < 1:
        raise CvtoolError("--batch-size, --passes, --repeats and --tta-images need at least 1")
    with tempfile.TemporaryDirectory(prefix="cvtool-bench-") as tmp:
        onnx_path, checkpoint = _resolve(Path(model), which, Path(tmp))
        predictor = OnnxPredictor(onnx_path)
        card = predictor.card
        if card.raw_input:
            raise CvtoolError(f"{onnx_path}: a --raw-input export; bench the normalized-input export")
        loaded = load_model(checkpoint, which, "cpu")
        folder = images or _default_images(loaded.recipe)
        items = read_images(folder).items
        if not items:
            raise CvtoolError(f"{folder}: no images")
        decoded = np.stack([decode(item.path, card.channels, card.input_size)[0] for item in items])
        figures, notes = _ort_vs_eager(predictor, loaded.model, batch_size, repeats)
        more, more_notes = _end_to_end(onnx_path, folder, predictor, decoded, batch_size, Path(tmp))
        figures += more
        notes += more_notes
        more, more_notes = _tta(loaded, decoded[:tta_images], passes, batch_size)
    notes.insert(0, f"{onnx_path.name} ({card.recipe_name}, {card.image_size} px) from {checkpoint}; "
                    f"{len(items)} images of {folder}; batch {batch_size}")
    return BenchReport(f"bench predict {model}", figures + more, notes + more_notes)


def _resolve(model: Path, which: str, tmp: Path) -> tuple[Path, Path]:
    """(the .onnx file, the checkpoint / run dir it comes from)."""
    if model.suffix.lower() == ".onnx":
        source = SOURCE.match(OnnxPredictor(model).card.source)
        checkpoint = Path(source["path"]) if source else None
        if checkpoint is None or not checkpoint.is_file():
            raise CvtoolError(f"{model}: the checkpoint it was exported from ({checkpoint}) is not here; "
                              "give the run directory instead")
        return model, checkpoint

    return export_onnx(model, tmp / "model.onnx", which=which).path, model


def _default_images(recipe: Any) -> Path:
    data = recipe.data
    for split in (data.test, data.val):
        folder = Path(data.root) / split if split else None
        if data.format == "folder" and folder is not None and folder.is_dir():
            return folder
    raise CvtoolError("bench predict: give --images DIR (the recipe's test/val split is not a folder here)")


def _timed(run: Callable[[], Any]) -> float:
    start = time.perf_counter()
    run()
    return time.perf_counter() - start


def _ort_vs_eager(predictor: Any, model: Any, batch_size: int, repeats: int) -> tuple[list[Figure], list[str]]:
    """Median images/s of one batch, onnxruntime and torch eager alternating."""
    import torch

    card = predictor.card
    feed = np.random.default_rng(0).standard_normal((batch_size, card.channels, card.input_size, card.input_size),
                                                    dtype=np.float32)
    tensor = torch.from_numpy(feed)
    model.eval()

    def ort() -> None:
        predictor.session.run([card.output_name], {card.input_name: feed})

    def eager() -> None:
        with torch.inference_mode():
            model(tensor)

    rates: dict[str, list[float]] = {"ort": [], "eager": []}
    for _ in range(2):  # blocks, not alternating batches: onnxruntime's threads spin on after a run
        for name, run in (("ort", ort), ("eager", eager)):
            run(), run()
            rates[name].append(batch_size / statistics.median(_timed(run) for _ in range(repeats)))
            time.sleep(0.2)
    ort_ips, eager_ips = max(rates["ort"]), max(rates["eager"])
    figures = [Figure("onnxruntime", ort_ips, unit="images/s"),
               Figure("torch eager", eager_ips, unit="images/s"),
               Figure("onnxruntime / torch eager", ort_ips / eager_ips, 1.0, unit="x")]
    return figures, [f"{predictor.describe()}; torch {torch.get_num_threads()} threads; "
                     f"median of {repeats} batches per block, best of 2 blocks per engine"]


def _end_to_end(onnx_path: Path, folder: Path, predictor: Any, decoded: np.ndarray, batch_size: int,
                tmp: Path) -> tuple[list[Figure], list[str]]:
    """`predict` files -> CSV (a fresh process's work: session, decoding, CSV) vs session.run alone."""

    card = predictor.card
    batches = [normalize_batch(decoded[i:i + batch_size], card.mean, card.std)
               for i in range(0, len(decoded), batch_size)]

    def bare() -> None:
        for feed in batches:
            predictor.session.run([card.output_name], {card.input_name: feed})

    def end_to_end() -> None:
        predict(onnx_path, folder, tmp / "bench.csv", batch_size=batch_size)

    bare()
    bare_times, e2e_times = [], []
    for _ in range(3):
        for run, times in ((bare, bare_times), (end_to_end, e2e_times)):
            times.append(_timed(run))
            time.sleep(0.2)
    bare_ips, e2e_ips = len(decoded) / min(bare_times), len(decoded) / min(e2e_times)
    figures = [Figure("bare session.run", bare_ips, unit="images/s"),
               Figure("end-to-end predict, files -> CSV", e2e_ips, unit="images/s"),
               Figure("end-to-end / bare session", e2e_ips / bare_ips, 0.8, unit="x")]
    return figures, [f"end-to-end: {len(decoded)} files; best of 3, session creation included"]


def _tta(loaded: Any, images: np.ndarray, passes: int, batch_size: int) -> tuple[list[Figure], list[str]]:
    """tta_outputs with N passes of the recipe's TTA transforms vs N plain passes run back to back
    (runs of the same length, so other load weighs on both alike); two rounds, best of each."""

    def plain() -> None:
        for _ in range(passes):
            tta_outputs(loaded, images, 1, transforms=[], batch_size=batch_size)

    def tta() -> None:
        tta_outputs(loaded, images, passes, batch_size=batch_size)

    tta_outputs(loaded, images, 1, transforms=[], batch_size=batch_size)
    plain_times, tta_times = [], []
    for _ in range(2):
        plain_times.append(_timed(plain))
        tta_times.append(_timed(tta))
    names = [next(iter(spec)) for spec in tta_transforms(loaded.recipe)] or ["none"]
    figures = [Figure("plain pass (torch)", passes * len(images) / min(plain_times), unit="images/s"),
               Figure(f"TTA {passes} passes / {passes} plain", min(tta_times) / min(plain_times), 1.1,
                      unit="x", higher_is_better=False)]
    return figures, [f"TTA: {len(images)} images, transforms {', '.join(names)}; {passes} plain passes vs one "
                     f"{passes}-pass TTA, best of 2 rounds"]
