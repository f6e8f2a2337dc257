"""Exports (sparsity/export.py): channel-pruned smaller models, BSR and 2:4 packing, each equal to
the masked model within float tolerance."""
import pytest
import torch
from torch import nn

from sparsetrain.errors import ConfigError
from sparsetrain.models.lenet import LeNet5
from sparsetrain.models.mlp import MLP
from sparsetrain.sparsity.engine import SparsityEngine
from sparsetrain.sparsity.export import (channel_counts, channel_prune, check_2_4, pack_2_4, to_bsr,
                                         to_semi_structured, unpack_2_4)


def _masked(model, spec, sparsity=0.5, method="static", **kw):
    torch.manual_seed(0)
    return SparsityEngine(model, None, method, sparsity=sparsity, distribution="uniform", dense_first=False,
                          pattern=spec, **kw)


def _params(model):
    return sum(p.numel() for p in model.parameters())


def test_channel_export_of_an_mlp_is_smaller_and_equal():
    torch.manual_seed(0)
    model = MLP(20, [32, 16], 5)
    for m in model.modules():  # non-zero biases: removed units output a constant the next bias absorbs
        if isinstance(m, nn.Linear):
            nn.init.uniform_(m.bias, -0.5, 0.5)
    engine = _masked(model, "channel")
    x = torch.randn(7, 20)
    small = channel_prune(model, engine.masks, x)
    assert channel_counts(small) == {"layers.0": (16, 20), "layers.2": (8, 16), "layers.4": (5, 8)}
    assert _params(small) < _params(model)
    torch.testing.assert_close(small(x[:3]), model.eval()(x[:3]), atol=1e-5, rtol=1e-4)
    y = torch.randn(11, 20)  # other inputs than the traced example
    torch.testing.assert_close(small(y), model(y), atol=1e-5, rtol=1e-4)


def _trained_lenet5(pattern, overrides, biases=False):
    """LeNet-5 after 6 RigL steps (updates every 2) at 50 % with ``pattern``; ``biases``: non-zero
    biases everywhere (an unread channel must then be removed, not folded)."""
    torch.manual_seed(0)
    model = LeNet5(1, 10, (6, 16, 120, 84), (2, 0), (5, 5))
    if biases:
        for m in model.modules():
            if isinstance(m, (nn.Linear, nn.Conv2d)):
                nn.init.uniform_(m.bias, -0.5, 0.5)
    opt = torch.optim.SGD(model.parameters(), lr=0.05, momentum=0.9)
    engine = SparsityEngine(model, opt, "rigl", sparsity=0.5, distribution="uniform", dense_first=False,
                            pattern=pattern, pattern_overrides=overrides, total_steps=20, delta_t=2)
    for _ in range(6):
        x, y = torch.randn(8, 1, 28, 28), torch.randint(0, 10, (8,))
        opt.zero_grad()
        nn.functional.cross_entropy(model(x), y).backward()
        engine.step_optimizer()
    return model, engine


def test_channel_export_of_lenet5_after_training_steps():
    model, engine = _trained_lenet5("channel", {"classifier.4.weight": "unstructured"})
    x = torch.randn(4, 1, 28, 28)
    small = channel_prune(model, engine.masks, x)
    sizes = channel_counts(small)
    assert sizes["features.0"][0] == 3 and sizes["features.3"] == (8, 3, 5, 5) and sizes["classifier.0"] == (60, 200)
    y = torch.randn(5, 1, 28, 28)
    torch.testing.assert_close(small(y), model.eval()(y), atol=1e-5, rtol=1e-4)


def test_input_channel_sparsity_exports_the_layer_before_smaller():
    model, engine = _trained_lenet5("channel:in", {"features.0.weight": "unstructured"}, biases=True)
    used = engine.masks["features.3.weight"].any(dim=(0, 2, 3))
    assert int(used.sum()) == 3  # floor(6 * 0.5) input channels of the second conv
    x = torch.randn(4, 1, 28, 28)
    small = channel_prune(model, engine.masks, x)
    sizes = channel_counts(small)
    # a layer keeps the outputs the next layer reads: the first conv the 3 input channels of the
    # second (its own mask is unstructured); the hidden linear layers the columns the next one keeps
    read_by_fc = engine.masks["classifier.0.weight"].reshape(120, 16, 25).any(dim=2).any(dim=0)
    assert sizes["features.0"] == (3, 1, 5, 5)
    assert sizes["features.3"] == (int(read_by_fc.sum()), 3, 5, 5)
    assert sizes["classifier.0"] == (60, 25 * int(read_by_fc.sum())) and sizes["classifier.2"] == (42, 60)
    y = torch.randn(5, 1, 28, 28)
    torch.testing.assert_close(small(y), model.eval()(y), atol=1e-5, rtol=1e-4)


def test_channel_export_cuts_batchnorm():
    torch.manual_seed(0)
    model = nn.Sequential(nn.Conv2d(3, 8, 3), nn.BatchNorm2d(8), nn.ReLU(), nn.Conv2d(8, 8, 3), nn.ReLU(),
                          nn.Flatten(), nn.Linear(8 * 4 * 4, 6))
    bn = model[1]
    bn.running_mean.uniform_(-1, 1)
    bn.running_var.uniform_(0.5, 2)
    nn.init.uniform_(bn.weight, 0.5, 1.5)
    nn.init.uniform_(bn.bias, -1, 1)
    engine = _masked(model, "channel", include=["0.weight", "3.weight"])
    x = torch.randn(2, 3, 8, 8)
    small = channel_prune(model, engine.masks, x)
    assert small[1].num_features == 4 and small[1].running_mean.shape == (4,)
    assert channel_counts(small)["6"] == (6, 4 * 16)
    y = torch.randn(3, 3, 8, 8)
    torch.testing.assert_close(small(y), model.eval()(y), atol=1e-5, rtol=1e-4)


def test_channel_export_refuses_a_constant_into_a_padded_conv():
    torch.manual_seed(0)
    model = nn.Sequential(nn.Conv2d(3, 8, 3), nn.ReLU(), nn.Conv2d(8, 4, 3, padding=1))
    nn.init.uniform_(model[0].bias, 0.1, 1.0)
    engine = _masked(model, "channel", include=["0.weight"])
    with pytest.raises(ConfigError, match="zero-padded conv '2'"):
        channel_prune(model, engine.masks, torch.randn(1, 3, 6, 6))


def test_bsr_export_stores_only_active_blocks():
    model = nn.Sequential(nn.Linear(16, 32), nn.ReLU(), nn.Linear(32, 8))
    engine = _masked(model, "block:4x4", sparsity=0.75)
    w, m = model[0].weight, engine.masks["0.weight"]
    bsr = to_bsr(w, (4, 4), m)
    assert bsr.values().shape == (int(m.sum()) // 16, 4, 4)
    x = torch.randn(16, 5)
    torch.testing.assert_close(bsr @ x, (w * m) @ x)
    torch.testing.assert_close(bsr.to_dense(), w.detach() * m)
    with pytest.raises(ConfigError, match="3x3 blocks"):
        to_bsr(w, (3, 3))


def test_2_4_packing_roundtrips_and_refuses_dense_weights():
    model = nn.Sequential(nn.Linear(16, 32), nn.ReLU(), nn.Linear(32, 8))
    opt = torch.optim.SGD(model.parameters(), lr=0.1)
    engine = SparsityEngine(model, opt, "rigl", sparsity=0.5, pattern="2:4", total_steps=10, delta_t=1)
    for _ in range(3):
        opt.zero_grad()
        model(torch.randn(4, 16)).sum().backward()
        engine.step_optimizer()
    w = model[0].weight.detach()
    values, pos = pack_2_4(w)
    assert values.shape == (32, 8) and pos.shape == (32, 8) and int(pos.max()) <= 3
    assert torch.equal(unpack_2_4(values, pos), w)
    x = torch.randn(3, 16)
    torch.testing.assert_close(x @ unpack_2_4(values, pos).T, model[0](x) - model[0].bias)
    # a group with fewer than 2 non-zeros pads with zeros at free positions, still 2:4
    odd = torch.tensor([[0.0, 0, 3, 0, 1, 2, 0, 0]])
    assert torch.equal(unpack_2_4(*pack_2_4(odd)), odd)
    with pytest.raises(ConfigError, match="pattern=2:4"):
        check_2_4(torch.ones(2, 8))
    with pytest.raises(ConfigError, match="CUDA"):
        to_semi_structured(w.half())
