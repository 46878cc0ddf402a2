"""What a resolved recipe will run with, beyond its YAML: the optimizer hyper-parameters in force
(torch's defaults filled in) per phase, and the modules `model.small_input` changes."""

from __future__ import annotations

from cvtool.recipe.schema import Recipe


def optimizer_lines(recipe: Recipe) -> list[str]:
    """One line per phase: `epoch N: adamw lr=0.001 betas=(0.9, 0.999) amsgrad=False weight_decay=0.01`."""
    from cvtool.engine.optim import optim_for_epoch, resolved_hyperparameters

    lines = []
    for epoch in [1, *(phase.epoch for phase in recipe.phases)]:
        cfg = optim_for_epoch(recipe.optim, recipe.phases, epoch)
        values = " ".join(f"{key}={value}" for key, value in resolved_hyperparameters(cfg).items())
        unset = " (weight_decay: the optimizer's default)" if cfg.weight_decay is None else ""
        lines.append(f"epoch {epoch}: {cfg.name} {values}{unset}")
    return lines


def small_input_lines(recipe: Recipe) -> list[str]:
    """The modules `model.small_input` changes, in forward order."""
    from cvtool.models.surgery import small_input_changes

    cfg = recipe.model.small_input
    if cfg is None:
        return ["model.small_input: not set (the architecture as torchvision builds it)"]
    changed = small_input_changes(cfg, recipe.model.arch, recipe.data.image_size)
    return [f"model.small_input changes {len(changed)} modules of {recipe.model.arch}: " + ", ".join(changed)]
