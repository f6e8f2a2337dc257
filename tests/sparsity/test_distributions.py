"""Layer-wise densities (sparsity/distributions.py), hand-computed per REFERENCE §2.3.

Shapes used throughout: A = (2, 4), B = (3, 6), C = (2, 4, 6); N = 8, 18, 48.
Raw scores: ERK r = Σdims/Πdims → A 6/8 = 0.75, B 9/18 = 0.5, C 12/48 = 0.25.
            ER uses the two leading (channel) dims → A 0.75, B 0.5, C (2+4)/(2·4) = 0.75.
"""
import math

import pytest
import torch
from hypothesis import given, settings
from hypothesis import strategies as st
from torch import nn

from sparsetrain import DISTRIBUTIONS, ConfigError, SparsityEngine, layer_densities
from sparsetrain.sparsity.distributions import custom_map, erdos_renyi, erdos_renyi_kernel, uniform
from sparsetrain.sparsity.topk import count_active, count_zeros

SHAPES = {"A": (2, 4), "B": (3, 6), "C": (2, 4, 6)}


def approx(d):
    return {k: pytest.approx(v, abs=1e-12) for k, v in d.items()}


def test_erk_at_half_sparsity_makes_a_dense_by_the_capacity_rule():
    # z = floor(0.5·N) = 4, 9, 24 → budget Σ(N − z) = 4 + 9 + 24 = 37
    # pass 1: ε = 37 / Σ r·N = 37 / (6 + 9 + 12) = 37/27; ε·r_A = 1.028 > 1 → A dense
    # pass 2: rhs = (9 + 24) − z_A = 29, divisor = 9 + 12 = 21, ε = 29/21; ε·r_B = 0.690 ≤ 1
    # densities: A 1, B 0.5·29/21 = 29/42, C 0.25·29/21 = 29/84
    assert erdos_renyi_kernel(SHAPES, 0.5) == approx({"A": 1.0, "B": 29 / 42, "C": 29 / 84})


def test_erk_at_08_sparsity_needs_no_dense_layer():
    # z = floor(6.4), floor(14.4), floor(38.4) = 6, 14, 38 → budget 2 + 4 + 10 = 16
    # ε = 16/27; ε·r_A = 0.444 ≤ 1 → densities 0.75·16/27 = 4/9, 0.5·16/27 = 8/27, 0.25·16/27 = 4/27
    assert erdos_renyi_kernel(SHAPES, 0.8) == approx({"A": 4 / 9, "B": 8 / 27, "C": 4 / 27})


def test_er_uses_channel_dims_only():
    # Σ r·N = 0.75·8 + 0.5·18 + 0.75·48 = 6 + 9 + 36 = 51
    # S = 0.5: ε = 37/51, max ε·r = 0.544 → A = C = 0.75·37/51 = 37/68, B = 0.5·37/51 = 37/102
    assert erdos_renyi(SHAPES, 0.5) == approx({"A": 37 / 68, "B": 37 / 102, "C": 37 / 68})
    # S = 0.8: ε = 16/51 → A = C = 12/51 = 4/17, B = 8/51
    assert erdos_renyi(SHAPES, 0.8) == approx({"A": 4 / 17, "B": 8 / 51, "C": 4 / 17})


@pytest.mark.parametrize("sparsity", [0.5, 0.8])
@pytest.mark.parametrize("name", ["erk", "er", "uniform"])
def test_global_active_count_is_the_integer_budget(name, sparsity):
    dens = layer_densities(name, SHAPES, sparsity)
    budget = sum(math.prod(s) - count_zeros(math.prod(s), sparsity) for s in SHAPES.values())
    active = sum(count_active(math.prod(s), dens[n]) for n, s in SHAPES.items())
    # each layer rounds its count up by less than one weight
    assert 0 <= active - budget < len(SHAPES)


def test_erk_counts_at_08_by_hand():
    # A: N − floor(5/9·8 = 4.44) = 4; B: 18 − floor(19/27·18 = 12.67) = 6; C: 48 − floor(23/27·48 = 40.89) = 8
    dens = erdos_renyi_kernel(SHAPES, 0.8)
    assert [count_active(math.prod(SHAPES[n]), dens[n]) for n in "ABC"] == [4, 6, 8]


def test_tied_top_scores_become_dense_together():
    # A = (2,4) and A2 = (4,2) tie at r = 0.75; S = 0.2 → z = 1, 1, 3, 9; budget 7 + 7 + 15 + 39 = 68
    # pass 1: ε = 68/33 (Σ r·N = 6 + 6 + 9 + 12); ε·0.75 = 1.55 > 1 → A and A2 dense together
    # pass 2: rhs = 15 + 39 − (1 + 1) = 52, ε = 52/21; ε·0.5 = 1.24 > 1 → B dense
    # pass 3: rhs = 39 − (1 + 1 + 3) = 34, ε = 34/12; C = 0.25·34/12 = 34/48
    shapes = {"A": (2, 4), "A2": (4, 2), "B": (3, 6), "C": (2, 4, 6)}
    assert erdos_renyi_kernel(shapes, 0.2) == approx({"A": 1.0, "A2": 1.0, "B": 1.0, "C": 34 / 48})


def test_forced_dense_and_custom_layers_are_outside_the_budget():
    # B forced dense: budget over A, C only = 4 + 24 = 28, ε = 28/(6 + 12); ε·0.75 = 1.17 → A dense;
    # then rhs = 24 − z_A(4) = 20, ε = 20/12 → C = 0.25·20/12 = 20/48
    expected = {"A": 1.0, "B": 1.0, "C": 20 / 48}
    assert erdos_renyi_kernel(SHAPES, 0.5, dense=["B"]) == approx(expected)
    # a custom density of 1 (or any value) is treated the same way
    assert erdos_renyi_kernel(SHAPES, 0.5, custom={"B": 1.0}) == approx(expected)
    got = erdos_renyi_kernel(SHAPES, 0.5, custom={"B": 0.3})
    assert got == approx({"A": 1.0, "B": 0.3, "C": 20 / 48})


def test_custom_map_distribution():
    got = custom_map(SHAPES, 0.8, custom={"A": 0.25, "C": 1.0})
    assert got == approx({"A": 0.25, "B": 0.2, "C": 1.0})


def test_erk_power_zero_is_uniform_over_non_dense_layers():
    # all raw scores are 1: ε = Σ(N − z)/ΣN → at S = 0.5: 37/74 = 0.5; at 0.8: 16/74 = 8/37
    assert erdos_renyi_kernel(SHAPES, 0.5, power=0.0) == approx({n: 0.5 for n in SHAPES})
    assert erdos_renyi_kernel(SHAPES, 0.8, power=0.0) == approx({n: 8 / 37 for n in SHAPES})
    got = erdos_renyi_kernel(SHAPES, 0.8, power=0.0, dense=["A"])
    assert got["A"] == 1.0 and got["B"] == pytest.approx(got["C"])


def test_uniform_and_registry():
    assert uniform(SHAPES, 0.8) == approx({n: 0.2 for n in SHAPES})
    assert uniform(SHAPES, 0.8, dense=["A"]) == approx({"A": 1.0, "B": 0.2, "C": 0.2})
    assert set(DISTRIBUTIONS.names()) >= {"uniform", "er", "erk", "custom"}
    assert layer_densities("ERK", SHAPES, 0.8) == erdos_renyi_kernel(SHAPES, 0.8)


shape_st = st.lists(st.integers(1, 9), min_size=2, max_size=4).map(tuple)


@settings(max_examples=40, deadline=None)
@given(shapes=st.lists(shape_st, min_size=1, max_size=5), sparsity=st.floats(0, 0.99),
       name=st.sampled_from(["erk", "er"]))
def test_scaled_distributions_respect_capacity_and_budget(shapes, sparsity, name):
    shapes = {f"l{i}": s for i, s in enumerate(shapes)}
    dens = layer_densities(name, shapes, sparsity)
    assert all(0.0 <= d <= 1.0 for d in dens.values())
    budget = sum(math.prod(s) - count_zeros(math.prod(s), sparsity) for s in shapes.values())
    active = sum(count_active(math.prod(s), dens[n]) for n, s in shapes.items())
    assert abs(active - budget) < len(shapes)


@pytest.mark.parametrize("kwargs,match", [
    ({"sparsity": 1.0}, r"\[0, 1\)"),
    ({"sparsity": -0.1}, r"\[0, 1\)"),
    ({"sparsity": 0.5, "custom": {"Z": 0.5}}, "sparsifiable layers are: A, B, C"),
    ({"sparsity": 0.5, "dense": ["Z"]}, "unknown layer"),
    ({"sparsity": 0.5, "custom": {"A": 1.5}}, r"custom density for 'A' must be in \[0, 1\]"),
])
@pytest.mark.parametrize("name", ["erk", "er", "uniform", "custom"])
def test_bad_arguments_are_config_errors(name, kwargs, match):
    kwargs = dict(kwargs)
    with pytest.raises(ConfigError, match=match):
        layer_densities(name, SHAPES, kwargs.pop("sparsity"), **kwargs)


def test_unknown_distribution_lists_the_choices():
    with pytest.raises(ConfigError, match="choose one of: .*erk"):
        layer_densities("erdos", SHAPES, 0.5)


def mlp():
    return nn.Sequential(nn.Linear(6, 10), nn.ReLU(), nn.Linear(10, 8), nn.ReLU(), nn.Linear(8, 3))


def test_engine_uniform_keeps_first_layer_dense_and_erk_does_not():
    model = mlp()
    first = model[0].weight
    eng = SparsityEngine(model, None, "static", sparsity=0.9, distribution="uniform")
    assert [t.name for t in eng.kept_dense] == ["0.weight"]
    assert "0.weight" not in eng.masks and bool((first != 0).all())
    layer = eng.density_report()["layers"]["0.weight"]
    assert layer["sparsified"] is False and layer["density"] == 1.0
    # the remaining layers get exactly N − floor(0.9·N): 80 − 72 = 8 and 24 − floor(21.6) = 3
    assert [int(m.sum()) for m in eng.masks.values()] == [8, 3]

    eng = SparsityEngine(mlp(), None, "static", sparsity=0.9, distribution="erk")
    assert eng.kept_dense == [] and "0.weight" in eng.masks
    assert eng.density_report()["layers"]["0.weight"]["sparsified"] is True


def test_engine_custom_map_and_dense_first_override():
    eng = SparsityEngine(mlp(), None, "static", sparsity=0.5, distribution="custom",
                         custom={"2.weight": 0.25})
    # 2.weight: 80 − floor(0.75·80) = 20; others 1 − S: 60 − 30 = 30, 24 − 12 = 12
    assert {n: int(m.sum()) for n, m in eng.masks.items()} == {"0.weight": 30, "2.weight": 20, "4.weight": 12}
    eng = SparsityEngine(mlp(), None, "static", sparsity=0.5, distribution="uniform", dense_first=False)
    assert eng.kept_dense == [] and len(eng.masks) == 3
    assert torch.equal(torch.tensor([int(m.sum()) for m in eng.masks.values()]), torch.tensor([30, 40, 12]))
