"""Which mean/std a run normalizes with: `data.normalize` as the recipe sets it, or, with `auto`
and published pretrained weights, the weights' own (the backbone learnt its features on inputs
normalized that way; the dataset's statistics are the fallback for everything else)."""

from __future__ import annotations

from cvtool.recipe.schema import NormStats, Recipe

Normalization = tuple[list[float], list[float]]


def normalization_source(recipe: Recipe) -> tuple[Normalization | None, str]:
    """(the weights' mean/std when they decide, else None) and where the run's values come from."""
    norm, channels = recipe.data.normalize, recipe.data.channels
    if isinstance(norm, NormStats):
        return None, "data.normalize: the recipe's mean/std"
    if norm != "auto":
        return None, f"data.normalize: {norm}"
    from cvtool.models.pretrained import resolve_weights

    spec = resolve_weights(recipe.model)
    if spec is not None and spec.mean and spec.std and len(spec.mean) == len(spec.std) == 3:
        mean, std = list(spec.mean), list(spec.std)
        if channels == 1:  # grey inputs: the first conv sums the RGB kernels, so average the channels
            mean, std = [sum(mean) / 3], [sum(std) / 3]
        return (mean, std), f"data.normalize auto: the {spec.label()} weights' mean/std"
    return None, "data.normalize auto: the train split's statistics"


def normalization_line(origin: str, mean: list[float], std: list[float]) -> str:
    """One line for the run's output, e.g. `normalization (data.normalize: imagenet): mean [...] std [...]`."""
    return f"normalization ({origin}): mean {[round(m, 4) for m in mean]} std {[round(s, 4) for s in std]}"
