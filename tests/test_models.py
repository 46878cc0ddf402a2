"""cvtool.models: every architecture builds, heads, surgery, ShakeDrop, pretrained files, freezing."""

from __future__ import annotations

import typing
from collections.abc import Iterator
from fractions import Fraction
from pathlib import Path

import pytest
import torch
import torchvision
from torch import nn
from torchvision.models import regnet

from cvtool.errors import CvtoolError
from cvtool.models import (
    ShakeDrop,
    available_archs,
    build_model,
    count_parameters,
    frozen_batchnorm_eval,
    set_trainable,
)
from cvtool.models.heads import head_names
from cvtool.models.shakedrop import ShakeDropFunction
from cvtool.recipe.model_config import FreezeConfig, ModelConfig


def build(arch: str, num_outputs: int = 10, channels: int = 3, size: int = 32, **options: object) -> nn.Module:
    return build_model(ModelConfig(arch=arch, **options), num_outputs, channels, size)


def build_meta(arch: str, num_outputs: int = 10, channels: int = 3, size: int = 32, **options: object) -> nn.Module:
    with torch.device("meta"):
        return build(arch, num_outputs, channels, size, **options)


def output_layer(model: nn.Module) -> nn.Module:
    (name,) = head_names(model)
    return [m for m in model.get_submodule(name).modules() if isinstance(m, nn.Linear | nn.Conv2d)][-1]


def map_size_before_pool(model: nn.Module, size: int, channels: int = 3) -> int:
    """Side of the feature map entering the model's global average pool (shape-only, on meta)."""
    seen: list[torch.Size] = []
    handle = model.avgpool.register_forward_hook(lambda _m, inputs, _out: seen.append(inputs[0].shape))
    model.eval()(torch.empty(1, channels, size, size, device="meta"))
    handle.remove()
    return seen[0][-1]


@pytest.fixture(scope="module", autouse=True)
def one_thread() -> Iterator[None]:
    """Tiny tensors: one intra-op thread is fastest and immune to a busy second core."""
    threads = torch.get_num_threads()
    torch.set_num_threads(1)
    yield
    torch.set_num_threads(threads)


@pytest.fixture
def regnet_on_meta(monkeypatch: pytest.MonkeyPatch) -> None:
    """torchvision computes RegNet widths with tensors + .tolist(), which meta tensors cannot do."""
    original = regnet.BlockParams.from_init_params

    def on_cpu(*args: object, **kwargs: object) -> regnet.BlockParams:
        with torch.device("cpu"):
            return original(*args, **kwargs)

    monkeypatch.setattr(regnet.BlockParams, "from_init_params", on_cpu)


# ---------------------------------------------------------------- every registered name builds


@pytest.mark.parametrize("arch", available_archs())
def test_every_arch_builds(arch: str, regnet_on_meta: None) -> None:
    model = build_meta(arch, num_outputs=7, channels=1, size=224, dropout=0.2)
    layer = output_layer(model)
    assert (layer.out_features if isinstance(layer, nn.Linear) else layer.out_channels) == 7
    first_conv = next(m for m in model.modules() if isinstance(m, nn.Conv2d))
    assert first_conv.in_channels == 1
    assert model.eval()(torch.empty(2, 1, 224, 224, device="meta")).shape == (2, 7)


def test_unknown_arch_is_a_user_error() -> None:
    with pytest.raises(CvtoolError, match="unknown architecture 'resnet19'.*did you mean"):
        build_meta("resnet19")


@pytest.mark.parametrize(("arch", "size"), [("vgg11", 16), ("inception_v3", 64), ("vit_b_16", 100), ("maxvit_t", 64)])
def test_too_small_or_odd_image_size_is_a_user_error(arch: str, size: int) -> None:
    with pytest.raises(CvtoolError, match=f"data.image_size {size} does not fit {arch}"):
        build_meta(arch, size=size)


# ---------------------------------------------------------------- real CPU forward passes

FORWARD_CASES = [
    ("simplenet", 8, {}),
    ("simplenet", 8, {"blocks": [16, 16, 32, 32, 64], "skip": True, "batch_norm": True, "activation": "gelu", "head": [32]}),
    ("resnet18", 32, {"dropout": 0.3}),
    ("resnext50_32x4d", 32, {}),
    ("wide_resnet50_2", 32, {}),
    ("efficientnet_b0", 32, {"dropout": 0.5, "head": [64]}),
    ("efficientnet_v2_s", 32, {"small_input": {"stride1": 2}, "shakedrop": {"p": 0.5}}),
    ("vgg11", 32, {"head": [64]}),
    ("vgg16", 32, {}),
    ("mobilenet_v3_small", 32, {}),
    ("densenet121", 32, {}),
    ("squeezenet1_0", 32, {"head": [64]}),
    ("inception_v3", 75, {}),
    ("convnext_tiny", 32, {}),
]
HEAVY_CHANNELS = {"vgg11": 1, "vgg16": 3, "wide_resnet50_2": 3, "convnext_tiny": 3}  # the slowest builds run once
FORWARD_RUNS = [
    pytest.param(arch, size, options, channels, id=f"{arch}-{size}px-{channels}ch-{index}")
    for index, (arch, size, options) in enumerate(FORWARD_CASES)
    for channels in ((HEAVY_CHANNELS[arch],) if arch in HEAVY_CHANNELS else (1, 3))
]


@pytest.mark.parametrize(("arch", "size", "options", "channels"), FORWARD_RUNS)
def test_cpu_forward(arch: str, size: int, options: dict, channels: int) -> None:
    torch.manual_seed(0)
    model = build(arch, num_outputs=5, channels=channels, size=size, **options)
    with torch.no_grad():
        train_out = model.train()(torch.randn(2, channels, size, size))
        eval_out = model.eval()(torch.randn(2, channels, size, size))
    assert isinstance(train_out, torch.Tensor) and train_out.shape == (2, 5)
    assert eval_out.shape == (2, 5) and torch.isfinite(eval_out).all()


# ---------------------------------------------------------------- heads


def test_plain_head_keeps_a_linear_in_place() -> None:
    model = build_meta("resnet18")
    assert isinstance(model.fc, nn.Linear) and model.fc.out_features == 10
    assert head_names(model) == ("fc",)


def test_dropout_is_inserted_when_the_arch_has_none_before_the_classifier() -> None:
    model = build_meta("resnet18", dropout=0.3)
    assert [type(m) for m in model.fc] == [nn.Dropout, nn.Linear] and model.fc[0].p == 0.3
    alexnet = build_meta("alexnet", size=64, dropout=0.25)  # ReLU sits right before its last Linear
    assert isinstance(alexnet.classifier[6][0], nn.Dropout) and alexnet.classifier[6][0].p == 0.25


@pytest.mark.parametrize(("arch", "dropout_at"), [("efficientnet_b0", "classifier.0"), ("mobilenet_v3_small", "classifier.2"), ("vgg11", "classifier.5")])
def test_existing_dropout_gets_the_new_p(arch: str, dropout_at: str) -> None:
    model = build_meta(arch, dropout=0.7)
    assert model.get_submodule(dropout_at).p == 0.7
    assert isinstance(output_layer(model), nn.Linear)
    assert sum(isinstance(m, nn.Dropout) for m in model.get_submodule(head_names(model)[0]).modules()) == 0


def test_mlp_head() -> None:
    model = build_meta("resnet18", head=[64, 32], dropout=0.2, activation="gelu")
    assert [type(m) for m in model.fc] == [nn.Dropout, nn.Linear, nn.GELU, nn.Dropout, nn.Linear, nn.GELU, nn.Dropout, nn.Linear]
    assert [m.out_features for m in model.fc if isinstance(m, nn.Linear)] == [64, 32, 10]


def test_squeezenet_final_conv_and_no_relu_on_logits() -> None:
    model = build_meta("squeezenet1_0", head=[64])
    assert [m.out_channels for m in model.classifier[1] if isinstance(m, nn.Conv2d)] == [64, 10]
    assert isinstance(model.classifier[2], nn.Identity)


# ---------------------------------------------------------------- simplenet


def test_simplenet_skips_pooling_at_one_pixel() -> None:
    model = build("simplenet", size=8, blocks=[8, 8, 8, 8, 8])
    assert [type(block.pool) for block in model.blocks] == [nn.MaxPool2d] * 3 + [nn.Identity] * 2
    assert model(torch.randn(3, 3, 8, 8)).shape == (3, 10)


@pytest.mark.parametrize("activation", typing.get_args(ModelConfig.model_fields["activation"].annotation))
def test_simplenet_activations(activation: str) -> None:
    model = build("simplenet", channels=1, size=8, activation=activation, batch_norm=True, skip=True)
    expected = {"relu": nn.ReLU, "gelu": nn.GELU, "silu": nn.SiLU, "leaky_relu": nn.LeakyReLU, "elu": nn.ELU, "tanh": nn.Tanh}
    assert any(isinstance(m, expected[activation]) for m in model.modules())
    assert sum(isinstance(m, nn.BatchNorm2d) for m in model.modules()) == 4
    assert isinstance(model.blocks[0].shortcut, nn.Conv2d) and model.blocks[0].shortcut.kernel_size == (1, 1)
    assert model(torch.randn(2, 1, 8, 8)).shape == (2, 10)


def test_simplenet_learns_8x8_digits() -> None:
    from sklearn.datasets import load_digits

    digits = load_digits()
    images = torch.tensor(digits.images, dtype=torch.float32).unsqueeze(1) / 16.0
    labels = torch.tensor(digits.target)
    generator = torch.Generator().manual_seed(0)
    order = torch.randperm(len(labels), generator=generator)
    train, test = order[:1400], order[1400:]
    torch.manual_seed(0)
    model = build("simplenet", channels=1, size=8, batch_norm=True)
    optimizer = torch.optim.Adam(model.parameters(), lr=3e-3)
    for _epoch in range(4):
        model.train()
        for batch in train[torch.randperm(len(train), generator=generator)].split(64):
            optimizer.zero_grad()
            nn.functional.cross_entropy(model(images[batch]), labels[batch]).backward()
            optimizer.step()
    with torch.no_grad():
        accuracy = (model.eval()(images[test]).argmax(1) == labels[test]).float().mean().item()
    assert accuracy > 0.95


# ---------------------------------------------------------------- small_input


@pytest.mark.parametrize(
    ("small_input", "side"),
    [(None, 1), ({"stride1": 0}, 2), ({"stride1": 1}, 4), ({"stride1": 2}, 8), ({"remove_maxpool": False, "stride1": 2}, 4)],
)
def test_resnet_small_input_map_sizes(small_input: dict | None, side: int) -> None:
    model = build_meta("resnet18", small_input=small_input)
    assert map_size_before_pool(model, 32) == side


def test_resnet_block_stride_and_its_shortcut_change_together() -> None:
    model = build_meta("resnet50", small_input={"stride1": 2})
    assert model.conv1.stride == (1, 1)
    assert model.layer2[0].conv2.stride == (1, 1) and model.layer2[0].downsample[0].stride == (1, 1)
    assert model.layer3[0].conv2.stride == (2, 2) and model.layer3[0].downsample[0].stride == (2, 2)
    assert isinstance(model.maxpool, nn.Identity)


def test_efficientnet_v2_small_input() -> None:
    assert map_size_before_pool(build_meta("efficientnet_v2_s", size=64), 64) == 2
    assert map_size_before_pool(build_meta("efficientnet_v2_s", size=64, small_input={"stride1": 2}), 64) == 8


def test_vgg_stride1_removes_max_pools() -> None:
    model = build_meta("vgg11", small_input={"stride1": 2})
    assert sum(isinstance(m, nn.MaxPool2d) for m in model.features) == 3
    assert map_size_before_pool(model, 32) == 4


def test_small_input_errors() -> None:
    with pytest.raises(CvtoolError, match=r"model.small_input: not supported for mobilenet_v2 \(supported: ResNet"):
        build_meta("mobilenet_v2", small_input={})
    with pytest.raises(CvtoolError, match="model.small_input.stride1: resnet18 has only 4 stride-2"):
        build_meta("resnet18", small_input={"stride1": 5})


# ---------------------------------------------------------------- ShakeDrop


def test_shakedrop_forward_and_backward_coefficients() -> None:
    torch.manual_seed(0)
    branch = torch.ones(20_000, 1, requires_grad=True)
    forward = ShakeDropFunction.apply(branch, 0.5)
    forward.sum().backward()
    forward, backward = forward.detach().squeeze(1), branch.grad.squeeze(1)
    kept = forward == 1.0
    assert 0.45 < kept.float().mean() < 0.55  # b ~ Bernoulli(1 - p)
    assert (backward[kept] == 1.0).all()
    alpha, beta = forward[~kept], backward[~kept]
    assert alpha.min() < -0.9 and alpha.max() <= 1.0 and abs(alpha.mean()) < 0.03  # α ~ U[-1, 1]
    assert beta.min() >= 0.0 and beta.max() <= 1.0 and abs(beta.mean() - 0.5) < 0.03  # β ~ U[0, 1]
    assert (alpha != beta).all()


def test_shakedrop_training_is_stochastic_with_the_eval_mean() -> None:
    torch.manual_seed(0)
    shakedrop, branch = ShakeDrop(0.3), torch.randn(1, 4, 2, 2)
    draws = shakedrop.train()(branch.expand(50_000, -1, -1, -1))
    assert draws.unique(dim=0).shape[0] > 100
    assert torch.allclose(draws.mean(0, keepdim=True), shakedrop.eval()(branch), atol=0.02)
    assert torch.equal(shakedrop.eval()(branch), branch * 0.7)


def _shakedrops(model: nn.Module) -> dict[str, float]:
    return {name: m.p for name, m in model.named_modules() if isinstance(m, ShakeDrop)}


def test_shakedrop_placement_and_linear_decay() -> None:
    assert _shakedrops(build_meta("resnet18", shakedrop={"p": 0.5})) == {"layer3.0.bn2.1": 0.5, "layer3.1.bn2.1": 0.5}
    decayed = _shakedrops(build_meta("resnet50", shakedrop={"p": 0.5, "at": "all"}))
    assert len(decayed) == 16 and all(name.endswith("bn3.1") for name in decayed)
    assert list(decayed.values()) == pytest.approx([0.5 * layer / 16 for layer in range(1, 17)])
    efficient = _shakedrops(build_meta("efficientnet_v2_s", shakedrop={"p": 0.5}))
    assert len(efficient) == 5 and all(name.startswith("features.4.") for name in efficient)


def test_shakedrop_at_one_block() -> None:
    one = {"p": 0.5, "at": {"stage": 3, "block": 3}}
    assert _shakedrops(build_meta("efficientnet_v2_s", shakedrop=one)) == {"features.4.3.stochastic_depth.1": 0.5}
    assert _shakedrops(build_meta("resnet50", shakedrop={"p": 0.3, "at": {"stage": 0, "block": 2}})) == {
        "layer1.2.bn3.1": 0.3}
    simple = build("simplenet", size=8, skip=True, blocks=[8, 8, 8], shakedrop={"p": 0.2, "at": {"stage": 1, "block": 0}})
    assert _shakedrops(simple) == {"blocks.1.branch_end.1": 0.2}
    model = build("efficientnet_v2_s", shakedrop=one).eval()
    block = model.features[4][3]
    x = torch.randn(2, block.block[0][0].in_channels, 4, 4)
    with torch.no_grad():
        assert torch.equal(block(x), x + 0.5 * block.block(x))


@pytest.mark.parametrize(("at", "message"), [
    ({"stage": 6, "block": 0}, "model.shakedrop.at.stage: efficientnet_v2_s has stages 0-5, not 6"),
    ({"stage": 3, "block": 6}, "model.shakedrop.at.block: efficientnet_v2_s stage 3 has blocks 0-5, not 6 "
                               "(residual: 1, 2, 3, 4, 5)"),
    ({"stage": 3, "block": 0}, "model.shakedrop.at.block: efficientnet_v2_s features.4.0 (stage 3, block 0) has "
                               "no residual branch; residual blocks of stage 3: 1, 2, 3, 4, 5"),
])
def test_shakedrop_block_errors_name_the_blocks(at: dict, message: str) -> None:
    with pytest.raises(CvtoolError) as error:
        build_meta("efficientnet_v2_s", shakedrop={"p": 0.5, "at": at})
    assert str(error.value) == message


def test_shakedrop_eval_is_x_plus_expected_branch() -> None:
    model = build("efficientnet_b0", shakedrop={"p": 0.5}).eval()
    block = model.features[4][1]
    x = torch.randn(2, block.block[0][0].in_channels, 4, 4)
    with torch.no_grad():
        assert torch.equal(block(x), x + 0.5 * block.block(x))
    resnet = build("resnet18", shakedrop={"p": 0.25, "at": "all"}).eval()
    basic = resnet.layer1[1]
    x = torch.randn(2, 64, 4, 4)
    with torch.no_grad():
        branch = basic.bn2[0](basic.conv2(basic.relu(basic.bn1(basic.conv1(x)))))
        p = basic.bn2[1].p
        assert p == 0.25 * 2 / 8  # second of eight blocks
        assert torch.equal(basic(x), torch.relu(x + (1 - p) * branch))


def test_shakedrop_training_forward_is_stochastic_and_p0_is_plain_residual() -> None:
    x = torch.randn(4, 3, 8, 8)
    model = build("simplenet", size=8, skip=True, shakedrop={"p": 0.5, "at": "all"}).train()
    assert not torch.equal(model(x), model(x))
    torch.manual_seed(1)
    plain = build("resnet18", size=32).train()
    torch.manual_seed(1)
    with_p0 = build("resnet18", size=32, shakedrop={"p": 0.0, "at": "all"}).train()
    assert len(_shakedrops(with_p0)) == 8
    with torch.no_grad():
        assert torch.equal(plain(x), with_p0(x))


def test_shakedrop_errors() -> None:
    with pytest.raises(CvtoolError, match=r"model.shakedrop: not supported for mobilenet_v2 \(supported: ResNet"):
        build_meta("mobilenet_v2", shakedrop={})
    with pytest.raises(CvtoolError, match="model.shakedrop: simplenet needs model.skip: true"):
        build_meta("simplenet", shakedrop={})


def test_shakedrop_eval_graph_exports_to_onnx(tmp_path: Path) -> None:
    import onnxruntime

    model = build("simplenet", channels=1, size=8, skip=True, shakedrop={"p": 0.5, "at": "all"}).eval()
    x = torch.randn(2, 1, 8, 8)
    torch.onnx.export(model, (x,), tmp_path / "m.onnx", dynamo=True, verbose=False)
    session = onnxruntime.InferenceSession(str(tmp_path / "m.onnx"))
    (out,) = session.run(None, {session.get_inputs()[0].name: x.numpy()})
    assert torch.allclose(torch.from_numpy(out), model(x), atol=1e-5)


# ---------------------------------------------------------------- pretrained files


@pytest.fixture(scope="module")
def resnet18_file(tmp_path_factory: pytest.TempPathFactory) -> tuple[Path, dict[str, torch.Tensor]]:
    torch.manual_seed(3)
    state = torchvision.models.resnet18(num_classes=1000).state_dict()
    path = tmp_path_factory.mktemp("weights") / "resnet18.pth"
    torch.save(state, path)
    return path, state


@pytest.mark.parametrize("nesting", [None, "state_dict", "model"])
def test_pretrained_round_trip(resnet18_file: tuple[Path, dict], tmp_path: Path, nesting: str | None) -> None:
    path, state = resnet18_file
    if nesting:
        path = tmp_path / "nested.pt"
        torch.save({nesting: state, "epoch": 3}, path)
    model = build("resnet18", num_outputs=10, pretrained=path)
    loaded = model.state_dict()
    backbone = [key for key in state if not key.startswith(("fc.", "conv1."))]
    assert all(torch.equal(loaded[key], state[key]) for key in backbone)
    assert torch.equal(loaded["conv1.weight"], state["conv1.weight"])
    assert model.fc.out_features == 10


def test_pretrained_grey_first_conv_sums_rgb(resnet18_file: tuple[Path, dict]) -> None:
    path, state = resnet18_file
    model = build("resnet18", channels=1, pretrained=path)
    assert torch.allclose(model.conv1.weight, state["conv1.weight"].sum(dim=1, keepdim=True))


def test_pretrained_loads_with_weights_only(resnet18_file: tuple[Path, dict], monkeypatch: pytest.MonkeyPatch) -> None:
    calls: list[dict] = []
    original = torch.load

    def spy(*args: object, **kwargs: object) -> object:
        calls.append(kwargs)
        return original(*args, **kwargs)

    monkeypatch.setattr(torch, "load", spy)
    build("resnet18", pretrained=resnet18_file[0])
    assert calls == [{"map_location": "cpu", "weights_only": True}]


def test_pretrained_errors(resnet18_file: tuple[Path, dict], tmp_path: Path) -> None:
    with pytest.raises(CvtoolError, match="model.pretrained: file not found: .*nope.pth"):
        build_meta("resnet18", pretrained=tmp_path / "nope.pth")
    renamed = {("backbone." + key if key.startswith("layer4") else key): value for key, value in resnet18_file[1].items()}
    torch.save(renamed, tmp_path / "other.pth")
    pattern = r"model.pretrained: weights do not fit resnet18: \d+ missing keys \(e.g. layer4\..+\), \d+ unexpected \(e.g. backbone\.layer4\..+\)"
    with pytest.raises(CvtoolError, match=pattern):
        build("resnet18", pretrained=tmp_path / "other.pth")
    torch.save({"conv1.weight": torch.zeros(1), "note": Fraction(1, 3)}, tmp_path / "unsafe.pth")
    with pytest.raises(CvtoolError, match="model.pretrained: cannot read"):
        build("resnet18", pretrained=tmp_path / "unsafe.pth")


def test_pretrained_googlenet_file_with_aux_heads(tmp_path: Path) -> None:
    state = torchvision.models.googlenet(aux_logits=True, init_weights=False).state_dict()
    assert any(key.startswith("aux1.") for key in state)
    torch.save(state, tmp_path / "googlenet.pth")
    model = build("googlenet", num_outputs=3, pretrained=tmp_path / "googlenet.pth")
    assert torch.equal(model.state_dict()["inception5b.branch1.conv.weight"], state["inception5b.branch1.conv.weight"])
    assert model.train()(torch.randn(2, 3, 32, 32)).shape == (2, 3)


# ---------------------------------------------------------------- freezing


def test_count_parameters() -> None:
    total, trainable = count_parameters(build_meta("resnet18"))
    assert total == trainable == 11_689_512 - 990 * 513  # torchvision's count minus 990 classes


def test_freeze_backbone_and_unfreeze_last() -> None:
    model = build("resnet18", head=[16])
    head = 512 * 16 + 16 + 16 * 10 + 10
    set_trainable(model, FreezeConfig(), epoch=1)
    assert count_parameters(model)[1] == head
    set_trainable(model, FreezeConfig(unfreeze_last=2), epoch=1)  # layer4.1.conv2 + layer4.1.bn2
    assert count_parameters(model)[1] == head + 512 * 512 * 9 + 2 * 512
    assert model.layer4[1].conv2.weight.requires_grad and not model.layer4[1].conv1.weight.requires_grad
    set_trainable(model, FreezeConfig(backbone=False), epoch=1)
    assert count_parameters(model)[1] == count_parameters(model)[0]
    set_trainable(model, None, epoch=1)
    assert count_parameters(model)[1] == count_parameters(model)[0]


def test_unfreeze_at_epoch() -> None:
    model = build_meta("efficientnet_b0")
    cfg = FreezeConfig(unfreeze_at_epoch=3)
    set_trainable(model, cfg, epoch=2)
    assert count_parameters(model)[1] == 1280 * 10 + 10
    set_trainable(model, cfg, epoch=3)
    assert count_parameters(model)[1] == count_parameters(model)[0]


def test_frozen_batchnorm_keeps_running_stats() -> None:
    model = build("resnet18", size=32)
    set_trainable(model, FreezeConfig(unfreeze_last=2), epoch=1)
    model.train()
    frozen_batchnorm_eval(model)
    norms = [m for m in model.modules() if isinstance(m, nn.BatchNorm2d)]
    assert len(norms) == 20 and sum(m.training for m in norms) == 1  # only layer4.1.bn2 trains
    assert not model.bn1.training and model.layer4[1].bn2.training
    before = model.bn1.running_mean.clone(), model.layer4[1].bn2.running_mean.clone()
    model(torch.randn(4, 3, 16, 16) * 3 + 1)
    assert torch.equal(model.bn1.running_mean, before[0])
    assert not torch.equal(model.layer4[1].bn2.running_mean, before[1])


def test_simplenet_avg_builds_global_average_pooling() -> None:
    model = build("simplenet", size=32, blocks=[8, 16])
    assert isinstance(model.pool, nn.AdaptiveAvgPool2d)
    assert (model.fc.in_features, model.fc.out_features) == (16, 10)
    flat = build("simplenet", size=32, blocks=[8, 16], pool="flatten")
    assert isinstance(flat.pool, nn.Identity) and flat.fc.in_features == 16 * 8 * 8


STRIDE1_RESNET18 = {
    1: ["conv1"],
    2: ["conv1", "layer2.0.conv1", "layer2.0.downsample.0"],
    3: ["conv1", "layer2.0.conv1", "layer2.0.downsample.0", "layer3.0.conv1", "layer3.0.downsample.0"],
}


@pytest.mark.parametrize("count", sorted(STRIDE1_RESNET18))
def test_stride1_lists_the_changed_modules(count: int) -> None:
    from cvtool.models.surgery import small_input_changes
    from cvtool.recipe.model_config import SmallInput

    expected = STRIDE1_RESNET18[count]
    assert small_input_changes(SmallInput(remove_maxpool=False, stride1=count), "resnet18") == expected
    assert small_input_changes(SmallInput(stride1=count), "resnet18") == ["maxpool", *expected]
    model = build_meta("resnet18", small_input={"remove_maxpool": False, "stride1": count})
    unit_strides = [name for name, m in model.named_modules() if isinstance(m, nn.Conv2d) and m.stride == (1, 1)
                    and name in {n for names in STRIDE1_RESNET18.values() for n in names}]
    assert unit_strides == expected
