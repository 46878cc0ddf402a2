"""`cvtool tta RUN_DIR|CKPT`: plain vs test-time-augmented metrics on a split.

cvtool's own modules are imported inside the command: `cvtool --help` stays torch-free.
"""

from __future__ import annotations

from typing import Annotated

import typer

from cvtool.cli.common import (
    CheckpointOpt,
    DataOpt,
    ModelArg,
    QuietOpt,
    SplitOpt,
    console,
    handle_errors,
    is_tty,
)

app = typer.Typer()


@app.command("tta")
@handle_errors
def tta(
    model: ModelArg,
    passes: Annotated[int | None, typer.Option("--passes", "-n", help="Stochastic passes (default: the recipe's tta.passes).")] = None,
    aggregate: Annotated[str | None, typer.Option(
        "--aggregate", help="vote (majority; keypoints: median) or mean (default: the recipe's tta.aggregate).")] = None,
    split: SplitOpt = "test",
    seed: Annotated[int, typer.Option("--seed", help="Seed of the random transforms.")] = 0,
    checkpoint: CheckpointOpt = "best",
    data: DataOpt = None,
    no_transforms: Annotated[bool, typer.Option("--no-transforms", help="Passes without transforms.")] = False,
    quiet: QuietOpt = False,
) -> None:
    """N passes with the recipe's tta.transforms, aggregated; plain vs TTA metrics and the gain."""
    from cvtool.cli.render import metrics_table
    from cvtool.evaluation.tta import compare_tta

    result = compare_tta(model, split, passes, aggregate, seed, checkpoint, data, no_transforms,
                         progress=not quiet and is_tty())
    label = f"TTA x{result.passes} ({result.aggregate})"
    console.print(metrics_table(f"plain vs TTA on {result.split}",
                                {"plain": result.plain, label: result.tta, "gain": result.gain}))
    plain_s, tta_s = result.seconds
    console.print(f"time: plain {plain_s:.2f}s, TTA {tta_s:.2f}s (seed {seed})")
