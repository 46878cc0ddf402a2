"""Pretrained weights by name (torchvision), their cache and the offline rules; no test touches the
network: caches are prepared in tmp dirs and every connection attempt fails."""

from __future__ import annotations

import os
import re
import socket
from collections.abc import Callable
from pathlib import Path
from typing import Any

import pytest
import torch
import torchvision
from conftest import write_recipe
from typer.testing import CliRunner

import cvtool.models.weights as weights_module
from cvtool.cli.main import app
from cvtool.errors import CvtoolError
from cvtool.models import build_model
from cvtool.models.pretrained import weights_record
from cvtool.recipe.model_config import ModelConfig
from cvtool.runs.recipes import load_recipe

RESNET18_URL = torchvision.models.ResNet18_Weights.IMAGENET1K_V1.url
IMAGENET = ([0.485, 0.456, 0.406], [0.229, 0.224, 0.225])


def no_network(*args: Any, **kwargs: Any) -> Any:
    raise OSError("network is unreachable (test)")


@pytest.fixture
def torch_home(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> Path:
    """An empty torch cache in tmp_path, the offline switches off and the network unreachable."""
    home = tmp_path / "torch-home"
    monkeypatch.setenv("TORCH_HOME", str(home))
    monkeypatch.setenv("HF_HOME", str(tmp_path / "hf-home"))
    for name in ("CVTOOL_OFFLINE", "HF_HUB_OFFLINE", "https_proxy", "HTTPS_PROXY", "all_proxy", "ALL_PROXY"):
        monkeypatch.delenv(name, raising=False)
    monkeypatch.setattr(socket, "create_connection", no_network)
    monkeypatch.setattr(torch.hub, "download_url_to_file", no_network)
    return home


@pytest.fixture
def cached_resnet18(torch_home: Path) -> tuple[Path, dict[str, torch.Tensor]]:
    """A resnet18 state dict saved where torchvision's IMAGENET1K_V1 weights are cached."""
    torch.manual_seed(5)
    state = torchvision.models.resnet18(num_classes=1000).state_dict()
    path = torch_home / "hub" / "checkpoints" / os.path.basename(RESNET18_URL)  # resnet18-f37072fd.pth
    path.parent.mkdir(parents=True)
    torch.save(state, path)
    return path, state


def build(pretrained: Any, arch: str = "resnet18", channels: int = 3) -> torch.nn.Module:
    return build_model(ModelConfig(arch=arch, pretrained=pretrained), 10, channels, 32)


@pytest.mark.parametrize("name", ["imagenet", True, "IMAGENET1K_V1", "DEFAULT"])
def test_named_weights_load_the_cached_tensors(cached_resnet18: tuple[Path, dict], name: Any) -> None:
    path, state = cached_resnet18
    loaded = build(name).state_dict()
    for key in ("conv1.weight", "layer1.0.conv1.weight", "layer4.1.bn2.running_var", "layer3.0.downsample.0.weight"):
        assert torch.equal(loaded[key], state[key]), key
    assert loaded["fc.weight"].shape == (10, 512)


def test_the_model_records_which_weights_it_started_from(cached_resnet18: tuple[Path, dict]) -> None:
    path, _ = cached_resnet18
    assert weights_record(build("imagenet")) == {"source": "torchvision", "arch": "resnet18", "name": "IMAGENET1K_V1",
                                                 "url": RESNET18_URL, "file": str(path)}
    assert weights_record(build(None)) is None


def test_first_use_downloads_through_torch_hub_with_a_bounded_socket(torch_home: Path,
                                                                     monkeypatch: pytest.MonkeyPatch) -> None:
    calls: list[tuple[Any, ...]] = []
    torch.manual_seed(1)
    state = torchvision.models.resnet18().state_dict()

    def reach(address: tuple[str, int], timeout: float) -> Any:
        calls.append(("connect", address, timeout))
        return socket.socket()

    def download(url: str, dst: str, hash_prefix: str | None, progress: bool) -> None:
        calls.append(("download", url, dst, hash_prefix, progress, socket.getdefaulttimeout()))
        torch.save(state, dst)

    monkeypatch.setattr(socket, "create_connection", reach)
    monkeypatch.setattr(torch.hub, "download_url_to_file", download)
    target = torch_home / "hub" / "checkpoints" / "resnet18-f37072fd.pth"
    assert torch.equal(build("imagenet").state_dict()["layer2.0.conv1.weight"], state["layer2.0.conv1.weight"])
    assert calls == [("connect", ("download.pytorch.org", 443), weights_module.NETWORK_TIMEOUT),
                     ("download", RESNET18_URL, str(target), "f37072fd", True, weights_module.NETWORK_TIMEOUT)]
    assert socket.getdefaulttimeout() is None  # restored
    build("imagenet")  # cached now: no second download
    assert len(calls) == 2


@pytest.mark.parametrize("variable", ["CVTOOL_OFFLINE", "HF_HUB_OFFLINE"])
def test_offline_and_not_cached_is_one_line_naming_url_and_cache_path(
        variable: str, torch_home: Path, monkeypatch: pytest.MonkeyPatch, tmp_path: Path,
        synthetic: Callable[..., dict[str, Any]]) -> None:
    monkeypatch.setenv(variable, "1")
    recipe = write_recipe(tmp_path, synthetic("multiclass"), model={"arch": "resnet18", "pretrained": "imagenet"},
                          data={"image_size": 32})
    result = CliRunner().invoke(app, ["train", str(recipe), "--out", str(tmp_path / "run")])
    assert result.exit_code == 2, result.output
    expected = torch_home / "hub" / "checkpoints" / "resnet18-f37072fd.pth"
    assert result.output.strip() == (
        f"cvtool: model.pretrained: resnet18 IMAGENET1K_V1 weights are not cached and {variable} is set: "
        f"download {RESNET18_URL} and put it at {expected} "
        "(or run `cvtool weights fetch resnet18` where there is network)")
    assert not (tmp_path / "run" / "checkpoints").exists()


def test_no_network_is_one_line_naming_the_cache_path(torch_home: Path) -> None:
    with pytest.raises(CvtoolError) as error:
        build("imagenet")
    message = str(error.value)
    assert "\n" not in message
    assert message.startswith("model.pretrained: cannot download resnet18 IMAGENET1K_V1 weights (network is unreachable")
    assert message.endswith(f"download {RESNET18_URL} and put it at {torch_home}/hub/checkpoints/resnet18-f37072fd.pth "
                            "(or run `cvtool weights fetch resnet18` where there is network)")


@pytest.mark.parametrize("variable", ["CVTOOL_OFFLINE", None])
def test_the_fetch_hint_fetches_the_very_weights_the_recipe_names(
        variable: str | None, torch_home: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    # resnet50's default is IMAGENET1K_V2: the hint for V1 must name V1, or it fetches another file
    if variable:
        monkeypatch.setenv(variable, "1")
    with pytest.raises(CvtoolError) as error:
        build("IMAGENET1K_V1", arch="resnet50")
    message = str(error.value)
    url, path, command = re.search(r"download (\S+) and put it at (\S+) \(or run `([^`]+)`", message).groups()
    assert url == torchvision.models.ResNet50_Weights.IMAGENET1K_V1.url
    assert command == "cvtool weights fetch resnet50 --weights IMAGENET1K_V1"
    fetched: list[tuple[str, str]] = []

    def download(url: str, dst: str, hash_prefix: str | None, progress: bool) -> None:
        fetched.append((url, dst))
        Path(dst).write_bytes(b"weights")

    monkeypatch.delenv("CVTOOL_OFFLINE", raising=False)
    monkeypatch.setattr(socket, "create_connection", lambda *args, **kwargs: socket.socket())
    monkeypatch.setattr(torch.hub, "download_url_to_file", download)
    result = CliRunner().invoke(app, command.split()[1:])
    assert result.exit_code == 0, result.output
    assert fetched == [(url, path)]


def test_a_wrong_weights_name_is_refused_with_the_valid_ones(torch_home: Path, tmp_path: Path) -> None:
    recipe = write_recipe(tmp_path, tmp_path, model={"arch": "resnet50", "pretrained": "IMAGENET1K_V3"})
    with pytest.raises(CvtoolError) as error:
        load_recipe(recipe)
    assert str(error.value) == (f"{recipe}: model.pretrained: resnet50 has no weights 'IMAGENET1K_V3' (did you mean "
                                "IMAGENET1K_V2?) (valid: imagenet, IMAGENET1K_V1, IMAGENET1K_V2, DEFAULT)")


@pytest.mark.parametrize(("model", "message"), [
    ({"arch": "resnet18", "pretrained": "hf-hub:timm/resnet18.a1_in1k"},
     "model.pretrained: hf-hub: weights need a timm/<name> arch, not resnet18"),
    ({"arch": "simplenet", "pretrained": "imagenet"}, "model.pretrained: simplenet has no published weights 'imagenet'"),
    ({"arch": "simplenet", "pretrained": True}, "model.pretrained: simplenet has no published weights"),
    ({"arch": "timm/", "pretrained": None}, "model.arch: timm/ needs a model name"),
])
def test_weights_that_cannot_fit_the_arch_are_recipe_errors(tmp_path: Path, model: dict, message: str) -> None:
    recipe = write_recipe(tmp_path, tmp_path, model=model)
    with pytest.raises(CvtoolError, match="^" + re.escape(f"{recipe}: {message}")):
        load_recipe(recipe)


def test_weights_of_another_architecture_are_one_line(torch_home: Path, tmp_path: Path) -> None:
    path = tmp_path / "mobilenet.pth"
    torch.save(torchvision.models.mobilenet_v3_small().state_dict(), path)
    with pytest.raises(CvtoolError, match=r"^model.pretrained: weights do not fit resnet18: \d+ missing keys "
                                          r"\(e.g. conv1.weight\), \d+ unexpected \(e.g. features.0.0.weight\)"):
        build(str(path))


def test_safetensors_round_trip(torch_home: Path, tmp_path: Path) -> None:
    safetensors = pytest.importorskip("safetensors.torch")
    torch.manual_seed(2)
    state = torchvision.models.resnet18().state_dict()
    path = tmp_path / "resnet18.safetensors"
    safetensors.save_file(state, str(path))
    loaded = build(str(path), channels=1).state_dict()
    assert all(torch.equal(loaded[key], state[key]) for key in state if not key.startswith(("fc.", "conv1.")))
    assert torch.allclose(loaded["conv1.weight"], state["conv1.weight"].sum(dim=1, keepdim=True))
    assert weights_record(build(str(path))) == {"source": "file", "arch": "resnet18", "name": str(path),
                                                "url": None, "file": str(path)}


@pytest.mark.slow  # a resnet18 training step, evaluation and plots: about 10 s of CPU
def test_train_uses_the_weights_normalization_and_checkpoints_need_no_network(
        cached_resnet18: tuple[Path, dict], tmp_path: Path, monkeypatch: pytest.MonkeyPatch,
        synthetic: Callable[..., dict[str, Any]]) -> None:
    from cvtool.engine.checkpoint import load_checkpoint
    from cvtool.runs.model import load_model

    recipe = write_recipe(tmp_path, synthetic("multiclass"), model={"arch": "resnet18", "pretrained": "imagenet"},
                          data={"image_size": 32, "normalize": "auto"}, train={"max_batches": 1})
    result = CliRunner().invoke(app, ["train", str(recipe), "--out", str(tmp_path / "run")])
    assert result.exit_code == 0, result.output
    assert ("normalization (data.normalize auto: the resnet18 IMAGENET1K_V1 weights' mean/std): "
            "mean [0.485, 0.456, 0.406] std [0.229, 0.224, 0.225]") in result.output
    payload = load_checkpoint(tmp_path / "run" / "checkpoints" / "best.pt")
    assert payload["pretrained"]["name"] == "IMAGENET1K_V1" and payload["pretrained"]["url"] == RESNET18_URL
    assert (payload["meta"]["mean"], payload["meta"]["std"]) == IMAGENET
    cached_resnet18[0].unlink()  # the cache is gone and the network too: the checkpoint alone suffices
    monkeypatch.setenv("CVTOOL_OFFLINE", "1")
    loaded = load_model(tmp_path / "run")
    assert torch.equal(loaded.model.state_dict()["fc.weight"], payload["model"]["fc.weight"])


def test_normalization_sources(tmp_path: Path) -> None:
    from cvtool.runs.normalization import normalization_source

    def source(**data: Any) -> tuple[Any, str]:
        return normalization_source(load_recipe(write_recipe(
            tmp_path, tmp_path, model={"arch": "resnet18", "pretrained": data.pop("pretrained", "imagenet")},
            data=data)))

    assert source(normalize="auto") == (IMAGENET, "data.normalize auto: the resnet18 IMAGENET1K_V1 weights' mean/std")
    (mean,), (std,) = source(normalize="auto", channels=1)[0]
    assert (mean, std) == pytest.approx((sum(IMAGENET[0]) / 3, sum(IMAGENET[1]) / 3))
    assert source(normalize="none") == (None, "data.normalize: none")
    assert source(normalize={"mean": [0.5], "std": [0.2]}) == (None, "data.normalize: the recipe's mean/std")
    assert source(normalize="auto", pretrained="w/r.pth") == (None, "data.normalize auto: the train split's statistics")


def test_cli_weights_fetch_and_list(cached_resnet18: tuple[Path, dict], monkeypatch: pytest.MonkeyPatch) -> None:
    path, _ = cached_resnet18
    runner = CliRunner()
    result = runner.invoke(app, ["weights", "fetch", "resnet18"])
    assert result.exit_code == 0, result.output
    assert result.output.strip() == f"already cached: resnet18 IMAGENET1K_V1 -> {path} (44.7 MB)"
    listed = runner.invoke(app, ["weights", "list"])
    assert listed.exit_code == 0, listed.output
    row = next(line for line in listed.output.splitlines() if "resnet18" in line)
    assert [cell.strip() for cell in row.split("│")[1:4]] == ["torch", "resnet18 IMAGENET1K_V1", "44.7 MB"]
    wrong = runner.invoke(app, ["weights", "fetch", "resnet18", "--weights", "IMAGENET1K_V2"])
    assert wrong.exit_code == 2
    assert wrong.output.strip().startswith("cvtool: model.pretrained: resnet18 has no weights 'IMAGENET1K_V2'")
    monkeypatch.setenv("CVTOOL_OFFLINE", "1")
    missing = runner.invoke(app, ["weights", "fetch", "resnet34"])
    assert missing.exit_code == 2 and len(missing.output.strip().splitlines()) == 1
    assert "resnet34-b627a593.pth" in missing.output


def test_timm_without_the_extra_says_how_to_install(monkeypatch: pytest.MonkeyPatch) -> None:
    import sys

    from cvtool.models import check_arch

    monkeypatch.setitem(sys.modules, "timm", None)  # import timm -> ImportError
    with pytest.raises(CvtoolError, match=r"^timm/resnet18 needs timm, an optional extra: pip install 'cvtool\[timm\]'$"):
        check_arch("timm/resnet18")
