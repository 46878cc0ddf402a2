"""timm models (`model.arch: timm/<name>`) with weights from a Hugging Face cache prepared here, in
the hub's own layout, and from timm's local-file override; skipped without the timm extra. One
small model throughout: timm's `test_resnet` (0.5 M parameters, default tag r160_in1k)."""

from __future__ import annotations

import shutil
import socket
from collections.abc import Callable
from pathlib import Path
from typing import Any

import pytest
import torch
from conftest import write_recipe
from typer.testing import CliRunner

from cvtool.cli.main import app
from cvtool.errors import CvtoolError
from cvtool.models import build_model
from cvtool.models.pretrained import weights_record
from cvtool.recipe.model_config import ModelConfig
from cvtool.runs.recipes import load_recipe

timm = pytest.importorskip("timm")
safetensors_torch = pytest.importorskip("safetensors.torch")

REPO = "timm/test_resnet.r160_in1k"
COMMIT = "0123456789abcdef0123456789abcdef01234567"
CHECKED = ("conv1.0.weight", "layer1.0.conv1.weight", "layer4.0.bn2.running_mean", "fc.weight")


def no_network(*args: Any, **kwargs: Any) -> Any:
    raise OSError("network is unreachable (test)")


@pytest.fixture
def hf_home(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> Path:
    """Empty torch and Hugging Face caches, HF_HUB_OFFLINE=1 and no network."""
    monkeypatch.setenv("HF_HOME", str(tmp_path / "hf-home"))
    monkeypatch.setenv("TORCH_HOME", str(tmp_path / "torch-home"))
    monkeypatch.delenv("HF_HUB_CACHE", raising=False)
    monkeypatch.delenv("CVTOOL_OFFLINE", raising=False)
    monkeypatch.setenv("HF_HUB_OFFLINE", "1")
    monkeypatch.setattr(socket, "create_connection", no_network)
    return tmp_path / "hf-home"


def timm_state(seed: int = 4) -> dict[str, torch.Tensor]:
    torch.manual_seed(seed)
    return timm.create_model("test_resnet").state_dict()


def put_in_hub_cache(hf_home: Path, repo: str, state: dict[str, torch.Tensor]) -> Path:
    """The hub cache layout: models--org--name/refs/main -> commit, snapshots/<commit>/model.safetensors."""
    folder = hf_home / "hub" / f"models--{repo.replace('/', '--')}"
    (folder / "refs").mkdir(parents=True)
    (folder / "refs" / "main").write_text(COMMIT)
    path = folder / "snapshots" / COMMIT / "model.safetensors"
    path.parent.mkdir(parents=True)
    safetensors_torch.save_file(state, str(path))
    return path


def build(num_outputs: int = 5, **options: Any) -> torch.nn.Module:
    return build_model(ModelConfig(arch="timm/test_resnet", **options), num_outputs, 3, 32)


def test_pretrained_true_loads_the_hub_cache_offline(hf_home: Path) -> None:
    state = timm_state()
    path = put_in_hub_cache(hf_home, REPO, state)
    model = build(pretrained=True, dropout=0.3)
    loaded = model.state_dict()
    assert all(torch.equal(loaded[key], state[key]) for key in CHECKED[:-1])
    assert model.fc[-1].out_features == 5 and model.fc[0].p == 0.3
    assert weights_record(model) == {"source": "timm", "arch": "timm/test_resnet", "name": "test_resnet.r160_in1k",
                                     "url": f"https://huggingface.co/{REPO}/resolve/main/model.safetensors",
                                     "file": str(path)}


def test_not_cached_is_one_line_and_a_file_put_there_loads(hf_home: Path) -> None:
    manual = hf_home.parent / "torch-home" / "hub" / "checkpoints" / "timm--test_resnet.r160_in1k--model.safetensors"
    with pytest.raises(CvtoolError) as error:
        build(pretrained=True)
    assert str(error.value) == (
        "model.pretrained: timm/test_resnet.r160_in1k weights are not cached and HF_HUB_OFFLINE is set: download "
        f"https://huggingface.co/{REPO}/resolve/main/model.safetensors and put it at {manual} "
        "(or run `cvtool weights fetch timm/test_resnet` where there is network)")
    state = timm_state(seed=9)
    manual.parent.mkdir(parents=True)
    safetensors_torch.save_file(state, str(manual))  # timm's local-file override reads it
    loaded = build(pretrained="imagenet").state_dict()
    assert all(torch.equal(loaded[key], state[key]) for key in CHECKED[:-1])


@pytest.mark.parametrize(("pretrained", "command"), [
    ("r160_in1k", "cvtool weights fetch timm/test_resnet --weights r160_in1k"),
    ("hf-hub:someone/test-resnet-finetuned",
     "cvtool weights fetch timm/test_resnet --weights hf-hub:someone/test-resnet-finetuned"),
])
def test_the_offline_hint_names_the_weights_asked_for(hf_home: Path, pretrained: str, command: str) -> None:
    with pytest.raises(CvtoolError) as error:
        build(pretrained=pretrained)
    assert str(error.value).endswith(f"(or run `{command}` where there is network)")
    from cvtool.models.pretrained import resolve_weights

    given = resolve_weights(ModelConfig(arch="timm/test_resnet", pretrained=pretrained))
    fetched = resolve_weights(ModelConfig(arch="timm/test_resnet", pretrained=command.split("--weights ")[1]))
    assert fetched == given  # the command resolves to the same repo and file


def test_hf_hub_repo_and_local_files(hf_home: Path, tmp_path: Path) -> None:
    state = timm_state(seed=6)
    put_in_hub_cache(hf_home, "someone/test-resnet-finetuned", state)
    loaded = build(pretrained="hf-hub:someone/test-resnet-finetuned").state_dict()
    assert all(torch.equal(loaded[key], state[key]) for key in CHECKED[:-1])
    torch.save({"state_dict": state}, tmp_path / "own.pth")
    loaded = build(pretrained=str(tmp_path / "own.pth")).state_dict()
    assert all(torch.equal(loaded[key], state[key]) for key in CHECKED[:-1])
    other = timm.create_model("test_efficientnet").state_dict()
    safetensors_torch.save_file(other, str(tmp_path / "other.safetensors"))
    with pytest.raises(CvtoolError, match=r"^model.pretrained: .*other.safetensors does not fit timm/test_resnet: "):
        build(pretrained=str(tmp_path / "other.safetensors"))


@pytest.mark.parametrize(("model", "message"), [
    ({"arch": "timm/test_resnt"}, "model.arch: unknown timm model 'test_resnt' (did you mean test_resnet?)"),
    ({"arch": "timm/test_resnet", "pretrained": "in22k"},
     "model.pretrained: timm/test_resnet has no pretrained weights 'in22k' (valid: true, r160_in1k)"),
])
def test_timm_names_are_checked_with_the_recipe(tmp_path: Path, model: dict, message: str) -> None:
    recipe = write_recipe(tmp_path, tmp_path, model=model)
    with pytest.raises(CvtoolError) as error:
        load_recipe(recipe)
    assert str(error.value) == f"{recipe}: {message}"


@pytest.mark.parametrize(("options", "message"), [
    ({"small_input": {}}, "model.small_input: not supported for timm/test_resnet (supported: ResNet, ResNeXt, "
                          "WideResNet, EfficientNet, EfficientNetV2, VGG)"),
    ({"shakedrop": {}}, "model.shakedrop: not supported for timm/test_resnet"),
])
def test_surgery_that_does_not_apply_is_refused(options: dict, message: str) -> None:
    with pytest.raises(CvtoolError, match="^" + message.replace("(", r"\(").replace(")", r"\)")):
        build(**options)


def test_normalize_auto_takes_timm_pretrained_mean_std(tmp_path: Path) -> None:
    from cvtool.runs.normalization import normalization_source

    recipe = load_recipe(write_recipe(tmp_path, tmp_path, model={"arch": "timm/test_resnet", "pretrained": True},
                                      data={"normalize": "auto"}))
    assert normalization_source(recipe) == (([0.5] * 3, [0.5] * 3),
                                            "data.normalize auto: the timm/test_resnet.r160_in1k weights' mean/std")


@pytest.mark.slow  # a training step, evaluation, plots and an ONNX export with its parity check
def test_train_freeze_checkpoint_and_export(hf_home: Path, tmp_path: Path,
                                            synthetic: Callable[..., dict[str, Any]]) -> None:
    from cvtool.engine.checkpoint import load_checkpoint

    state = timm_state()
    put_in_hub_cache(hf_home, REPO, state)
    recipe = write_recipe(tmp_path, synthetic("multiclass"), data={"image_size": 32, "normalize": "auto"},
                          model={"arch": "timm/test_resnet", "pretrained": True, "head": [8],
                                 "freeze": {"backbone": True}}, train={"max_batches": 1})
    runner = CliRunner()
    result = runner.invoke(app, ["train", str(recipe), "--out", str(tmp_path / "run")])
    assert result.exit_code == 0, result.output
    payload = load_checkpoint(tmp_path / "run" / "checkpoints" / "best.pt")
    assert payload["pretrained"]["name"] == "test_resnet.r160_in1k"
    assert payload["meta"]["mean"] == [0.5, 0.5, 0.5]
    assert torch.equal(payload["model"]["layer1.0.conv1.weight"], state["layer1.0.conv1.weight"])  # frozen
    shutil.rmtree(hf_home)  # export rebuilds from the checkpoint alone
    out = tmp_path / "model.onnx"
    exported = runner.invoke(app, ["export", str(tmp_path / "run"), "--onnx", str(out)])
    assert exported.exit_code == 0, exported.output
    assert out.is_file() and "max abs" in exported.output.lower()
