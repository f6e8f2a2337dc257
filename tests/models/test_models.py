"""Contract and hand-checked tests for the model zoo (sparsetrain.models)."""
from __future__ import annotations

import re

import pytest
import torch
import torchvision
from torch import nn

from sparsetrain.data.base import DataInfo
from sparsetrain.errors import ConfigError
from sparsetrain.models import MODELS, build_model, count_parameters, model_options, small_dense_width

MNIST = DataInfo("mnist", (1, 28, 28), 10)
CIFAR = DataInfo("cifar10", (3, 32, 32), 10)
LM = DataInfo("tiny_lm", (12,), 37, task="lm")
FLAT_MODELS = {"mlp", "lenet300", "lenet5"}


def info_for(name: str) -> DataInfo:
    """A small dataset suited to model ``name`` (LMs are named *_lm)."""
    if name.endswith("_lm"):
        return LM
    return MNIST if name in FLAT_MODELS else CIFAR


def batch_for(info: DataInfo, n: int = 2) -> torch.Tensor:
    if info.task == "lm":
        return torch.randint(0, info.num_classes, (n, *info.input_shape))
    return torch.randn(n, *info.input_shape)


def expected_shape(info: DataInfo, n: int = 2) -> tuple:
    return (n, *info.input_shape, info.num_classes) if info.task == "lm" else (n, info.num_classes)


def meta_count(name: str, info: DataInfo, width: float = 1.0, **options) -> int:
    with torch.device("meta"):
        return count_parameters(build_model(name, info, width, **options))


@pytest.mark.parametrize("name", MODELS.names())
def test_contract_forward_backward(name):
    torch.manual_seed(0)
    info = info_for(name)
    model = build_model(name, info)
    assert re.search(r"(19|20)\d\d", MODELS.get(name).__doc__ or ""), f"{name}: docstring lacks a paper reference"
    out = model(batch_for(info))
    assert out.shape == expected_shape(info)
    out.float().pow(2).mean().backward()
    missing = [n for n, p in model.named_parameters() if p.grad is None]
    assert not missing, f"{name}: parameters without gradient: {missing[:5]}"
    assert all(torch.isfinite(p.grad).all() for p in model.parameters())


@pytest.mark.parametrize("name", MODELS.names())
def test_width_scales_params_monotonically_and_keeps_output(name):
    info = info_for(name)
    counts = [meta_count(name, info, w) for w in (0.25, 0.5, 1.0, 1.5)]
    assert counts == sorted(set(counts)), f"{name}: counts not strictly increasing: {counts}"
    model = build_model(name, info, width=0.25).eval()
    with torch.no_grad():
        assert model(batch_for(info)).shape == expected_shape(info)


def test_wrn_22_2_parameter_count_by_hand():
    # Pre-activation WRN-22-2 (n = (22-4)/6 = 3 blocks per group; widths 16, 32, 64, 128), 10 classes.
    # stem conv 3*16*9 = 432
    # group 1 (16->32): block1 BN16 32 + conv 16*32*9=4608 + BN32 64 + conv 32*32*9=9216 + 1x1 16*32=512
    #   = 14,432; blocks 2-3: (64 + 9216) * 2 = 18,560 each -> 51,552
    # group 2 (32->64): 64 + 18,432 + 128 + 36,864 + 2,048 = 57,536; + 2 * (128 + 36,864) * 2 = 147,968
    #   -> 205,504
    # group 3 (64->128): 128 + 73,728 + 256 + 147,456 + 8,192 = 229,760; + 2 * 295,424 -> 820,608
    # final BN 256 + fc 128*10 + 10 = 1,546
    # total 432 + 51,552 + 205,504 + 820,608 + 1,546 = 1,079,642 (the "~1.1M" of the WRN/RigL papers)
    model = build_model("wrn-22-2", CIFAR)
    assert count_parameters(model) == 1_079_642
    assert count_parameters(build_model("wrn", CIFAR, depth=22, widen=2)) == 1_079_642


def test_lenet_parameter_counts_by_hand():
    # LeNet-300-100: 784*300+300 + 300*100+100 + 100*10+10 = 235,500 + 30,100 + 1,010
    assert count_parameters(build_model("lenet300", MNIST)) == 266_610
    assert count_parameters(build_model("mlp", MNIST)) == 266_610
    # LeNet-5 at 28x28 (padded to keep 5x5x16 = 400 features): 156 + 2,416 + 48,120 + 10,164 + 850
    assert count_parameters(build_model("lenet5", MNIST)) == 61_706
    cifar_lenet = build_model("lenet5", CIFAR)  # 32x32x3 needs no padding: conv1 3*6*25+6 = 456
    assert count_parameters(cifar_lenet) == 61_706 - 156 + 456
    assert cifar_lenet.features[0].padding == (0, 0)


@pytest.mark.parametrize("shape", [(64,), (1, 8, 8)])
def test_mlp_accepts_digits_features(shape):
    info = DataInfo("digits", shape, 10)
    model = build_model("mlp", info, hidden=(32,))
    assert model(torch.randn(3, *shape)).shape == (3, 10)
    assert model.layers[0].in_features == 64


def test_lenet5_on_tiny_digits_images():
    info = DataInfo("digits", (1, 8, 8), 10)
    assert build_model("lenet5", info)(torch.randn(2, 1, 8, 8)).shape == (2, 10)


def test_width_rounds_hidden_sizes_and_keeps_io():
    model = build_model("mlp", MNIST, width=0.5, hidden=(301, 3))
    sizes = [(m.in_features, m.out_features) for m in model.layers if isinstance(m, nn.Linear)]
    assert sizes == [(784, 151), (151, 2), (2, 10)]  # round(150.5) = 151 (half up), round(1.5) = 2
    tiny = build_model("mlp", MNIST, width=1e-3)
    assert [m.out_features for m in tiny.layers if isinstance(m, nn.Linear)] == [1, 1, 10]


@pytest.mark.parametrize("name, fraction", [("lenet300", 0.1), ("wrn-22-2", 0.2), ("mobilenet_v2", 0.3),
                                            ("resnet18", 0.05), ("gru_lm", 0.5)])
def test_small_dense_width_matches_target(name, fraction):
    info = info_for(name)
    target = fraction * meta_count(name, info)
    width = small_dense_width(name, info, target)
    assert 0 < width < 1
    assert meta_count(name, info, width) == pytest.approx(target, rel=0.03)


def test_small_dense_width_exact_target_and_options():
    dense = meta_count("mlp", MNIST, hidden=(50, 20))
    width = small_dense_width("mlp", MNIST, dense, hidden=(50, 20))
    assert meta_count("mlp", MNIST, width, hidden=(50, 20)) == dense
    with pytest.raises(ConfigError, match="cannot be made as small"):
        small_dense_width("lenet300", MNIST, 10)


def test_resnet_stems_and_torchvision_equivalence():
    cifar = build_model("resnet18", CIFAR)
    assert cifar.conv1.kernel_size == (3, 3) and cifar.conv1.stride == (1, 1)
    assert isinstance(cifar.maxpool, nn.Identity)
    info = DataInfo("imagenet_tiny", (3, 96, 96), 1000)
    with torch.device("meta"):
        for name in ("resnet18", "resnet50"):
            ours = build_model(name, info).state_dict()
            ref = getattr(torchvision.models, name)(weights=None).state_dict()
            assert {k: v.shape for k, v in ours.items()} == {k: v.shape for k, v in ref.items()}
        ours = build_model("vgg16", info).state_dict()
        ref = torchvision.models.vgg16_bn(weights=None).state_dict()
        assert {k: v.shape for k, v in ours.items()} == {k: v.shape for k, v in ref.items()}


def test_resnet50_imagenet_stem_forward():
    torch.manual_seed(0)
    model = build_model("resnet50", DataInfo("imagenet_tiny", (3, 96, 96), 7)).eval()
    assert model.conv1.kernel_size == (7, 7) and isinstance(model.maxpool, nn.MaxPool2d)
    with torch.no_grad():
        assert model(torch.randn(1, 3, 96, 96)).shape == (1, 7)


def test_mobilenet_variants():
    v2 = build_model("mobilenet_v2", CIFAR)
    assert v2.features[0][0].stride == (1, 1) and v2.features[2].conv[1][0].stride == (1, 1)
    big = build_model("mobilenet_v2", CIFAR, variant="imagenet")
    assert big.features[0][0].stride == (2, 2)
    gray = build_model("mobilenet_v2", MNIST, width=0.25).eval()
    with torch.no_grad():
        assert gray(torch.randn(1, 1, 28, 28)).shape == (1, 10)
    v1 = build_model("mobilenet_v1", CIFAR)
    depthwise = [m for m in v1.modules() if isinstance(m, nn.Conv2d) and m.groups > 1]
    assert len(depthwise) == 13 and all(m.groups == m.in_channels for m in depthwise)


def test_tied_lm_shares_embedding_parameter():
    model = build_model("lstm_lm", LM, embed=16, hidden=24, proj=16, tied=True)
    assert model.readout.weight is model.embedding.weight
    untied = build_model("lstm_lm", LM, embed=16, hidden=24, proj=16)
    assert count_parameters(untied) - count_parameters(model) == 37 * 16
    out = model(batch_for(LM))
    out.sum().backward()
    assert model.embedding.weight.grad is not None


def test_paper_char_gru_configuration():
    info = DataInfo("chars", (8,), 256, task="lm")
    model = build_model("gru_lm", info, embed=128, hidden=512, proj=(256, 128), tied=True)
    assert model.rnn.hidden_size == 512 and model.readout.weight is model.embedding.weight
    assert model(torch.randint(0, 256, (1, 8))).shape == (1, 8, 256)


@pytest.mark.parametrize("call, message", [
    (lambda: build_model("nope", CIFAR), "unknown model"),
    (lambda: build_model("mlp", MNIST, hidden_sizes=(3,)), "valid options: hidden"),
    (lambda: build_model("mlp", MNIST, hidden="300"), "positive integers"),
    (lambda: build_model("lenet5", MNIST, width=0), "positive number"),
    (lambda: build_model("lenet5", DataInfo("digits", (64,), 10)), "use 'mlp'"),
    (lambda: build_model("resnet18", LM), "task 'classification'"),
    (lambda: build_model("gru_lm", CIFAR), "task 'lm'"),
    (lambda: build_model("gru_lm", LM, tied=True), "equal embed"),
    (lambda: build_model("wrn", CIFAR, depth=20), "6n\\+4"),
    (lambda: build_model("vgg16", CIFAR, variant="tiny"), "variant must be"),
    (lambda: build_model("wrn-22-2", CIFAR, dropout=1.5), "dropout"),
])
def test_bad_configs_raise_config_error(call, message):
    with pytest.raises(ConfigError, match=message):
        call()


def test_model_options_lists_defaults():
    assert model_options("wrn") == {"depth": 22, "widen": 2, "dropout": 0.0}
    assert model_options("lenet300") == {}
