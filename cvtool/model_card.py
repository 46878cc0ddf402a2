"""What inference needs to know about a model, from a checkpoint or from an .onnx file.

An exported .onnx file carries its card in `metadata_props` (one key per field, JSON-encoded
values), so it describes itself: a client needs onnxruntime and these keys, nothing else.
Torch-free: the ONNX predict path imports this module.
"""

from __future__ import annotations

import json
from collections.abc import Mapping, Sequence
from dataclasses import MISSING, asdict, dataclass, fields, replace
from typing import Any

import numpy as np

from cvtool import __version__
from cvtool.errors import CvtoolError


@dataclass(frozen=True)
class Labels:
    """What decoding needs beyond the outputs."""

    class_names: Sequence[str] = ()
    target_names: Sequence[str] = ()
    thresholds: np.ndarray | float = 0.5  # multilabel / binary decision thresholds


FORMAT = "cvtool-onnx/1"
# Input layouts: `images` is either ready for the network or raw pixels the graph prepares itself.
NORMALIZED = "NCHW float32, normalized (x / 255 - mean) / std, H = W = image_size"
RAW = "NHWC uint8, any H x W; resized (bilinear, antialiased) to image_size and normalized in the graph"
# With `resize` crop or pad, a RAW graph first crops / zero-pads each image to its model frame (cvtool.tasks.frame).
INPUT_NAME = "images"
OUTPUT_NAME = "logits"
OUTPUT_DOC = "raw model outputs; apply the task's activation (multiclass softmax, binary/multilabel sigmoid, keypoints none: x/y in [-1, 1] of the image extent)"
CALIBRATED_DOC = "; calibrated: the graph already divides them by `temperature` (cvtool evaluate --calibrate)"


@dataclass(frozen=True)
class ModelMeta:
    """What inference needs besides the weights; stored in every checkpoint."""

    task: str
    class_names: list[str]
    target_names: list[str]
    mean: list[float]
    std: list[float]
    image_size: int
    channels: int
    num_outputs: int
    thresholds: list[float] | None = None  # multilabel/binary, tuned by `cvtool evaluate`
    flip_pairs: list[list[int]] | None = None
    # the training loss's weights, so that `cvtool evaluate` reports the loss training reported
    class_weights: list[float] | None = None
    pos_weight: float | None = None
    class_ids: list[str] | None = None  # Tiny ImageNet's wnids beside the readable class names
    resize: str = "squash"  # data.resize: squash | crop | pad (cvtool.tasks.frame)
    decode_size: int | None = None  # images are decoded at this size, then resized to image_size
    # `cvtool evaluate --calibrate`: logits are divided by it (one value, or one per output)
    temperature: list[float] | None = None
    # the epoch whose weights `thresholds` were tuned on; another epoch's checkpoint (a resumed
    # run carries them on) holds them stale
    thresholds_epoch: int | None = None

    @property
    def input_size(self) -> int:
        """The size clients decode images at (what the exported graph or the checkpoint takes)."""
        return self.decode_size or self.image_size

    def labels(self, default_threshold: float = 0.5) -> Labels:
        """What the task needs to turn outputs into decisions and submission cells."""
        values = self.thresholds if self.thresholds is not None else default_threshold
        return Labels(list(self.class_names), list(self.target_names), np.asarray(values, dtype=np.float32))

    def to_dict(self) -> dict[str, Any]:
        return dict(self.__dict__)


@dataclass(frozen=True)
class ModelCard(ModelMeta):
    """A checkpoint's ModelMeta plus what a client of the exported file needs."""

    default_threshold: float = 0.5  # used when `thresholds` is None
    recipe_name: str = ""
    image_column: str = "image"  # the training CSV's image column (a default for predict)
    image_extension: str = ""
    images_dir: str = "images"  # the training CSV's image folder, relative to the CSV
    input_layout: str = NORMALIZED
    input_name: str = INPUT_NAME
    output_name: str = OUTPUT_NAME
    output_doc: str = OUTPUT_DOC
    cvtool_version: str = __version__
    source: str = ""  # checkpoint the model came from, with its epoch
    format: str = FORMAT

    @property
    def raw_input(self) -> bool:
        return self.input_layout == RAW

    def labels(self, default_threshold: float | None = None) -> Labels:
        """Labels with the stored thresholds, else this card's default threshold."""
        return super().labels(self.default_threshold if default_threshold is None else default_threshold)

    def with_export(self, image_size: int | None, raw_input: bool) -> ModelCard:
        """The card of an export at `image_size` with the chosen input layout."""
        return replace(self, image_size=image_size or self.image_size, input_layout=RAW if raw_input else NORMALIZED)

    def to_metadata(self) -> dict[str, str]:
        """metadata_props: every field under its own key, values JSON-encoded."""
        return {key: json.dumps(value) for key, value in asdict(self).items()}

    @classmethod
    def from_metadata(cls, props: Mapping[str, str], source: str) -> ModelCard:
        """Parse metadata_props written by `to_metadata`; CvtoolError when they are not cvtool's."""
        if "format" not in props:
            raise CvtoolError(f"{source}: no cvtool metadata in this .onnx file (export it with `cvtool export`)")
        values: dict[str, Any] = {}
        for field in fields(cls):
            if field.name not in props:
                if field.default is not MISSING:  # optional key: keep its default
                    continue
                raise CvtoolError(f"{source}: metadata key '{field.name}' is missing")
            try:
                values[field.name] = json.loads(props[field.name])
            except json.JSONDecodeError:
                raise CvtoolError(f"{source}: metadata key '{field.name}' is not JSON: {props[field.name][:60]!r}") from None
        if values["format"] != FORMAT:
            raise CvtoolError(f"{source}: metadata format {values['format']!r}; this cvtool reads {FORMAT!r}")
        return cls(**values)


def card_from_checkpoint(meta: Any, recipe: Any, source: str = "") -> ModelCard:
    """The card of a loaded checkpoint: its ModelMeta plus what its Recipe says about inputs."""
    return ModelCard(
        **meta.to_dict(),
        default_threshold=float(recipe.evaluate.threshold),
        recipe_name=recipe.name, image_column=recipe.data.image_column,
        image_extension=recipe.data.image_extension, images_dir=recipe.data.images_dir, source=source,
        output_doc=OUTPUT_DOC + (CALIBRATED_DOC if meta.temperature else ""),
    )
