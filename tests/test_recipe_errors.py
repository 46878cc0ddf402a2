"""Broken recipes: each gives exactly one `cvtool:` line naming the file (or --set) and the key, exit 2.

The table runs `cvtool recipe show` in-process; the property test mutates a valid recipe at random.
"""

from __future__ import annotations

import copy
import re
import tempfile
from pathlib import Path
from typing import Any

import pytest
import yaml
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st
from typer.testing import CliRunner

from cvtool.cli.main import app
from cvtool.errors import CvtoolError
from cvtool.recipe.schema import DataConfig, Recipe
from cvtool.runs.recipes import load_recipe

ANSI = re.compile(r"\x1b\[[0-9;]*m")
MIN = "name: x\ndata: {root: d}\n"


def row(case_id: str, text: str | bytes | None, *expect: str, sets: tuple[str, ...] = (),
        files: dict[str, str] | None = None, path: str = "x.yaml") -> Any:
    """One broken recipe: x.yaml's text (None: no file), --set values, extra files, expected substrings."""
    return pytest.param(text, sets, files or {}, path, expect, id=case_id)


TABLE = [
    # ---- unknown keys at every level, each with the full dotted suggestion
    row("top-typo", MIN + "taks: binary", "x.yaml: taks: unknown key (did you mean task?)"),
    row("top-section-typo", MIN + "optimizer: {lr: 0.1}", "x.yaml: optimizer: unknown key (did you mean optim?)"),
    row("top-capitalized", MIN + "Task: binary", "x.yaml: Task: unknown key (did you mean task?)"),
    row("top-non-string-key", MIN + "1: x", "x.yaml: 1: unknown key"),
    row("top-null-key", MIN + "~: x", "x.yaml: null: unknown key"),
    row("data", "name: x\ndata: {root: d, batch_sise: 8}",
        "x.yaml: data.batch_sise: unknown key (did you mean data.batch_size?)"),
    row("model", MIN + "model: {archh: resnet18}", "x.yaml: model.archh: unknown key (did you mean model.arch?)"),
    row("model-key-like-a-type-name", MIN + "model: {strides: [1, 2]}", "x.yaml: model.strides: unknown key"),
    row("model.small_input", MIN + "model: {small_input: {remove_maxpol: true}}",
        "x.yaml: model.small_input.remove_maxpol: unknown key (did you mean model.small_input.remove_maxpool?)"),
    row("model.shakedrop", MIN + "model: {shakedrop: {att: all}}",
        "x.yaml: model.shakedrop.att: unknown key (did you mean model.shakedrop.at?)"),
    row("model.freeze", MIN + "model: {freeze: {backbon: true}}",
        "x.yaml: model.freeze.backbon: unknown key (did you mean model.freeze.backbone?)"),
    row("optim", MIN + "optim: {lrr: 0.1}", "x.yaml: optim.lrr: unknown key (did you mean optim.lr?)"),
    row("schedule", MIN + "schedule: {name: step, step_sise: 3}",
        "x.yaml: schedule.step_sise: unknown key (did you mean schedule.step_size?)"),
    row("loss", MIN + "loss: {label_smothing: 0.1}",
        "x.yaml: loss.label_smothing: unknown key (did you mean loss.label_smoothing?)"),
    row("train", MIN + "train: {epochz: 3}", "x.yaml: train.epochz: unknown key (did you mean train.epochs?)"),
    row("train.early_stop", MIN + "train: {early_stop: {patiense: 3}}",
        "x.yaml: train.early_stop.patiense: unknown key (did you mean train.early_stop.patience?)"),
    row("evaluate", MIN + "evaluate: {treshold: 0.3}",
        "x.yaml: evaluate.treshold: unknown key (did you mean evaluate.threshold?)"),
    row("tta", MIN + "tta: {pases: 3}", "x.yaml: tta.pases: unknown key (did you mean tta.passes?)"),
    row("data.normalize", "name: x\ndata: {root: d, normalize: {mean: [0.5], stdd: [0.2]}}",
        "x.yaml: data.normalize.stdd: unknown key (did you mean data.normalize.std?)"),
    row("phases[i]", MIN + "phases: [{epoch: 2, optim: {lr: 0.1}}, {epoc: 4, optim: {lr: 0.01}}]",
        "x.yaml: phases[1].epoc: unknown key (did you mean phases[1].epoch?)"),
    row("phases[i].optim", MIN + "phases: [{epoch: 2, optim: {lrr: 0.1}}]",
        "x.yaml: phases[0].optim.lrr: unknown key (did you mean phases[0].optim.lr?)"),
    row("key-with-line-break", MIN + '"a\\nb": 1', "x.yaml: a\\nb: unknown key"),
    row("duplicate-key", MIN + "optim:\n  lr: 0.1\n  lr: 0.2\n", "x.yaml: invalid YAML at line 5",
        "duplicate key 'lr' (first at line 4)"),
    # ---- wrong types
    row("string-for-int", MIN + "seed: abc", "x.yaml: seed: expected an integer; got 'abc'"),
    row("float-for-int", "name: x\ndata: {root: d, image_size: 64.5}",
        "x.yaml: data.image_size: expected an integer; got 64.5"),
    row("list-for-scalar", "name: x\ndata: {root: d, batch_size: [8]}",
        "x.yaml: data.batch_size: expected an integer; got [8]"),
    row("mapping-for-list", MIN + "augment: {RandomHorizontalFlip: {p: 0.5}}", "x.yaml: augment: expected a list"),
    row("scalar-for-list", MIN + "model: {head: 128}", "x.yaml: model.head: expected a list; got 128"),
    row("string-for-section", MIN + "model: resnet18", "x.yaml: model: expected a mapping; got 'resnet18'"),
    row("bool-for-section", MIN + "model: {small_input: true}",
        "x.yaml: model.small_input: expected a mapping; got true"),
    row("null-section", "name: x\ndata: null", "x.yaml: data: expected a mapping; got null"),
    row("bad-bool", MIN + "model: {skip: maybe}", "x.yaml: model.skip: expected true or false; got 'maybe'"),
    row("list-for-path", "name: x\ndata: {root: [a, b]}", "x.yaml: data.root: expected a path"),
    row("list-item-type", MIN + "schedule: {name: multistep, milestones: [10, soon]}",
        "x.yaml: schedule.milestones[1]: expected an integer; got 'soon'"),
    row("pair-too-short", MIN + "optim: {name: adam, betas: [0.9]}", "x.yaml: optim.betas[1]: required value is missing"),
    row("pair-too-long", "name: x\ndata: {root: d, flip_pairs: [[0, 1, 2]]}",
        "x.yaml: data.flip_pairs[0]: expected at most 2 items; got [0, 1, 2]"),
    row("auto-or-bool", MIN + "train: {channels_last: maybe}",
        "x.yaml: train.channels_last: expected 'auto', or true or false; got 'maybe'"),
    row("name-not-text", "name: 123\ndata: {root: d}", "x.yaml: name: expected a string; got 123"),
    row("phases-not-list", MIN + "phases: {epoch: 2}", "x.yaml: phases: expected a list"),
    row("sweep-not-mapping", MIN + "sweep: [1, 2]", "x.yaml: sweep: expected a mapping; got [1, 2]"),
    row("sweep-values-not-list", MIN + "sweep: {optim.lr: 0.1}", "x.yaml: sweep.optim.lr: expected a list; got 0.1"),
    # ---- bad enum values
    row("task", MIN + "task: multiclas", "x.yaml: task: expected 'multiclass', 'binary'",
        "got 'multiclas' (did you mean multiclass?)"),
    row("data.format", "name: x\ndata: {root: d, format: imagefolder}", "x.yaml: data.format: expected",
        "(did you mean folder?)"),
    row("optim.name", MIN + "optim: {name: adamm}", "x.yaml: optim.name: expected", "(did you mean adam?)"),
    row("schedule.name", MIN + "schedule: {name: cosin}", "x.yaml: schedule.name: expected",
        "(did you mean cosine?)"),
    row("loss.name", MIN + "loss: {name: crossentropy}", "x.yaml: loss.name: expected",
        "(did you mean cross_entropy?)"),
    row("train.device", MIN + "train: {device: gpu}", "x.yaml: train.device: expected 'auto', 'cpu'", "got 'gpu'"),
    row("train.amp", MIN + "train: {amp: fp32}", "x.yaml: train.amp: expected", "got 'fp32'"),
    row("tta.aggregate", MIN + "tta: {aggregate: median}", "x.yaml: tta.aggregate: expected 'vote' or 'mean'"),
    row("normalize-string", "name: x\ndata: {root: d, normalize: imagnet}",
        "x.yaml: data.normalize: expected 'auto', 'imagenet' or 'none', or a mapping; got 'imagnet' "
        "(did you mean imagenet?)"),
    row("normalize-list", "name: x\ndata: {root: d, normalize: [0.5, 0.5]}",
        "x.yaml: data.normalize: expected", "or a mapping; got [0.5, 0.5]"),
    row("channels", "name: x\ndata: {root: d, channels: 4}", "x.yaml: data.channels: expected 1 or 3; got 4"),
    row("activation", MIN + "model: {activation: swish}", "x.yaml: model.activation: expected"),
    row("class-weights", MIN + "loss: {class_weights: heavy}",
        "x.yaml: loss.class_weights: expected 'none', 'inverse' or 'sqrt_inverse', or a list; got 'heavy'"),
    # ---- numbers out of range
    row("negative-lr", MIN + "optim: {lr: -0.1}", "x.yaml: optim.lr: expected a value > 0; got -0.1"),
    row("dropout-1", MIN + "model: {dropout: 1.0}", "x.yaml: model.dropout: expected a value < 1; got 1.0"),
    row("batch-size-0", "name: x\ndata: {root: d, batch_size: 0}",
        "x.yaml: data.batch_size: expected a value > 0; got 0"),
    row("probability-above-1", MIN + "model: {shakedrop: {p: 1.5}}",
        "x.yaml: model.shakedrop.p: expected a value <= 1; got 1.5"),
    row("negative-weight-decay", MIN + "optim: {weight_decay: -0.0001}",
        "x.yaml: optim.weight_decay: expected a value >= 0; got -0.0001"),
    row("val-fraction-1.5", "name: x\ndata: {root: d, val: null, val_fraction: 1.5}",
        "x.yaml: data.val_fraction: expected a value < 1; got 1.5"),
    row("beta-above-1", MIN + "optim: {name: adam, betas: [0.9, 1.5]}", "x.yaml: optim.betas[1]: expected a value <= 1; got 1.5"),
    row("negative-epochs", MIN + "train: {epochs: -5}", "x.yaml: train.epochs: expected a value > 0; got -5"),
    row("zero-std", "name: x\ndata: {root: d, normalize: {mean: [0.5], std: [0]}}",
        "x.yaml: data.normalize.std[0]: expected a value > 0; got 0"),
    row("negative-class-weight", MIN + "loss: {class_weights: [1.0, -2.0]}",
        "x.yaml: loss.class_weights[1]: expected a value > 0; got -2.0"),
    # ---- values that do not fit together
    row("loss-vs-task", MIN + "task: keypoints\nloss: {name: cross_entropy}",
        "x.yaml: loss.name cross_entropy does not fit task keypoints"),
    row("nesterov-with-adam", MIN + "optim: {name: adam, nesterov: true}",
        "x.yaml: optim.nesterov: not a setting of optim.name adam (it applies to: sgd)"),
    row("nesterov-without-momentum", MIN + "optim: {momentum: 0, nesterov: true}",
        "x.yaml: optim: nesterov needs momentum > 0"),
    row("val-null-without-fraction", "name: x\ndata: {root: d, val: null}", "x.yaml: data.val is null"),
    row("normalize-lengths", "name: x\ndata: {root: d, normalize: {mean: [0.5, 0.5, 0.5], std: [0.2]}}",
        "x.yaml: data.normalize: mean and std need the same number of channels"),
    row("phases-not-increasing", MIN + "phases: [{epoch: 5, optim: {lr: 0.1}}, {epoch: 3, optim: {lr: 0.01}}]",
        "x.yaml: phases must have increasing"),
    row("phase-without-optim", MIN + "phases: [{epoch: 2}]", "x.yaml: phases[0].optim: required key is missing"),
    row("monitor-prefix", MIN + "train: {monitor: accuracy}", "x.yaml: train.monitor: monitor must look like val/",
        "(got 'accuracy')"),
    row("name-characters", "name: 'my run/1'\ndata: {root: d}", "x.yaml: name: expected text matching", "; got 'my run/1'"),
    row("missing-data", "name: x", "x.yaml: data: required key is missing"),
    # ---- transforms and architectures (checked against torchvision)
    row("unknown-transform", MIN + "augment: [{RandomHorizontalFlop: {p: 0.5}}]",
        "x.yaml: augment[0]: unknown transform 'RandomHorizontalFlop' (did you mean RandomHorizontalFlip?)"),
    row("nested-unknown-transform", MIN + "augment: [{RandomApply: {p: 0.5, transforms: [{RandomAfine: {}}]}}]",
        "x.yaml: augment[0].RandomApply.transforms[0]: unknown transform 'RandomAfine' (did you mean RandomAffine?)"),
    row("tta-unknown-transform", MIN + "tta: {transforms: [{HorizontalFlip: {}}]}",
        "x.yaml: tta.transforms[0]: unknown transform 'HorizontalFlip'"),
    row("transform-argument-typo", MIN + "augment: [{RandomRotation: {degres: 10}}]",
        "x.yaml: augment[0].RandomRotation.degres: unknown argument (did you mean augment[0].RandomRotation.degrees?)"),
    row("transform-argument-unknown", MIN + "augment: [{RandomHorizontalFlip: {prob: 0.5}}]",
        "x.yaml: augment[0].RandomHorizontalFlip.prob: unknown argument (RandomHorizontalFlip takes p)"),
    row("transform-argument-missing", MIN + "augment: [{RandomRotation: {}}]",
        "x.yaml: augment[0].RandomRotation.degrees: required argument is missing"),
    row("transform-argument-value", MIN + "augment: [{RandomHorizontalFlip: {p: 2}}]",
        "x.yaml: augment[0].RandomHorizontalFlip: "),  # torchvision's own reason follows
    row("transform-arguments-not-mapping", MIN + "augment: [{RandomHorizontalFlip: 0.5}]",
        "x.yaml: augment[0].RandomHorizontalFlip: expected a mapping; got 0.5"),
    row("nested-arguments-not-mapping", MIN + "augment: [{RandomApply: {transforms: [{RandomRotation: 10}]}}]",
        "x.yaml: augment[0].RandomApply.transforms[0].RandomRotation: expected a mapping of arguments"),
    row("transform-two-keys", MIN + "augment: [{RandomHorizontalFlip: {}, RandomVerticalFlip: {}}]",
        "x.yaml: augment[0]: each transform is a one-key mapping"),
    row("transform-bare-name", MIN + "augment: [RandomHorizontalFlip]",
        "x.yaml: augment[0]: expected a mapping; got 'RandomHorizontalFlip'"),
    row("nested-transforms-not-list", MIN + "augment: [{RandomApply: {transforms: {RandomRotation: {degrees: 5}}}}]",
        "x.yaml: augment[0].RandomApply.transforms: must be a list"),
    row("self-nesting-transform", MIN + "augment: [{RandomApply: &k {transforms: [{RandomApply: *k}]}}]",
        "x.yaml: augment[0]"),
    row("unknown-arch", MIN + "model: {arch: resnet19}",
        "x.yaml: model.arch: unknown architecture 'resnet19' (did you mean resnet18?)"),
    # ---- sweeps
    row("sweep-unknown-key", MIN + "sweep: {optim.lrr: [0.1, 0.2]}",
        "x.yaml: sweep point lrr=0.1: optim.lrr: unknown key (did you mean optim.lr?)"),
    row("sweep-empty-list", MIN + "sweep: {optim.lr: []}", "x.yaml: sweep.optim.lr: needs at least one value"),
    row("sweep-bad-value", MIN + "sweep: {optim.lr: [0.1, -1]}",
        "x.yaml: sweep point lr=-1: optim.lr: expected a value > 0; got -1"),
    row("sweep-over-name", MIN + "sweep: {name: [a, b]}", "x.yaml: sweep.name: cannot sweep over name"),
    row("sweep-unknown-arch", MIN + "sweep: {model.arch: [resnet18, resnet19]}",
        "x.yaml: sweep point arch=resnet19: model.arch: unknown architecture 'resnet19'"),
    row("sweep-repeated-value", MIN + "sweep: {model.dropout: [0.4, 0.4]}",
        "x.yaml: sweep: two grid points are both named dropout=0.4"),
    row("sweep-through-scalar", MIN + "sweep: {seed.value: [1]}", "x.yaml: sweep: seed.value: seed is a number"),
    row("sweep-too-big", MIN + "sweep: {seed: [" + ", ".join(map(str, range(40))) + "], "
        "data.batch_size: [" + ", ".join(map(str, range(1, 41))) + "]}", "x.yaml: sweep: 1600 grid points"),
    # ---- base files
    row("base-cycle", MIN + "base: b.yaml", "x.yaml: circular base: x.yaml -> b.yaml -> x.yaml",
        files={"b.yaml": "base: x.yaml\n"}),
    row("base-self", MIN + "base: x.yaml", "x.yaml: circular base: x.yaml -> x.yaml"),
    row("base-cycle-nested", MIN + "base: sub/b.yaml", "circular base: x.yaml -> b.yaml -> c.yaml -> b.yaml",
        files={"sub/b.yaml": "base: ../c.yaml\n", "c.yaml": "base: sub/b.yaml\n"}),
    row("base-missing", MIN + "base: nope.yaml", "x.yaml: base: file not found: nope.yaml"),
    row("base-not-a-path", MIN + "base: 5", "x.yaml: base: expected a file path"),
    row("base-invalid-yaml", MIN + "base: b.yaml", "b.yaml: invalid YAML at line 3",
        "(while parsing a flow sequence at line 2)",
        files={"b.yaml": "optim:\n  lr: [0.1\n"}),
    row("base-not-mapping", MIN + "base: b.yaml", "b.yaml: a recipe must be a YAML mapping",
        files={"b.yaml": "- a\n- b\n"}),
    # ---- the file itself
    row("missing-file", None, "missing.yaml: recipe file not found", path="missing.yaml"),
    row("folder", None, "recipes: is a folder, not a recipe file", path="recipes", files={"recipes/a.yaml": MIN}),
    row("invalid-yaml", "name: x\ndata: {root: d\n", "x.yaml: invalid YAML at line 3"),
    row("tab-indent", "name: x\ndata:\n\troot: d\n", "x.yaml: invalid YAML at line 3"),
    row("yaml-list", "- name: x\n- data: {root: d}\n", "x.yaml: a recipe must be a YAML mapping", "got a list"),
    row("yaml-scalar", "just some text\n", "x.yaml: a recipe must be a YAML mapping", "got a string"),
    row("empty-file", "", "x.yaml: name: required key is missing"),
    row("comments-only", "# nothing here\n", "x.yaml: name: required key is missing"),
    row("not-utf8", b"name: caf\xe9\ndata: {root: d}\n", "x.yaml: not a UTF-8 text file"),
    row("control-character", "name: x\x07\ndata: {root: d}\n", "x.yaml: invalid YAML at line 1"),
    # ---- --set
    row("set-without-equals", MIN, "--set optim.lr: expected key=value", sets=("optim.lr",)),
    row("set-unknown-key", MIN, "x.yaml: --set: optim.lrr: unknown key (did you mean optim.lr?)",
        sets=("optim.lrr=0.1",)),
    row("set-unknown-section", MIN, "x.yaml: --set: optimizer: unknown key (did you mean optim?)",
        sets=("optimizer.lr=0.1",)),
    row("set-bad-type", MIN, "x.yaml: --set: data.batch_size: expected an integer; got 'big'",
        sets=("data.batch_size=big",)),
    row("set-through-scalar", MIN + "seed: 1", "--set: seed.value: seed is a number, not a section",
        sets=("seed.value=1",)),
    row("set-empty-part", MIN, "--set: optim..lr: expected a dotted key", sets=("optim..lr=1",)),
    row("set-bad-enum", MIN, "x.yaml: --set: task: expected", sets=("task=multi",)),
    row("set-loss-vs-task", MIN, "x.yaml: --set: loss.name mse does not fit task multiclass",
        sets=("loss.name=mse",)),
    row("set-unknown-transform", MIN, "x.yaml: --set: augment[0]: unknown transform 'RandomFlip'",
        sets=("augment=[{RandomFlip: {}}]",)),
    row("set-base", MIN, "--set base=other.yaml: bases are merged before --set", sets=("base=other.yaml",)),
    row("set-into-list", MIN + "phases: [{epoch: 2, optim: {lr: 0.1}}]",
        "--set: phases.0.epoch: phases is a list, not a section", sets=("phases.0.epoch=3",)),
    row("set-unknown-arch", MIN, "x.yaml: --set: model.arch: unknown architecture", sets=("model.arch=resnet19",)),
]


@pytest.fixture(scope="module")
def runner() -> CliRunner:
    return CliRunner()


@pytest.mark.parametrize(("text", "sets", "files", "path", "expect"), TABLE)
def test_broken_recipe_gives_one_line_and_exit_2(text: str | bytes | None, sets: tuple[str, ...],
                                                 files: dict[str, str], path: str, expect: tuple[str, ...],
                                                 tmp_path: Path, monkeypatch: pytest.MonkeyPatch,
                                                 runner: CliRunner) -> None:
    monkeypatch.chdir(tmp_path)
    for name, content in files.items():
        Path(name).parent.mkdir(parents=True, exist_ok=True)
        Path(name).write_text(content, encoding="utf-8")
    if isinstance(text, bytes):
        Path(path).write_bytes(text)
    elif text is not None:
        Path(path).write_text(text, encoding="utf-8")
    args = ["recipe", "show", path]
    for value in sets:
        args += ["--set", value]
    result = runner.invoke(app, args)
    output = ANSI.sub("", result.output)
    assert result.exit_code == 2, output
    assert result.exception is None or isinstance(result.exception, SystemExit), output
    assert "Traceback" not in output
    assert ANSI.sub("", result.stdout).strip() == ""  # the error goes to stderr only
    lines = output.strip().splitlines()
    assert len(lines) == 1, output
    assert lines[0].startswith("cvtool: "), output
    for part in expect:
        assert part in lines[0], f"{part!r} not in {lines[0]!r}"


def test_the_table_is_big_enough() -> None:
    assert len(TABLE) >= 55


def test_missing_data_root_is_named_when_the_data_is_read(tmp_path: Path) -> None:
    from cvtool.data.formats import read_dataset

    cfg = DataConfig(root=tmp_path / "no-such-folder")
    with pytest.raises(CvtoolError) as info:
        read_dataset(cfg, "multiclass", 0)
    message = str(info.value)
    assert message.startswith("data.root: folder not found") and "no-such-folder" in message
    assert len(message.splitlines()) == 1


# ---- property: random mutations of a valid recipe ------------------------------------------

VALID: dict[str, Any] = {
    "name": "prop",
    "task": "multiclass",
    "seed": 1,
    "data": {"format": "folder", "root": "data", "val": "val", "image_size": 32, "batch_size": 8,
             "normalize": {"mean": [0.5, 0.5, 0.5], "std": [0.2, 0.2, 0.2]}, "flip_pairs": [[0, 1]]},
    "augment": [{"RandomHorizontalFlip": {"p": 0.5}},
                {"RandomApply": {"p": 0.5, "transforms": [{"RandomRotation": {"degrees": 10}}]}}],
    "model": {"arch": "simplenet", "dropout": 0.2, "head": [16], "blocks": [8, 16], "small_input": {"stride1": 1},
              "shakedrop": {"p": 0.5, "at": "all"}, "freeze": {"unfreeze_last": 1}},
    "optim": {"name": "sgd", "lr": 0.1, "momentum": 0.9, "nesterov": True},
    "phases": [{"epoch": 2, "optim": {"lr": 0.01}}, {"epoch": 4, "optim": {"name": "adam"}}],
    "schedule": {"name": "multistep", "milestones": [2, 4], "gamma": 0.5},
    "loss": {"name": "cross_entropy", "label_smoothing": 0.1, "class_weights": [1.0, 2.0]},
    "train": {"epochs": 5, "monitor": "val/accuracy", "early_stop": {"patience": 2}, "device": "cpu",
              "amp": "none"},
    "evaluate": {"threshold": 0.5},
    "tta": {"passes": 2, "aggregate": "mean", "transforms": [{"RandomHorizontalFlip": {"p": 1.0}}]},
    "sweep": {"optim.lr": [0.1, 0.01]},
}
ENUMS = [("task",), ("data", "format"), ("data", "normalize"), ("optim", "name"), ("schedule", "name"),
         ("loss", "name"), ("train", "device"), ("train", "amp"), ("tta", "aggregate"), ("model", "activation"),
         ("model", "shakedrop", "at")]
REQUIRED = [("name",), ("data",), ("data", "root"), ("phases", 0, "epoch"), ("phases", 1, "optim")]

KeyPath = tuple[Any, ...]


def _nodes(data: Any, path: KeyPath = ()) -> list[tuple[KeyPath, Any]]:
    """Every (path, value) in the tree, the root included."""
    found = [(path, data)]
    if isinstance(data, dict):
        for key, value in data.items():
            found += _nodes(value, (*path, key))
    elif isinstance(data, list):
        for index, value in enumerate(data):
            found += _nodes(value, (*path, index))
    return found


def _get(data: Any, path: KeyPath) -> Any:
    for part in path:
        data = data[part]
    return data


scalars = st.one_of(st.none(), st.booleans(), st.integers(-10**6, 10**6),
                    st.floats(allow_nan=True, allow_infinity=True), st.text(max_size=12))
identifiers = st.from_regex(r"[a-z_][a-z0-9_]{0,10}", fullmatch=True)
values = st.one_of(scalars, st.lists(scalars, max_size=3), st.dictionaries(identifiers, scalars, max_size=2))


@st.composite
def mutated(draw: st.DrawFn) -> dict[str, Any]:
    data = copy.deepcopy(VALID)
    for _ in range(draw(st.integers(1, 2))):
        kind = draw(st.sampled_from(["unknown_key", "wrong_type", "delete", "enum", "list"]))
        nodes = _nodes(data)
        if kind == "unknown_key":
            path, node = draw(st.sampled_from([(p, n) for p, n in nodes if isinstance(n, dict)]))
            key = draw(st.one_of(identifiers, st.sampled_from(sorted({str(k) for k in node}))
                                 .map(lambda k: k[:-1] + "x" if len(k) > 1 else k + "x")))
            node[key] = draw(values)
        elif kind == "wrong_type":
            path, _ = draw(st.sampled_from([(p, n) for p, n in nodes if p and not isinstance(n, dict | list)]))
            _get(data, path[:-1])[path[-1]] = draw(values)
        elif kind == "delete":
            candidates = [p for p in REQUIRED if _exists(data, p)] + [p for p, _ in nodes if p]
            path = draw(st.sampled_from(candidates))
            del _get(data, path[:-1])[path[-1]]
        elif kind == "enum":
            path = draw(st.sampled_from([p for p in ENUMS if _exists(data, p[:-1]) and
                                         isinstance(_get(data, p[:-1]), dict)]))
            _get(data, path[:-1])[path[-1]] = draw(st.one_of(st.text(max_size=12), identifiers))
        else:
            lists = [(p, n) for p, n in nodes if isinstance(n, list)]
            path, node = draw(st.sampled_from(lists))
            action = draw(st.sampled_from(["append", "drop", "replace"]))
            if action == "append" or not node:
                node.append(draw(values))
            elif action == "drop":
                node.pop(draw(st.integers(0, len(node) - 1)))
            else:
                node[draw(st.integers(0, len(node) - 1))] = draw(values)
    return data


def _exists(data: Any, path: KeyPath) -> bool:
    try:
        _get(data, path)
    except (KeyError, IndexError, TypeError):
        return False
    return True


def _parse_dotted(text: str) -> KeyPath | None:
    """'phases[0].optim.lr' -> ('phases', 0, 'optim', 'lr'); None when it is not a dotted key."""
    parts: list[Any] = []
    for piece in text.split("."):
        match = re.fullmatch(r"([^\[\]]*)((?:\[\d+\])*)", piece)
        if match is None:
            return None
        if match.group(1):
            parts.append(match.group(1))
        parts += [int(i) for i in re.findall(r"\[(\d+)\]", match.group(2))]
    return tuple(parts)


def _names_a_key(rest: str, data: dict[str, Any]) -> bool:
    """The key at the start of `rest` exists in `data` (or is a missing required key)."""
    sweep = data["sweep"] if isinstance(data.get("sweep"), dict) else {}
    if rest.startswith(("sweep: ", "sweep point ")):  # the grid, or one point of it: the key may be the sweep's
        rest = rest.split(": ", 1)[-1]
        if rest.startswith("two grid points") or any(rest.startswith(f"{key}:") for key in sweep):
            return True
    if rest.startswith("circular base"):
        return "base" in data
    token = rest.split(" ")[0].removesuffix(":")
    if token.startswith("sweep.") and token.removeprefix("sweep.") in sweep:
        return True
    path = _parse_dotted(token)
    if not path:
        return False
    return _exists(data, path) or ("missing" in rest and _exists(data, path[:-1]))


DUMPER = getattr(yaml, "CSafeDumper", yaml.SafeDumper)  # libyaml keeps the 200 examples fast
LOADER = getattr(yaml, "CSafeLoader", yaml.SafeLoader)
INTERNAL = re.compile(r"literal\[|function-after|constrained-|NormStats|\b[A-Z][A-Za-z]*Config\b|<class")


def _check(data: dict[str, Any], folder: Path) -> None:
    path = folder / "prop.yaml"
    path.write_text(yaml.dump(data, Dumper=DUMPER, allow_unicode=True), encoding="utf-8")
    written = yaml.load(path.read_text(encoding="utf-8"), Loader=LOADER)  # what the recipe loader sees
    try:
        recipe = load_recipe(path)
    except CvtoolError as exc:
        message = str(exc)
        assert len(message.splitlines()) == 1 and message.isprintable(), message
        assert message.startswith(f"{path}: "), message
        assert not INTERNAL.search(message), message
        assert _names_a_key(message.removeprefix(f"{path}: "), written), message
    else:
        assert isinstance(recipe, Recipe)


@settings(max_examples=200, deadline=None, derandomize=True, database=None,
          suppress_health_check=[HealthCheck.too_slow, HealthCheck.data_too_large])
@given(mutated())
def test_mutated_recipes_give_a_recipe_or_one_line_naming_a_key(data: dict[str, Any]) -> None:
    with tempfile.TemporaryDirectory() as folder:
        _check(data, Path(folder))


def test_the_unmutated_recipe_is_valid(tmp_path: Path) -> None:
    path = tmp_path / "prop.yaml"
    path.write_text(yaml.safe_dump(VALID), encoding="utf-8")
    assert load_recipe(path).optim.nesterov is True
