"""`build_model`: architecture → pretrained weights → head → input channels → surgery."""

from __future__ import annotations

from torch import nn

from cvtool.models.heads import replace_head
from cvtool.models.pretrained import load_pretrained, record_weights, resolve_weights
from cvtool.models.registry import OWN_ARCHS, check_arch
from cvtool.models.shakedrop import apply_shakedrop
from cvtool.models.surgery import adapt_input_channels, apply_small_input, check_input_size
from cvtool.models.timm import build_timm, is_timm
from cvtool.models.torchvision import build_torchvision
from cvtool.models.weights import ensure_cached
from cvtool.recipe.schema import ModelConfig


def build_model(cfg: ModelConfig, num_outputs: int, channels: int, image_size: int) -> nn.Module:
    """The model for the `model` recipe section, with `num_outputs` outputs.

    Order: architecture (torchvision's or timm's by name, or cvtool's own) → `pretrained` (a
    local file, or published weights from the torch / Hugging Face cache, downloaded once; timm
    loads its own while building) → new head (`dropout`, `head`) → first conv for `channels` →
    `small_input` → `shakedrop` → a shape check at `image_size`. The head's module names are
    recorded for `set_trainable`, which the engine calls each epoch for `model.freeze`;
    `sync_batchnorm` is the engine's job too.
    """
    check_arch(cfg.arch)
    spec = resolve_weights(cfg)
    if is_timm(cfg.arch):
        model = build_timm(cfg.arch, ensure_cached(spec) if spec else None, spec)
    elif cfg.arch in OWN_ARCHS:
        model = OWN_ARCHS.get(cfg.arch)(cfg, num_outputs, channels, image_size)
    else:
        model = build_torchvision(cfg.arch, image_size)
    if spec is not None and not is_timm(cfg.arch):
        load_pretrained(model, ensure_cached(spec), cfg.arch)
    record_weights(model, spec)
    replace_head(model, num_outputs, cfg.head, cfg.dropout, cfg.activation)
    adapt_input_channels(model, channels)
    if cfg.small_input is not None:
        apply_small_input(model, cfg.small_input, cfg.arch)
    if cfg.shakedrop is not None:
        apply_shakedrop(model, cfg.shakedrop, cfg.arch)
    check_input_size(model, cfg.arch, channels, image_size, num_outputs)
    return model
