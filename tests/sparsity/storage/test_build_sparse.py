"""Models built sparse from the start (``build_sparse``): the plan's exact counts, the dense build's
init values at the pattern, RNNs built compressed, the engine planning a model that already holds
compressed layers, and the one-line errors when the model and the plan disagree."""
import pytest
import torch
from hypothesis import given, settings, strategies as st
from torch import nn

from sparsetrain.errors import ConfigError
from sparsetrain.sparsity.distributions import plan_densities
from sparsetrain.sparsity.engine import SparsityEngine
from sparsetrain.sparsity.storage import BackendPolicy, build_sparse
from sparsetrain.sparsity.storage.build import INIT_RULES, entry_law, reset_init
from sparsetrain.sparsity.storage.conv import SparseConv2d
from sparsetrain.sparsity.storage.csr import SparseLinear
from sparsetrain.sparsity.storage.csr.rnn import SparseLSTM


def mlp():
    return nn.Sequential(nn.Flatten(), nn.Linear(64, 300), nn.ReLU(), nn.Linear(300, 100), nn.ReLU(),
                         nn.Linear(100, 10))


def planned(factory, sparsity, distribution, **rules):
    with torch.device("meta"):
        return plan_densities(factory(), sparsity, distribution, **rules)


def test_with_an_init_callable_values_are_the_dense_builds_at_the_pattern():
    """An init callable materialises each module alone, in model order, so a model whose init is
    each module's reset_parameters draws the very values of its dense build (same global seed)."""
    torch.manual_seed(3)
    dense = mlp()
    torch.manual_seed(3)
    sparse = build_sparse(mlp, 0.9, "erk", seed=0, init=reset_init)
    for i in (1, 3, 5):
        layer = sparse[i]
        assert isinstance(layer, SparseLinear)
        assert torch.equal(layer.values.detach(), dense[i].weight.detach().reshape(-1)[layer.flat_indices()])
        assert torch.equal(layer.bias.detach(), dense[i].bias.detach())


@pytest.mark.parametrize("rule", sorted(INIT_RULES))
@pytest.mark.parametrize("make", [lambda: nn.Linear(300, 200), lambda: nn.Conv2d(24, 40, 3),
                                  lambda: nn.Conv2d(24, 40, 1, bias=False), lambda: nn.LSTM(30, 50),
                                  lambda: nn.GRU(30, 50, bias=False)], ids=["linear", "conv3", "conv1", "lstm", "gru"])
def test_entry_laws_are_the_init_rules_own(rule, make):
    """The law a named rule gives each entry equals the rule applied to a dense module: same
    support and the same first two moments (60,000+ draws each; a wrong bound or std is off by
    far more than the tolerance), zero where the rule zeroes."""
    torch.manual_seed(0)
    with torch.device("meta"):
        module = make()
    law = entry_law(module, rule)
    for _ in range(8 if isinstance(module, nn.Conv2d) else 2):   # enough dense draws to compare moments
        dense = make()
        INIT_RULES[rule](dense)
        for name, p in dense.named_parameters():
            ref = p.detach().reshape(-1)
            got = law(name, 60_000)
            if bool((ref == 0).all()):
                assert bool((got == 0).all()), name
                continue
            assert float(got.abs().max()) <= float(ref.abs().max()) * 1.6 + 1e-6, name
            assert abs(float(got.std()) - float(ref.std())) < 0.1 * float(ref.std()), name
            assert abs(float(got.mean())) < 0.05 * float(ref.std()) + 3 * float(ref.std()) / ref.numel() ** 0.5, name


def test_named_rules_never_hold_a_dense_layer(monkeypatch):
    """With a named rule no planned-compressed layer is materialised densely."""
    from sparsetrain.sparsity.storage import build as B
    seen = []
    original = B._materialise
    monkeypatch.setattr(B, "_materialise", lambda m, init, device: (seen.append(type(m)), original(m, init, device)))
    model = build_sparse(mlp, 0.9, "erk")
    assert all(isinstance(model[i], SparseLinear) for i in (1, 3, 5))
    assert nn.Linear not in seen


@settings(max_examples=15, deadline=None)
@given(sparsity=st.floats(0.5, 0.99), distribution=st.sampled_from(["uniform", "erk", "er"]),
       seed=st.integers(0, 2 ** 31 - 1))
def test_counts_are_the_plans_and_patterns_follow_the_seed(sparsity, distribution, seed):
    plan = planned(mlp, sparsity, distribution)
    a = build_sparse(mlp, sparsity, distribution, seed=seed)
    b = build_sparse(mlp, sparsity, distribution, seed=seed)
    for t in plan.targets:
        module = a.get_submodule(t.module_name)
        if plan.counts[t.name] == t.param.numel():
            assert type(module) is nn.Linear                  # planned dense: nothing to compress
            continue
        assert module.nnz == plan.counts[t.name]
        assert torch.equal(module.flat_indices(), b.get_submodule(t.module_name).flat_indices())
    if distribution == "uniform":                             # the paper's rule keeps the first layer dense
        assert type(a[1]) is nn.Linear


def test_policy_decides_which_layers_are_built_compressed():
    policy = BackendPolicy(min_size=20_000)                   # 64x300 = 19,200 weights: too small
    model = build_sparse(mlp, 0.95, "erk", policy=policy)
    assert type(model[1]) is nn.Linear and isinstance(model[3], SparseLinear)
    plan = planned(mlp, 0.95, "erk")
    opt = torch.optim.SGD(model.parameters(), lr=0.1, momentum=0.9)
    engine = SparsityEngine(model, opt, "rigl", sparsity=0.95, distribution="erk", storage=policy, delta_t=1,
                            total_steps=10)
    assert set(engine.layers) == {"3.weight"} and engine.densities == plan.densities
    assert engine.density_report()["layers"]["1.weight"]["active"] == plan.counts["1.weight"]
    assert int((model[1].weight != 0).sum()) == plan.counts["1.weight"]      # masked by the engine
    x, y = torch.randn(16, 1, 8, 8), torch.randint(0, 10, (16,))
    for _ in range(3):
        opt.zero_grad()
        nn.functional.cross_entropy(model(x), y).backward()
        engine.step_optimizer()
    assert engine.last_update is not None
    for t in plan.targets:                                    # RigL keeps every count
        assert engine.density_report()["layers"][t.name]["active"] == plan.counts[t.name]


def test_the_engine_refuses_a_model_built_with_another_plan():
    model = build_sparse(mlp, 0.9, "erk")
    with pytest.raises(ConfigError, match="plans"):
        SparsityEngine(model, None, "rigl", sparsity=0.8, distribution="erk")
    with pytest.raises(ConfigError, match="keeps it dense"):
        SparsityEngine(model, None, "rigl", sparsity=0.9, distribution="erk", dense_first=True)
    with pytest.raises(ConfigError, match="random masks"):
        SparsityEngine(model, None, "snip", sparsity=0.9, distribution="erk")


def test_lstm_language_model_is_built_with_a_compressed_lstm_and_trains():
    from sparsetrain.data.base import DataInfo
    from sparsetrain.models import build_model

    info = DataInfo(name="toy", task="lm", num_classes=50, input_shape=(12,))
    factory = lambda: build_model("lstm_lm", info, embed=16, hidden=32)  # noqa: E731
    plan = planned(factory, 0.9, "erk")
    torch.manual_seed(0)
    model = build_sparse(factory, 0.9, "erk", seed=2)
    assert isinstance(model.rnn, SparseLSTM)
    for name, layer in model.rnn.matrices().items():
        assert layer.nnz == plan.counts[f"rnn.{name}"]
        bound = 32 ** -0.5                                    # torch's LSTM init, U(-1/sqrt(h), 1/sqrt(h))
        assert float(layer.values.detach().abs().max()) <= bound
    opt = torch.optim.Adam(model.parameters(), lr=1e-3)
    engine = SparsityEngine(model, opt, "set", sparsity=0.9, distribution="erk", delta_t=1, total_steps=10)
    assert {"rnn.weight_ih_l0", "rnn.weight_hh_l0"} <= set(engine.layers)
    tokens = torch.randint(0, 50, (4, 12))
    loss = nn.functional.cross_entropy(model(tokens).reshape(-1, 50), tokens.reshape(-1))
    loss.backward()
    engine.step_optimizer()
    assert engine.layers["rnn.weight_hh_l0"].nnz == plan.counts["rnn.weight_hh_l0"]


def test_tied_parameters_are_refused_with_the_fix():
    from sparsetrain.data.base import DataInfo
    from sparsetrain.models import build_model

    info = DataInfo(name="toy", task="lm", num_classes=50, input_shape=(12,))
    with pytest.raises(ConfigError, match="tied"):
        build_sparse(lambda: build_model("lstm_lm", info, embed=16, hidden=16, tied=True), 0.9)


def test_family_init_rules_match_the_dense_build():
    """WRN's rule (Kaiming fan-out convs, zero classifier bias) applied module by module."""
    from sparsetrain.data.base import DataInfo
    from sparsetrain.models import build_model, init_rule

    info = DataInfo(name="toy", task="classification", num_classes=10, input_shape=(3, 32, 32))
    rule, why = init_rule("wrn-22-2", {})
    assert (rule, why) == ("wrn", None)
    assert init_rule("resnet18", {"zero_init_residual": True})[0] is None
    model = build_sparse(lambda: build_model("wrn-22-2", info), 0.95, "erk", init=rule)
    assert bool((model.fc.bias == 0).all())                    # compressed or (ERK-capped) dense
    convs = [m for m in model.modules() if isinstance(m, SparseConv2d)]
    assert convs
    big = max(convs, key=lambda m: m.nnz)
    std = (2 / (big.out_channels * 9)) ** 0.5
    assert 0.85 * std < float(big.values.detach().std()) < 1.15 * std
