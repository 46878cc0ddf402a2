"""onnxruntime sessions and the .onnx predictor. Torch-free: `cvtool predict model.onnx` runs
with nothing but onnxruntime, numpy and PIL (a test runs it with torch made unimportable)."""

from __future__ import annotations

import os
from pathlib import Path
from typing import Any

import numpy as np

from cvtool.data.images import normalize_batch
from cvtool.errors import CvtoolError
from cvtool.model_card import ModelCard


def physical_cores() -> int:
    """Physical CPU cores available to this process (hyper-threads do not help onnxruntime)."""
    usable = len(os.sched_getaffinity(0)) if hasattr(os, "sched_getaffinity") else (os.cpu_count() or 1)
    try:
        text = Path("/proc/cpuinfo").read_text()
    except OSError:
        return max(1, usable)
    cores: set[tuple[str, str]] = set()
    physical = core = ""
    for line in text.splitlines() + [""]:
        key, _, value = line.partition(":")
        key = key.strip()
        if key == "physical id":
            physical = value.strip()
        elif key == "core id":
            core = value.strip()
        elif not key and core:
            cores.add((physical, core))
            physical = core = ""
    return max(1, min(usable, len(cores) or usable))


def create_session(model: str | Path | bytes, threads: int | None = None, gpu: bool = False) -> Any:
    """An onnxruntime session: all graph optimizations, intra-op threads = physical cores.
    `gpu`: on onnxruntime's CUDA provider when this onnxruntime has one (the onnxruntime-gpu
    package), the CPU provider as its fallback; export's parity check stays on the CPU, whose
    float32 arithmetic is what the check's tolerance is about.

    The one place sessions are made (export's self-check and predict), so tuning happens here.
    """
    import onnxruntime as ort

    options = ort.SessionOptions()
    options.graph_optimization_level = ort.GraphOptimizationLevel.ORT_ENABLE_ALL
    options.intra_op_num_threads = threads or physical_cores()
    options.inter_op_num_threads = 1
    options.execution_mode = ort.ExecutionMode.ORT_SEQUENTIAL
    options.log_severity_level = 3  # errors only
    source = model if isinstance(model, bytes) else str(model)
    try:
        return ort.InferenceSession(source, sess_options=options, providers=providers(gpu))
    except Exception as exc:  # onnxruntime raises its own exception types (Fail, InvalidGraph, ...)
        where = "the exported model" if isinstance(model, bytes) else str(model)
        raise CvtoolError(f"{where}: onnxruntime cannot load it ({_first_line(exc)})") from None


def providers(gpu: bool) -> list[str]:
    import onnxruntime as ort

    cuda = gpu and "CUDAExecutionProvider" in ort.get_available_providers()
    return ["CUDAExecutionProvider", "CPUExecutionProvider"] if cuda else ["CPUExecutionProvider"]


class OnnxPredictor:
    """uint8 N x H x W x C images at the card's image size -> raw outputs, via onnxruntime."""

    def __init__(self, path: str | Path, threads: int | None = None) -> None:
        path = Path(path)
        if not path.is_file():
            raise CvtoolError(f"{path}: ONNX model not found")
        self.path = path
        self.session = create_session(path, threads, gpu=True)
        self.card = ModelCard.from_metadata(self.session.get_modelmeta().custom_metadata_map, str(path))
        inputs = [i.name for i in self.session.get_inputs()]
        if inputs != [self.card.input_name]:
            raise CvtoolError(f"{path}: expected one input '{self.card.input_name}', the graph has {inputs}")

    def __call__(self, images: np.ndarray) -> np.ndarray:
        card = self.card
        feed = images if card.raw_input else normalize_batch(images, card.mean, card.std)
        try:
            (logits,) = self.session.run([card.output_name], {card.input_name: feed})
        except Exception as exc:  # onnxruntime's own exception types
            raise CvtoolError(f"{self.path}: onnxruntime failed on a batch of shape {feed.shape}: "
                              f"{_first_line(exc)}") from None
        return np.asarray(logits, dtype=np.float32)

    def describe(self) -> str:
        provider = self.session.get_providers()[0].removesuffix("ExecutionProvider")
        return f"{self.path} (onnxruntime {provider}, {self.session.get_session_options().intra_op_num_threads} threads)"


def _first_line(exc: BaseException) -> str:
    text = str(exc).strip()
    return text.splitlines()[0][:240] if text else type(exc).__name__
