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

import contextlib
import io
import logging
import re
import time
import warnings
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np
import torch
from torch import nn

from cvtool.data.formats import read_dataset
from cvtool.data.images import decode, normalize_batch
from cvtool.errors import BadImageError, CvtoolError
from cvtool.fileio import atomic_open
from cvtool.inference.onnx_runtime import create_session
from cvtool.model_card import INPUT_NAME, OUTPUT_NAME, ModelCard, card_from_checkpoint
from cvtool.runs.model import load_model

PARITY_BATCHES = (1, 7)
PARITY_SPLITS = ("val", "test", "train")  # real images from the first split the recipe has


class ParityError(CvtoolError):
    """onnxruntime disagrees with PyTorch beyond the tolerance."""


class RawInputModel(nn.Module):
    """uint8 N x H x W x C -> bilinear (antialiased, like PIL) resize to size x size ->
    (x / 255 - mean) / std -> the model. At H = W = size the resize is the identity, so images
    decoded at the model's size (what `cvtool predict` feeds) match the checkpoint path exactly;
    other sizes differ from PIL's uint8 resize by under one pixel level."""

    def __init__(self, model: nn.Module, mean: list[float], std: list[float], size: int) -> None:
        super().__init__()
        self.model, self.size = model, size
        self.register_buffer("mean", torch.tensor(mean, dtype=torch.float32).view(1, -1, 1, 1))
        self.register_buffer("std", torch.tensor(std, dtype=torch.float32).view(1, -1, 1, 1))

    def forward(self, images: torch.Tensor) -> torch.Tensor:
        x = images.permute(0, 3, 1, 2).float()
        x = nn.functional.interpolate(x, size=(self.size, self.size), mode="bilinear", align_corners=False,
                                      antialias=True)
        return self.model((x / 255.0 - self.mean) / self.std)


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
    out = _check_out(out)
    if tolerance <= 0 or (image_size is not None and image_size < 1) or (opset is not None and opset < 1):
        raise CvtoolError("--tolerance, --image-size and --opset must be positive")
    loaded = load_model(target, which, "cpu")
    card = card_from_checkpoint(loaded.meta, loaded.recipe, f"{loaded.path} (epoch {loaded.epoch})")
    card = card.with_export(image_size, raw_input)
    module = RawInputModel(loaded.model, card.mean, card.std, card.image_size) if raw_input else loaded.model
    module.eval()
    proto = to_onnx(module, _example(card), opset, raw_input)
    proto.doc_string = f"cvtool {card.task} model from {card.source}; input {card.input_layout}"
    _set_metadata(proto, card.to_metadata())
    _check_graph(proto)
    data = proto.SerializeToString()
    images, images_from = parity_images(loaded.recipe, card)
    checks = parity(module, create_session(data), images, card)
    worst = max(checks, key=lambda c: c.max_abs_diff)
    if not worst.max_abs_diff <= tolerance:
        raise ParityError(f"parity check failed: onnxruntime vs PyTorch max abs difference {worst.max_abs_diff:.3g} "
                          f"at batch {worst.batch} exceeds --tolerance {tolerance:g}; {out} not written")
    with atomic_open(out, "wb") as handle:
        handle.write(data)
    return ExportReport(out, card, opset_of(proto), checks, tolerance, images_from, len(data), time.perf_counter() - start)


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
    return torch.zeros(2, card.channels, card.image_size, card.image_size)


def to_onnx(module: nn.Module, example: torch.Tensor, opset: int | None, raw_input: bool) -> Any:
    """The ONNX ModelProto of `module` with a dynamic batch axis (and H, W for raw input);
    CvtoolError naming the operator / layer when it cannot be exported."""
    batch = torch.export.Dim("batch", min=1, max=1 << 20)
    axes = {0: batch}
    if raw_input:
        axes |= {1: torch.export.Dim("height", min=2, max=1 << 14), 2: torch.export.Dim("width", min=2, max=1 << 14)}
    options = {} if opset is None else {"opset_version": opset}
    try:
        with _quiet_exporter():
            program = torch.onnx.export(module, (example,), dynamo=True, input_names=[INPUT_NAME],
                                        output_names=[OUTPUT_NAME], dynamic_shapes=(axes,), verbose=False,
                                        external_data=False, **options)
    except Exception as exc:  # the exporter raises many types; every one becomes one line naming the cause
        raise CvtoolError(f"cannot export to ONNX: {explain_export_error(exc, module, example)}") from None
    proto = program.model_proto
    produced = opset_of(proto)
    if opset is not None and produced != opset:
        raise CvtoolError(f"--opset {opset}: the exporter could not convert the model to opset {opset} "
                          f"(it produced opset {produced}; the torch.export-based exporter starts at 18)")
    return proto


def opset_of(proto: Any) -> int:
    return next((o.version for o in proto.opset_import if o.domain in ("", "ai.onnx")), 0)


@contextlib.contextmanager
def _quiet_exporter() -> Iterator[None]:
    """The exporter's progress lines, warnings, logged tracebacks and partial graphs printed to
    stderr stay out of the CLI output; failures still surface as exceptions."""
    names = ("torch", "torch.onnx", "torch.export", "torch.fx", "torch._dynamo", "torch._export", "onnxscript", "onnx_ir")
    loggers = [logging.getLogger(name) for name in names]
    levels = [logger.level for logger in loggers]
    try:
        for logger in loggers:
            logger.setLevel(logging.CRITICAL + 1)
        with warnings.catch_warnings(), contextlib.redirect_stderr(io.StringIO()):
            warnings.simplefilter("ignore")
            yield
    finally:
        for logger, level in zip(loggers, levels, strict=True):
            logger.setLevel(level)


def explain_export_error(exc: BaseException, module: nn.Module, example: torch.Tensor) -> str:
    """One line: the operator without an ONNX translation and the layer using it, or the
    exporter's own summary of what failed."""
    chain, seen = [], exc
    while seen is not None and len(chain) < 10:
        chain.append(seen)
        seen = seen.__cause__ or seen.__context__
    for error in chain:
        found = re.search(r"OpOverload\(op='([^']+)', overload='([^']+)'\)", str(error))
        if found:
            op = found.group(1)
            layer = find_layer(module, example, op)
            return f"operator {op} has no ONNX translation{f' (used by layer {layer})' if layer else ''}"
    for error in chain:
        summary = re.search(r"## Exception summary\s*\n\s*\n?(.+)", str(error))
        if summary:
            call = re.search(r'raised this error:\s*\n\s*File "([^"]+)", line (\d+), in (\w+)\n\s*(.+)', str(error))
            where = f" (at {Path(call[1]).name}:{call[2]} in {call[3]}: {call[4].strip()})" if call else ""
            return _clean(summary.group(1))[:300] + where
    return _clean(f"{type(exc).__name__}: {str(exc).strip().splitlines()[0] if str(exc).strip() else ''}")


def find_layer(module: nn.Module, example: torch.Tensor, op: str) -> str:
    """'fc.1 (Wobble)': the innermost module calling `op`, from torch.export's module stack."""
    try:
        graph = torch.export.export(module, (example,), strict=False).graph
    except Exception:  # the layer is a nicety; the operator name is already known
        return ""
    for node in graph.nodes:
        if node.op == "call_function" and str(node.target).startswith(op):
            stack = node.meta.get("nn_module_stack") or {}
            if stack:
                path, cls = list(stack.values())[-1]
                name = getattr(cls, "__name__", str(cls).rsplit(".", 1)[-1].strip("'>"))
                return f"'{path.removeprefix('L__self__.')}' ({name})"
    return ""


def _clean(text: str) -> str:
    text = re.sub(r"\x1b\[[0-9;]*m", "", text).replace("<class '", "").replace("'>", "")
    return text.strip()[:400]


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
        uint8 = np.stack([decode(p, card.channels, size if card.raw_input else card.image_size)[0] for p in chosen])
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
