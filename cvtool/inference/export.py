"""`cvtool export --onnx`: a checkpoint -> a self-describing, self-checked .onnx file.

torch.export-based exporter (`dynamo=True`), dynamic batch axis, input `images`, output `logits`
(raw: the Task applies its activation in numpy on both predict paths, so one decoding code serves
.onnx and checkpoint alike; `metadata_props` say which activation). With `raw_input` the graph
takes uint8 N x H x W x C of any size and resizes + normalizes itself.

Every export checks itself before it is written: `onnx.checker`, then onnxruntime against
PyTorch on real images of the recipe's data at batch sizes 1 and 7. The file is written
atomically (temp file beside it, then a rename) only when the check passes.
"""

from __future__ import annotations

import math
import time
from collections.abc import Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np
import torch
from torch import nn

from cvtool.data.formats import read_dataset
from cvtool.data.images import decode, normalize_batch
from cvtool.ensembles.module import ensemble_module
from cvtool.errors import BadImageError, CvtoolError
from cvtool.fileio import atomic_open
from cvtool.inference.input_models import RawInputModel, ResizedInputModel
from cvtool.inference.onnx_export import opset_of, to_onnx
from cvtool.inference.onnx_runtime import create_session
from cvtool.model_card import INPUT_NAME, OUTPUT_NAME, ModelCard, card_from_checkpoint
from cvtool.recipe.fields import MAX_IMAGE_SIDE
from cvtool.runs.lock import hold_for_writing
from cvtool.runs.model import load_model

PARITY_BATCHES = (1, 7)
PARITY_SPLITS = ("val", "test", "train")  # real images from the first split the recipe has


class ParityError(CvtoolError):
    """onnxruntime disagrees with PyTorch beyond the tolerance."""


@dataclass
class ParityCheck:
    batch: int
    input_shape: tuple[int, ...]
    max_abs_diff: float


@dataclass
class ExportReport:
    path: Path
    card: ModelCard
    opset: int
    parity: list[ParityCheck]
    tolerance: float
    images_from: str
    size_bytes: int
    seconds: float


def export_onnx(target: str | Path, out: str | Path, *, which: str = "best", opset: int | None = None,
                image_size: int | None = None, raw_input: bool = False, tolerance: float = 1e-4) -> ExportReport:
    """Export a run dir / checkpoint to `out`; raises ParityError (nothing written) when
    onnxruntime and PyTorch differ by more than `tolerance` on real images."""
    start = time.perf_counter()
    out = check_options(out, tolerance, image_size, opset)
    loaded = load_model(target, which, "cpu")
    if image_size is not None and image_size != loaded.meta.image_size:
        _check_export_size(loaded, image_size)
    card = card_from_checkpoint(loaded.meta, loaded.recipe, f"{loaded.path} (epoch {loaded.epoch})")
    card = card.with_export(image_size, raw_input)
    module = loaded.model
    if raw_input:
        module = RawInputModel(loaded.model, card.mean, card.std, card.image_size, card.resize)
    elif card.input_size != card.image_size:
        module = ResizedInputModel(loaded.model, card.image_size)
    return export_module(module, card, loaded.recipe, out, opset, raw_input, tolerance, start)


def export_ensemble(models: str | Path | Sequence[str | Path], out: str | Path, *, which: str = "best",
                    weights: Sequence[float] | None = None, opset: int | None = None, image_size: int | None = None,
                    raw_input: bool = False, tolerance: float = 1e-4) -> ExportReport:
    """A fold set (or several runs) -> one self-checked .onnx averaging the members in the graph
    (`ensembles.module`); checked like a single model."""
    start = time.perf_counter()
    out = check_options(out, tolerance, image_size, opset)
    module: nn.Module
    module, card, recipe = ensemble_module(models, which, weights)
    card = card.with_export(image_size, raw_input)
    if raw_input:
        module = RawInputModel(module, card.mean, card.std, card.image_size)
    return export_module(module, card, recipe, out, opset, raw_input, tolerance, start)


def export_module(module: nn.Module, card: ModelCard, recipe: Any, out: Path, opset: int | None, raw_input: bool,
                  tolerance: float, start: float) -> ExportReport:
    """Export `module` with `card` as metadata, check it on the recipe's images, write it to `out`."""
    module.eval()
    proto = to_onnx(module, _example(card), opset, raw_input)
    proto.doc_string = f"cvtool {card.task} model from {card.source}; input {card.input_layout}"
    _set_metadata(proto, card.to_metadata())
    _check_graph(proto)
    data = proto.SerializeToString()
    images, images_from = parity_images(recipe, card)
    checks = parity(module, create_session(data), images, card)
    worst = max(checks, key=lambda c: c.max_abs_diff)
    if not worst.max_abs_diff <= tolerance:
        raise ParityError(f"parity check failed: onnxruntime vs PyTorch max abs difference {worst.max_abs_diff:.3g} "
                          f"at batch {worst.batch} exceeds --tolerance {tolerance:g}; {out} not written")
    with atomic_open(out, "wb") as handle:
        handle.write(data)
    return ExportReport(out, card, opset_of(proto), checks, tolerance, images_from, len(data), time.perf_counter() - start)


def _check_export_size(loaded: Any, image_size: int) -> None:
    """A head that flattens the feature map (`pool: flatten`) fixes the input size it was trained at."""
    from cvtool.models.surgery import check_input_size

    meta = loaded.meta
    try:
        check_input_size(loaded.model, loaded.recipe.model.arch, meta.channels, image_size, meta.num_outputs,
                         key="--image-size")
    except CvtoolError as exc:
        # a Linear meeting more (or fewer) features than it was built for; anything else (too small
        # for the backbone) the message already says
        if not any(text in str(exc) for text in ("reduction dim", "cannot be multiplied")):
            raise
        raise CvtoolError(f"--image-size {image_size}: this model's head flattens the feature map, which fixes "
                          f"its input at the {meta.image_size} px it was trained at; export without --image-size"
                          ) from None


def check_options(out: str | Path, tolerance: float, image_size: int | None, opset: int | None) -> Path:
    """The output path, once the options are known to be usable (inside a run: its lock held)."""
    out = _check_out(out)
    if tolerance <= 0 or (image_size is not None and image_size < 1) or (opset is not None and opset < 1):
        raise CvtoolError("--tolerance, --image-size and --opset must be positive")
    if not math.isfinite(tolerance):  # nan fails every comparison, inf passes any: neither checks parity
        raise CvtoolError(f"--tolerance {tolerance}: the parity check needs a finite tolerance")
    if image_size is not None and image_size > MAX_IMAGE_SIDE:
        raise CvtoolError(f"--image-size {image_size}: at most {MAX_IMAGE_SIDE} px")
    if opset is not None and (onnx := _onnx()) is not None:
        if opset > onnx.defs.onnx_opset_version():
            raise CvtoolError(f"--opset {opset}: the installed onnx {onnx.__version__} knows opsets up to "
                              f"{onnx.defs.onnx_opset_version()}")
    hold_for_writing([out], "export")
    return out


def _onnx() -> Any:
    try:
        import onnx
    except ImportError:  # the export itself says how to install it
        return None
    return onnx


def _check_out(out: str | Path) -> Path:
    out = Path(out)
    if out.suffix.lower() != ".onnx":
        raise CvtoolError(f"--onnx: {out} must end in .onnx (predict recognizes ONNX models by it)")
    if out.is_dir():
        raise CvtoolError(f"--onnx: {out} is a folder")
    return out


def _example(card: ModelCard) -> torch.Tensor:
    """A batch of 2 (a batch of 1 would be specialized); raw input at a non-model size."""
    if card.raw_input:
        return torch.zeros(2, card.image_size + 3, card.image_size + 5, card.channels, dtype=torch.uint8)
    return torch.zeros(2, card.channels, card.input_size, card.input_size)


def _set_metadata(proto: Any, metadata: dict[str, str]) -> None:
    import onnx

    kept = {p.key: p.value for p in proto.metadata_props if p.key not in metadata}
    del proto.metadata_props[:]
    onnx.helper.set_model_props(proto, {**kept, **metadata})


def _check_graph(proto: Any) -> None:
    import onnx

    try:
        onnx.checker.check_model(proto, full_check=True)
    except (onnx.checker.ValidationError, onnx.shape_inference.InferenceError) as exc:
        raise CvtoolError(f"the exported graph fails onnx.checker: {str(exc).strip().splitlines()[0][:240]}") from None


def parity_images(recipe: Any, card: ModelCard, count: int = max(PARITY_BATCHES)) -> tuple[list[Path], str]:
    """Up to `count` readable images of the recipe's val split (else test, else train)."""

    try:
        info = read_dataset(recipe.data, recipe.task, recipe.seed)
    except CvtoolError as exc:
        raise CvtoolError(f"the export self-check needs real images from the recipe's data: {exc}") from None
    for name in PARITY_SPLITS:
        split = info.splits.get(name)
        if split is None:
            continue
        paths = [p for p in split.paths[: count * 4] if _readable(p, card.channels)][:count]
        if paths:
            return paths, f"{len(paths)} {name} image{'s' if len(paths) > 1 else ''} of {recipe.data.root}"
    raise CvtoolError(f"the export self-check found no readable images in {recipe.data.root}")


def _readable(path: Path, channels: int) -> bool:
    try:
        decode(path, channels, 4)
    except BadImageError:
        return False
    return True


def parity(module: nn.Module, session: Any, paths: list[Path], card: ModelCard) -> list[ParityCheck]:
    """Max abs difference of the outputs, onnxruntime vs PyTorch, per batch size in PARITY_BATCHES.
    Raw input: batch 1 at the image's own size, larger batches at 2 x image_size + 1."""
    checks = []
    for batch in PARITY_BATCHES:
        chosen = [paths[i % len(paths)] for i in range(batch)]
        size = None if batch == 1 else card.image_size * 2 + 1
        uint8 = np.stack([(decode(p, card.channels, size) if card.raw_input  # raw: the graph does the frame
                           else decode(p, card.channels, card.input_size, card.resize))[0] for p in chosen])
        feed = uint8 if card.raw_input else normalize_batch(uint8, card.mean, card.std)
        try:
            (onnx_out,) = session.run([OUTPUT_NAME], {INPUT_NAME: feed})
        except Exception as exc:  # onnxruntime's own exception types
            raise CvtoolError(f"onnxruntime cannot run the exported model on {feed.shape}: "
                              f"{str(exc).strip().splitlines()[0][:240]}") from None
        with torch.inference_mode():
            torch_out = module(torch.from_numpy(feed)).float().numpy()
        checks.append(ParityCheck(batch, tuple(feed.shape), float(np.abs(onnx_out - torch_out).max())))
    return checks
