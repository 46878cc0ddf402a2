"""torch.onnx.export (dynamo) with its noise kept quiet, and its failures turned into one line
that names the layer the exporter could not translate."""

from __future__ import annotations

import contextlib
import io
import logging
import re
import warnings
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import torch
from torch import nn

from cvtool.errors import CvtoolError
from cvtool.model_card import INPUT_NAME, OUTPUT_NAME


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
