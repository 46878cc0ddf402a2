"""Freezing (`model.freeze`): train the head, optionally the last backbone layers, unfreeze later."""

from __future__ import annotations

from torch import nn

from cvtool.models.heads import head_names
from cvtool.recipe.model_config import FreezeConfig


def _in_head(name: str, head: tuple[str, ...]) -> bool:
    return any(name == part or name.startswith(part + ".") for part in head)


def backbone_layers(model: nn.Module) -> list[nn.Module]:
    """Backbone modules that own parameters directly (Conv, Linear, norm layers, ...), in module order."""
    head = head_names(model)
    return [
        module
        for name, module in model.named_modules()
        if not _in_head(name, head) and any(True for _ in module.parameters(recurse=False))
    ]


def set_trainable(model: nn.Module, cfg: FreezeConfig | None, epoch: int) -> None:
    """Set requires_grad for `epoch` (1-based); call at the start of every epoch.

    With `backbone: true` only the head (recorded by build_model) and the last `unfreeze_last`
    backbone layers train; from `unfreeze_at_epoch` on, and without a freeze config, everything
    trains. Frozen BatchNorm layers still update their running statistics in train mode: with
    `batchnorm: eval` (the default) the training step calls `frozen_batchnorm_eval(model)` right
    after every `model.train()`; `batchnorm: train` leaves them in train mode.
    """
    unfrozen = cfg is not None and cfg.unfreeze_at_epoch is not None and epoch >= cfg.unfreeze_at_epoch
    if cfg is None or not cfg.backbone or unfrozen:
        model.requires_grad_(True)
        return
    head = head_names(model)
    if not head:
        raise ValueError("set_trainable needs a model from build_model (no recorded head)")
    model.requires_grad_(False)
    for name in head:
        model.get_submodule(name).requires_grad_(True)
    layers = backbone_layers(model)
    for layer in layers[len(layers) - cfg.unfreeze_last :] if cfg.unfreeze_last else []:
        for parameter in layer.parameters(recurse=False):
            parameter.requires_grad_(True)


def frozen_batchnorm_eval(model: nn.Module) -> None:
    """Put BatchNorm layers whose parameters are all frozen into eval mode.

    Their running mean/var then stay as loaded. Call after every `model.train()` (which switches
    them back); works through DDP / torch.compile wrappers.
    """
    for module in model.modules():
        if isinstance(module, nn.modules.batchnorm._BatchNorm):
            parameters = list(module.parameters(recurse=False))
            if parameters and not any(p.requires_grad for p in parameters):
                module.eval()


def count_parameters(model: nn.Module) -> tuple[int, int]:
    """(total, trainable) parameter counts."""
    total = sum(p.numel() for p in model.parameters())
    trainable = sum(p.numel() for p in model.parameters() if p.requires_grad)
    return total, trainable
