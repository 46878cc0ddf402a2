"""Classifier heads: swap an architecture's last layer for `num_outputs`, with dropout and an MLP.

The new head's module names are recorded on the model under `HEAD_ATTR`, so freezing can tell
the backbone from the head without knowing the architecture.
"""

from __future__ import annotations

from collections.abc import Sequence

import torch
from torch import nn

HEAD_ATTR = "cvtool_head"

ACTIVATIONS: dict[str, type[nn.Module]] = {
    "relu": nn.ReLU,
    "gelu": nn.GELU,
    "silu": nn.SiLU,
    "leaky_relu": nn.LeakyReLU,
    "elu": nn.ELU,
    "tanh": nn.Tanh,
}


def make_activation(name: str) -> nn.Module:
    """A fresh activation module for a `model.activation` name."""
    return ACTIVATIONS[name]()


def head_names(model: nn.Module) -> tuple[str, ...]:
    """Names of the modules `replace_head` installed (empty if the model has no recorded head)."""
    return tuple(getattr(model, HEAD_ATTR, ()))


def find_classifier(model: nn.Module) -> str:
    """Name of the final classification layer: timm's named classifier, the last nn.Linear, or
    SqueezeNet's final 1x1 conv."""
    from torchvision.models import SqueezeNet

    if isinstance(model, SqueezeNet):
        return "classifier.1"
    timm_classifier = (getattr(model, "pretrained_cfg", None) or {}).get("classifier")  # timm names its own
    if isinstance(timm_classifier, str) and isinstance(_submodule(model, timm_classifier), nn.Linear):
        return timm_classifier
    names = [name for name, module in model.named_modules() if isinstance(module, nn.Linear)]
    if not names:
        raise ValueError(f"{type(model).__name__} has no nn.Linear classifier to replace")
    return names[-1]


def _submodule(model: nn.Module, name: str) -> nn.Module | None:
    try:
        return model.get_submodule(name)
    except AttributeError:
        return None


def _previous_leaf(model: nn.Module, target: str) -> tuple[str, nn.Module] | None:
    """The leaf module registered just before `target` (what runs right before the classifier)."""
    previous = None
    for name, module in model.named_modules():
        if name == target:
            return previous
        if not any(True for _ in module.children()):
            previous = (name, module)
    return None


def make_head(
    in_features: int,
    num_outputs: int,
    hidden: Sequence[int],
    dropout: float | None,
    activation: str,
    *,
    leading_dropout: bool,
    conv: bool = False,
    bias: bool = True,
) -> nn.Module:
    """[Dropout] → (Linear → activation → Dropout) per hidden width → Linear (1x1 convs if `conv`)."""

    def layer(width_in: int, width_out: int, with_bias: bool = True) -> nn.Module:
        if conv:
            return nn.Conv2d(width_in, width_out, kernel_size=1, bias=with_bias)
        return nn.Linear(width_in, width_out, bias=with_bias)

    layers: list[nn.Module] = [nn.Dropout(dropout)] if leading_dropout and dropout else []
    width = in_features
    for size in hidden:
        layers += [layer(width, size), make_activation(activation)]
        if dropout:
            layers.append(nn.Dropout(dropout))
        width = size
    layers.append(layer(width, num_outputs, bias))
    return layers[0] if len(layers) == 1 else nn.Sequential(*layers)


def replace_head(
    model: nn.Module, num_outputs: int, hidden: Sequence[int], dropout: float | None, activation: str
) -> tuple[str, ...]:
    """Replace the classifier for `num_outputs`; record and return the head's module names.

    `dropout` replaces the p of a Dropout that already sits right before the classifier,
    otherwise a Dropout is inserted in front of it. SqueezeNet's ReLU after its final conv is
    dropped (logits must be able to go negative, e.g. for BCE or regression).
    """
    target = find_classifier(model)
    old = model.get_submodule(target)
    assert isinstance(old, nn.Linear | nn.Conv2d), f"{target} is a {type(old).__name__}"
    previous = _previous_leaf(model, target)
    existing = previous[1] if previous is not None and isinstance(previous[1], nn.Dropout) else None
    if existing is not None and dropout is not None:
        existing.p = dropout
    conv = isinstance(old, nn.Conv2d)
    in_features = old.in_channels if isinstance(old, nn.Conv2d) else old.in_features
    head = make_head(
        in_features, num_outputs, hidden, dropout, activation,
        leading_dropout=existing is None, conv=conv, bias=old.bias is not None,
    ).to(old.weight.device)
    if conv:
        final = head if isinstance(head, nn.Conv2d) else head[-1]
        with torch.no_grad():  # torchvision's init for SqueezeNet's final conv
            nn.init.normal_(final.weight, mean=0.0, std=0.01)
            nn.init.zeros_(final.bias)
        model.set_submodule("classifier.2", nn.Identity())
    model.set_submodule(target, head)
    names = (target,)
    setattr(model, HEAD_ATTR, names)
    return names
