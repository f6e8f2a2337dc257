"""SparsityEngine invariants over random small Linear/Conv2d models (property tests), hooks,
state_dict round trips and user errors (sparsity/engine.py)."""
import copy
import re
import io

import pytest
import torch
from hypothesis import given, settings
from hypothesis import strategies as st
from torch import nn

from sparsetrain import CheckpointError, ConfigError, SparsityEngine
from sparsetrain.sparsity.topk import count_active, count_zeros

PROP = settings(max_examples=25, deadline=None)


# --- random small architectures ------------------------------------------------------------------
@st.composite
def archs(draw):
    """('mlp', dims) or ('cnn', channels, kernels, n_out): 1–3 Linear or 1–2 Conv2d + a Linear."""
    if draw(st.booleans()):
        return ("mlp", tuple(draw(st.lists(st.integers(1, 9), min_size=2, max_size=4))))
    chans = tuple(draw(st.lists(st.integers(1, 4), min_size=2, max_size=3)))
    ks = tuple(draw(st.lists(st.sampled_from([1, 3]), min_size=len(chans) - 1, max_size=len(chans) - 1)))
    return ("cnn", chans, ks, draw(st.integers(1, 5)))


def build(arch, seed=0):
    """The model and the shape of one input example."""
    torch.manual_seed(seed)
    layers = []
    if arch[0] == "mlp":
        dims = arch[1]
        for a, b in zip(dims, dims[1:]):
            layers += [nn.Linear(a, b), nn.Tanh()]
        return nn.Sequential(*layers[:-1]), (dims[0],)
    chans, ks, n_out = arch[1:]
    for (a, b), k in zip(zip(chans, chans[1:]), ks):
        layers += [nn.Conv2d(a, b, k, padding="same"), nn.Tanh()]
    layers += [nn.Flatten(), nn.Linear(chans[-1] * 9, n_out)]
    return nn.Sequential(*layers), (chans[0], 3, 3)


def batch(model, in_shape, gen, size=4):
    x = torch.randn(size, *in_shape, generator=gen)
    with torch.no_grad():
        n_out = model(x).shape[1]
    return x, torch.randn(size, n_out, generator=gen)


def counts(engine):
    return {n: int(m.sum()) for n, m in engine.masks.items()}


def assert_masked_zero(engine):
    for t in engine.targets:
        assert bool((t.param.detach()[~engine.masks[t.name]] == 0).all()), t.name


def per_elem_state(opt, p):
    return {k: v for k, v in opt.state.get(p, {}).items() if torch.is_tensor(v) and v.shape == p.shape}


def train_step(model, opt, engine, x, y):
    """One step through the hooks; returns what after_step changed, for the invariant checks."""
    opt.zero_grad()
    nn.functional.mse_loss(model(x), y).backward()
    ran = engine.after_backward()
    if ran:
        opt.step()
    before = {t.name: (engine.masks[t.name].clone(), t.param.detach().clone(),
                       {k: v.clone() for k, v in per_elem_state(opt, t.param).items()}) for t in engine.targets}
    engine.after_step()
    return ran, before


# --- init ---------------------------------------------------------------------------------------
@PROP
@given(arch=archs(), sparsity=st.floats(0, 0.99), dist=st.sampled_from(["uniform", "erk", "er"]),
       seed=st.integers(0, 100))
def test_init_counts_are_exact(arch, sparsity, dist, seed):
    model, _ = build(arch)
    eng = SparsityEngine(model, None, "static", sparsity=sparsity, distribution=dist, dense_first=False, seed=seed)
    for t in eng.targets:
        n = t.param.numel()
        assert int(eng.masks[t.name].sum()) == count_active(n, eng.densities[t.name])
        if dist == "uniform":
            assert int(eng.masks[t.name].sum()) == n - count_zeros(n, sparsity)
    assert_masked_zero(eng)


def test_same_seed_same_masks_different_seed_different_masks():
    def masks(seed, init_seed=0):
        model = nn.Sequential(nn.Linear(20, 30), nn.ReLU(), nn.Conv1d(30, 8, 1))
        torch.manual_seed(init_seed)
        return SparsityEngine(model, None, "set", sparsity=0.7, total_steps=10, seed=seed).masks

    a, b, c = masks(1), masks(1, init_seed=5), masks(2)
    assert all(torch.equal(a[n], b[n]) for n in a)  # independent of the global RNG and the weights
    assert all(not torch.equal(a[n], c[n]) for n in a)


# --- counts and zeros under updates --------------------------------------------------------------
@PROP
@given(arch=archs(), sparsity=st.floats(0, 0.99), method=st.sampled_from(["static", "set", "rigl"]),
       fractions=st.lists(st.floats(0, 1), min_size=1, max_size=5), seed=st.integers(0, 100))
def test_direct_updates_keep_per_layer_counts(arch, sparsity, method, fractions, seed):
    model, in_shape = build(arch)
    eng = SparsityEngine(model, None, method, sparsity=sparsity, total_steps=10, seed=seed)
    start = counts(eng)
    gen = torch.Generator().manual_seed(seed)
    for f in fractions:
        x, y = batch(model, in_shape, gen)
        model.zero_grad()
        nn.functional.mse_loss(model(x), y).backward()
        eng.update_masks(f)
        assert counts(eng) == start
        assert_masked_zero(eng)


@PROP
@given(arch=archs(), sparsity=st.floats(0, 0.99), method=st.sampled_from(["static", "set", "rigl"]),
       dist=st.sampled_from(["uniform", "erk"]), adam=st.booleans(), seed=st.integers(0, 100))
def test_hooks_keep_counts_zeros_and_zero_init_new_connections(arch, sparsity, method, dist, adam, seed):
    model, in_shape = build(arch, seed)
    opt = (torch.optim.Adam(model.parameters(), lr=0.05) if adam else
           torch.optim.SGD(model.parameters(), lr=0.1, momentum=0.9, weight_decay=1e-3))
    opts = {} if method == "static" else {"delta_t": 2, "alpha": 0.5, "decay": "constant", "end_fraction": 1.0}
    eng = SparsityEngine(model, opt, method, sparsity=sparsity, distribution=dist, total_steps=7, seed=seed, **opts)
    start = counts(eng)
    gen = torch.Generator().manual_seed(seed)
    for _ in range(7):  # updates at 2, 4, 6
        _, before = train_step(model, opt, eng, *batch(model, in_shape, gen))
        assert counts(eng) == start
        assert_masked_zero(eng)
        for t in eng.targets:
            old, w_old, state_old = before[t.name]
            new, w = eng.masks[t.name], t.param.detach()
            fresh, kept = new & ~old, new & old
            # survivors (including dropped-and-regrown ones) keep value and optimizer state
            assert torch.equal(w[kept], w_old[kept])
            assert (w[fresh] == 0).all()
            for k, v in per_elem_state(opt, t.param).items():
                assert (v[fresh] == 0).all(), k
                assert torch.equal(v[kept], state_old[k][kept]), k


def test_gradients_of_masked_weights_are_zeroed_after_backward():
    torch.manual_seed(0)  # tanh, not ReLU: no dead unit can make a masked gradient zero by chance
    model = nn.Sequential(nn.Linear(6, 8), nn.Tanh(), nn.Linear(8, 2))
    eng = SparsityEngine(model, None, "set", sparsity=0.5, total_steps=10)
    nn.functional.mse_loss(model(torch.randn(5, 6)), torch.randn(5, 2)).backward()
    assert (model[2].weight.grad[~eng.masks["2.weight"]] != 0).any()  # dense before the hook
    assert eng.after_backward() is True
    for t in eng.targets:
        assert (t.param.grad[~eng.masks[t.name]] == 0).all()
    assert (model[0].bias.grad != 0).any()  # biases untouched


def test_step_optimizer_and_last_update():
    model = nn.Sequential(nn.Linear(6, 8), nn.ReLU(), nn.Linear(8, 2))
    opt = torch.optim.SGD(model.parameters(), lr=0.1)
    eng = SparsityEngine(model, opt, "rigl", sparsity=0.5, total_steps=8, delta_t=2, end_fraction=1.0)
    ran = []
    for _ in range(8):
        opt.zero_grad()
        nn.functional.mse_loss(model(torch.randn(5, 6)), torch.randn(5, 2)).backward()
        ran.append(eng.step_optimizer())
    assert ran == [True, True, False, True, False, True, False, True]  # updates at 2, 4, 6
    assert eng.step == 8 and eng.last_update["step"] == 6
    # cosine: f(6) = 0.3/2·(1 + cos(π·6/8))
    assert eng.last_update["drop_fraction"] == pytest.approx(0.15 * (1 + torch.cos(torch.tensor(0.75 * torch.pi)).item()))
    assert set(eng.last_update["per_layer"]) == {"0.weight", "2.weight"}


# --- state_dict round trip ------------------------------------------------------------------------
def fresh_setup(method, model_seed, engine_seed):
    torch.manual_seed(model_seed)
    model = nn.Sequential(nn.Linear(8, 16), nn.ReLU(), nn.Linear(16, 12), nn.ReLU(), nn.Linear(12, 3))
    opt = torch.optim.SGD(model.parameters(), lr=0.05, momentum=0.9)
    eng = SparsityEngine(model, opt, method, sparsity=0.75, total_steps=40, delta_t=3, end_fraction=1.0,
                         seed=engine_seed)
    return model, opt, eng


def data(n, seed=0):
    g = torch.Generator().manual_seed(seed)
    return [(torch.randn(6, 8, generator=g), torch.randn(6, 3, generator=g)) for _ in range(n)]


def roundtrip(obj):
    buf = io.BytesIO()
    torch.save(obj, buf)
    buf.seek(0)
    return torch.load(buf)  # weights_only default: the engine state must load without pickle


@pytest.mark.parametrize("method", ["set", "rigl", "snfs"])
def test_state_dict_round_trip_continues_identically(method):
    batches = data(30)
    model, opt, eng = fresh_setup(method, 0, 7)
    for x, y in batches[:10]:
        train_step(model, opt, eng, x, y)
    ckpt = roundtrip({"model": model.state_dict(), "opt": opt.state_dict(), "engine": eng.state_dict()})
    # a different init and engine seed: everything must come from the checkpoint
    model2, opt2, eng2 = fresh_setup(method, 1, 99)
    model2.load_state_dict(ckpt["model"])
    opt2.load_state_dict(ckpt["opt"])
    eng2.load_state_dict(ckpt["engine"])
    assert eng2.step == 10
    grown = 0
    for x, y in batches[10:]:
        train_step(model, opt, eng, x, y)
        train_step(model2, opt2, eng2, x, y)
        grown += eng.last_update["grown"] if eng.last_update["step"] == eng.step - 1 else 0
    assert grown > 0  # topology updates did happen after the restore
    assert all(torch.equal(eng.masks[n], eng2.masks[n]) for n in eng.masks)
    for p, q in zip(model.parameters(), model2.parameters()):
        assert torch.equal(p, q)


def test_generator_state_is_restored():
    _, _, eng = fresh_setup("set", 0, 7)
    state = copy.deepcopy(eng.state_dict())
    a = torch.rand(5, generator=eng.generator)
    _, _, eng2 = fresh_setup("set", 0, 8)
    eng2.load_state_dict(state)
    assert torch.equal(torch.rand(5, generator=eng2.generator), a)


def test_bad_engine_states_are_checkpoint_errors():
    _, _, eng = fresh_setup("rigl", 0, 0)
    good = eng.state_dict()
    other = SparsityEngine(nn.Sequential(nn.Linear(8, 3)), None, "rigl", sparsity=0.5, total_steps=5).state_dict()
    wrong_shape = copy.deepcopy(good)
    wrong_shape["masks"]["0.weight"] = torch.ones(16, 8, dtype=torch.bool)  # valid, but differs
    wrong_shape["masks"]["4.weight"] = torch.ones(3, 3, dtype=torch.bool)
    not_a_tensor = copy.deepcopy(good)
    not_a_tensor["masks"]["2.weight"] = [[1, 0]]
    wrong_method = copy.deepcopy(good)
    wrong_method["config"]["method"] = "set"
    cases = [({}, "not a sparsetrain engine state"), (None, "not a sparsetrain engine state"),
             ({"masks": {}}, "not a sparsetrain engine state"), (other, "same architecture"),
             (wrong_shape, r"mask '4.weight' has shape \(3, 3\)"), (not_a_tensor, r"mask '2.weight' has shape \(\)"),
             (wrong_method, "for method 'set', not 'rigl'")]
    before = {n: m.clone() for n, m in eng.masks.items()}
    for state, match in cases:
        with pytest.raises(CheckpointError, match=match):
            eng.load_state_dict(state)
        # a rejected state leaves the engine as it was
        assert all(torch.equal(eng.masks[n], before[n]) for n in before) and eng.step == 0


# --- user errors ------------------------------------------------------------------------------------
def mlp():
    return nn.Sequential(nn.Linear(6, 8), nn.ReLU(), nn.Linear(8, 2))


@pytest.mark.parametrize("kwargs,match", [
    ({"sparsity": 1.0}, r"sparsity must be in \[0, 1\)"),
    ({"sparsity": -0.2}, r"sparsity must be in \[0, 1\)"),
    ({"method": "rigl2"}, "unknown method 'rigl2'; choose one of: .*rigl"),
    ({"distribution": "erx"}, "unknown distribution 'erx'; choose one of: .*erk"),
    ({"delta_t": 0}, r"delta_t \(ΔT\) must be a positive number"),
    ({"end": 200}, r"beyond total_steps \(100\); lower end"),
    ({"custom": {"3.weight": 0.1}, "distribution": "custom"}, "sparsifiable layers are: 0.weight, 2.weight"),
    ({"custom": {"0.weight": 1.2}}, r"custom density for '0.weight' must be in \[0, 1\]"),
    ({"detla_t": 5}, r"unknown option\(s\) \['detla_t'\] for method 'rigl'; valid: .*delta_t"),
    ({"include": ["fc*"]}, "include pattern 'fc\\*' matches no parameter; names look like: 0.weight"),
    ({"alpha": 1.5}, r"alpha \(drop fraction\) must be in \[0, 1\]"),
])
def test_bad_configuration_is_a_config_error_naming_the_fix(kwargs, match):
    kwargs = {"method": "rigl", "sparsity": 0.5, "total_steps": 100, **kwargs}
    with pytest.raises(ConfigError, match=match):
        SparsityEngine(mlp(), None, kwargs.pop("method"), **kwargs)


def test_model_without_sparsifiable_layer_and_static_options():
    with pytest.raises(ConfigError, match="no sparsifiable layer"):
        SparsityEngine(nn.Sequential(nn.ReLU(), nn.LayerNorm(4)), None, "static", sparsity=0.5)
    with pytest.raises(ConfigError, match="valid: none"):
        SparsityEngine(mlp(), None, "static", sparsity=0.5, delta_t=10)


@pytest.mark.parametrize("name, method", [("Static", "static"), ("SET", "set"), ("RigL", "rigl"), ("SNFS", "snfs")])
def test_named_constructors_build_the_one_engine(name, method):
    """sparsetrain.RigL(...) and friends are documented functions returning a SparsityEngine."""
    import inspect

    import sparsetrain

    make = getattr(sparsetrain, name)
    assert inspect.isfunction(make) and make.__name__ == name and re.search(r"20[12][0-9]", make.__doc__)
    model = nn.Sequential(nn.Linear(8, 16), nn.ReLU(), nn.Linear(16, 4))
    engine = make(model, None, sparsity=0.5, total_steps=10)
    assert type(engine) is sparsetrain.SparsityEngine and engine.method.name == method


@pytest.mark.parametrize("method, expected", [("rigl", "erk"), ("set", "erk"), ("gmp", "uniform"), ("snip", "uniform")])
def test_engine_distribution_defaults_to_the_methods_paper(method, expected):
    """Left out, the layer distribution is the method's source paper's, as in a run config."""
    model = nn.Sequential(nn.Linear(8, 16), nn.ReLU(), nn.Linear(16, 4))
    engine = SparsityEngine(model, None, method, sparsity=0.5, total_steps=10)
    assert engine.config["distribution"] == expected
