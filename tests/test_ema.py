"""EMA of the weights (`train.ema`): the decay ramps up as timm's ModelEmaV3 warm-up does, each
epoch keeps whichever of the average and the raw weights validates better, and every consumer of
the checkpoint gets the kept weights."""

from __future__ import annotations

import csv
import json
from pathlib import Path

import pytest
import torch
from typer.testing import CliRunner

from cvtool.cli.main import app
from cvtool.engine.checkpoint import load_checkpoint
from cvtool.engine.ema import WeightEMA
from cvtool.recipe.schema import EmaConfig
from cvtool.runs.model import load_model

runner = CliRunner()
SMALL = {"image_size": 8, "batch_size": 32, "channels": 1}


def history(run: Path) -> list[dict[str, float]]:
    with (run / "metrics.csv").open(newline="") as handle:
        return [{k: float(v) for k, v in row.items() if v} for row in csv.DictReader(handle)]


def updates(cfg: EmaConfig, epochs: list[int]) -> list[float]:
    """The decay of each update of an EMA that sees one optimizer step per entry of `epochs`."""
    model = torch.nn.Linear(1, 1, bias=False)
    ema = WeightEMA(model, cfg)
    seen = []
    for step, epoch in enumerate(epochs, start=1):
        with torch.no_grad():
            model.weight.fill_(float(step))
        before = float(ema.module.weight)
        ema.update(model, epoch)
        after = float(ema.module.weight)
        seen.append(round((step - after) / (step - before), 6) if step != before else 0.0)  # = decay
    return seen


def test_the_decay_ramps_up_like_timm_and_counts_from_the_end_of_warmup() -> None:
    expected = [0.0] + [min(0.99, 1 - (1 + n) ** (-2 / 3)) for n in range(1, 6)]
    assert updates(EmaConfig(decay=0.99), [1] * 6) == pytest.approx(expected, abs=1e-6)
    assert updates(EmaConfig(decay=0.3), [1] * 6) == pytest.approx([0.0, 0.3 if 0.3 < expected[1] else expected[1],
                                                                    0.3, 0.3, 0.3, 0.3], abs=1e-6)
    assert updates(EmaConfig(decay=0.99, ramp=False), [1] * 4) == pytest.approx([0.0, 0.99, 0.99, 0.99], abs=1e-6)
    # warmup_epochs: 1 follows the raw weights (each update copies them), then the ramp starts over
    assert updates(EmaConfig(decay=0.99, warmup_epochs=1), [1, 1, 2, 2]) == pytest.approx(
        [0.0, 0.0, expected[1], expected[2]], abs=1e-6)


def test_the_ramp_keeps_a_short_runs_average_near_the_raw_weights(digits_dir: Path, make_recipe,
                                                                   tmp_path: Path) -> None:
    accuracy = {}
    for ramp in (False, True):
        recipe = make_recipe(tmp_path, digits_dir, name=f"ramp-{ramp}", data=SMALL, optim={"name": "adam", "lr": 0.01},
                             model={"blocks": [8, 16], "batch_norm": True},
                             train={"epochs": 2, "max_batches": 20, "ema": {"decay": 0.999, "ramp": ramp}})
        result = runner.invoke(app, ["train", str(recipe), "--out", str(tmp_path / str(ramp)), "--quiet"])
        assert result.exit_code == 0, result.output
        last = history(tmp_path / str(ramp))[-1]
        accuracy[ramp] = (last["val_ema/accuracy"], last["val_raw/accuracy"])
    assert accuracy[False][0] < accuracy[False][1] - 0.3  # 40 updates at 0.999: the average is the start
    assert accuracy[True][0] > accuracy[False][0] + 0.3


def test_each_epoch_keeps_the_better_of_average_and_raw_weights(digits_dir: Path, make_recipe,
                                                                 tmp_path: Path) -> None:
    recipe = make_recipe(tmp_path, digits_dir, data=SMALL, model={"blocks": [8, 16], "batch_norm": True},
                         optim={"name": "adam", "lr": 0.01},
                         train={"epochs": 3, "max_batches": 8, "monitor": "val/accuracy", "ema": {"decay": 0.999}})
    run = tmp_path / "run"
    result = runner.invoke(app, ["train", str(recipe), "--out", str(run)])
    assert result.exit_code == 0, result.output
    rows = history(run)
    kept = []
    for row in rows:
        ema, raw = row["val_ema/accuracy"], row["val_raw/accuracy"]
        assert row["val/accuracy"] == max(ema, raw)  # a tie keeps the average
        kept.append("raw" if raw > ema else "ema")
    lines = [line for line in result.output.splitlines() if line.startswith("epoch")]
    assert [f"({w} weights)" in line for w, line in zip(kept, lines, strict=True)] == [True] * len(rows)
    summary = json.loads((run / "summary.json").read_text())
    best = load_checkpoint(run / "checkpoints" / "best.pt")
    assert summary["weights"] == best["weights"] == kept[summary["best_epoch"] - 1]
    source = best["raw_model"] if best["weights"] == "raw" else best["ema_model"]
    assert all(torch.equal(best["model"][k], source[k]) for k in source)
    loaded = load_model(run)  # what evaluate, tta, export and predict use
    assert all(torch.equal(v, best["model"][k]) for k, v in loaded.model.state_dict().items())
    evaluated = runner.invoke(app, ["evaluate", str(run), "--split", "val", "--out", str(tmp_path / "eval")])
    assert evaluated.exit_code == 0, evaluated.output
    metrics = json.loads((tmp_path / "eval" / "metrics.json").read_text())["metrics"]
    assert metrics["accuracy"] == pytest.approx(summary["val"]["accuracy"], abs=1e-9)
