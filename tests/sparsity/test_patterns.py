"""Sparsity patterns (sparsity/patterns.py): parsing, pattern-aware exact-count selection, and every
mask-based method keeping N:M, block and channel patterns through its updates."""
import pytest
import torch
from hypothesis import given, settings
from hypothesis import strategies as st
from torch import nn

from sparsetrain.errors import CheckpointError, ConfigError
from sparsetrain.registry import METHODS
from sparsetrain.sparsity.distributions import plan_densities
from sparsetrain.sparsity.engine import SparsityEngine
from sparsetrain.sparsity.methods.imp import magnitude_prune
from sparsetrain.sparsity.patterns import (Pattern, conforms, parse_pattern, pool, resolve, select,
                                           update)

FAST = settings(max_examples=12, deadline=None)
PATTERNS = ["2:4", "1:4", "block:4x4", "block:2x1", "channel", "channel:in"]


def mlp(d_in=16, hidden=32, d_out=8):
    return nn.Sequential(nn.Linear(d_in, hidden), nn.ReLU(), nn.Linear(hidden, d_out))


def groups(mask, m):
    return mask.reshape(-1, m).sum(1)


# --- parsing ----------------------------------------------------------------------------------
@pytest.mark.parametrize("spec,text", [("unstructured", "unstructured"), ("2:4", "2:4"), ("nm:1:4", "1:4"),
                                       ("block:4x4", "block:4x4"), ("BLOCK:16x1", "block:16x1"),
                                       ("channel", "channel"), ("channel:out", "channel"),
                                       ("channel:in", "channel:in")])
def test_parse_roundtrip(spec, text):
    assert str(parse_pattern(spec)) == text


@pytest.mark.parametrize("spec", ["4:4", "0:4", "5:4", "block:1x1", "block:0x4", "blocks:4x4", "2-4", ""])
def test_parse_rejects_bad_specs(spec):
    with pytest.raises(ConfigError, match="pattern"):
        parse_pattern(spec)


# --- hand-computed selections -----------------------------------------------------------------
def test_nm_select_by_hand():
    scores = torch.tensor([[1.0, 5, 3, 2, 0, 0, 7, 7], [0, 0, 0, 0, 4, -1, 4, 9]])
    got = select(Pattern("nm", n=2, m=4), scores, 8)
    # group maxima; ties go to the lower position (the zeros of row 1 keep positions 0 and 1)
    assert got.int().tolist() == [[0, 1, 1, 0, 0, 0, 1, 1], [1, 1, 0, 0, 1, 0, 0, 1]]


def test_block_select_pools_l1_by_hand():
    w = torch.tensor([[1.0, 1, 0, 0], [1, 1, 0, 3], [0, 0, 2, 0], [0, 0, 0, 0]])
    p = Pattern("block", rows=2, cols=2)
    assert pool(p, w.abs()).tolist() == [4.0, 3.0, 0.0, 2.0]
    got = select(p, w.abs(), 8)  # two blocks: sums 4 and 3
    assert got.int().tolist() == [[1, 1, 1, 1], [1, 1, 1, 1], [0, 0, 0, 0], [0, 0, 0, 0]]


def test_channel_select_keeps_whole_rows_of_a_conv():
    w = torch.zeros(4, 2, 3, 3)
    w[1] += 1.0
    w[3] += 2.0
    got = select(parse_pattern("channel"), w.abs(), 2 * 18)
    assert got.flatten(1).all(1).tolist() == [False, True, False, True]
    assert int(got.sum()) == 36


def test_input_channel_select_keeps_whole_input_slices_of_a_conv_by_hand():
    # a 3x2x1x2 conv: input channel c is w[:, c] (3 filters x 2 taps); pooled L1 per input channel
    w = torch.tensor([[[[1., 1.]], [[5., 0.]]],
                      [[[1., 0.]], [[0., 0.]]],
                      [[[1., 2.]], [[0., 1.]]]])
    got = select(parse_pattern("channel:in"), w.abs(), 6)  # channel 0 scores 6, channel 1 scores 6: tie -> 0
    assert got[:, 0].all() and not got[:, 1].any()
    w[2, 1, 0, 0] = 0.5  # channel 1 now scores 6.5
    got = select(parse_pattern("channel:in"), w.abs(), 6)
    assert got[:, 1].all() and not got[:, 0].any()


def test_input_channel_of_a_linear_is_a_column():
    w = torch.tensor([[1., 9., 0.], [1., 0., 3.]])
    got = select(parse_pattern("channel:in"), w, 2)
    assert torch.equal(got, torch.tensor([[False, True, False], [False, True, False]]))
    assert conforms(parse_pattern("channel:in"), got) and not conforms(parse_pattern("channel:in"), got.T.reshape(2, 3))


def test_select_rejects_counts_that_are_not_whole_units():
    with pytest.raises(ValueError, match="whole units"):
        select(parse_pattern("block:2x2"), torch.rand(4, 4), 6)


def test_nm_update_drops_layer_wide_and_regrows_in_each_group_by_hand():
    old = torch.tensor([[1, 1, 0, 0, 0, 1, 1, 0]], dtype=torch.bool)
    w = torch.tensor([[0.1, 5.0, 0, 0, 0, 0.2, 3.0, 0]])
    grow = torch.tensor([[0.0, 0, 9, 1, 8, 0, 0, 2]])
    # drop 2: the smallest |w| among active are positions 0 and 5; group 0 regrows its best
    # candidate (2), group 1 its best (4): both groups keep 2
    new = update(parse_pattern("2:4"), old, 2, 2, w.abs(), lambda: grow)
    assert new.int().tolist() == [[0, 1, 1, 0, 1, 0, 1, 0]]


def test_block_update_by_hand():
    p = parse_pattern("block:1x2")
    old = torch.tensor([[1, 1, 0, 0], [1, 1, 0, 0]], dtype=torch.bool)
    w = torch.tensor([[3.0, 3, 0, 0], [0.1, 0.1, 0, 0]])
    grow = torch.tensor([[0.0, 0, 1, 1], [5, 5, 0, 9]])
    new = update(p, old, 2, 2, w.abs(), lambda: grow)  # one block out (row 1), best pooled in
    assert new.int().tolist() == [[1, 1, 0, 0], [1, 1, 0, 0]]  # the dropped block pools highest (10)
    new = update(p, old, 2, 2, w.abs(), lambda: grow * torch.tensor([[1.0, 1, 1, 1], [0, 0, 1, 1]]))
    assert new.int().tolist() == [[1, 1, 0, 0], [0, 0, 1, 1]]  # pooled: (0,1)=2, (1,1)=9 -> (1,1)


# --- every method keeps every pattern ---------------------------------------------------------
def _train(engine, model, opt, steps, check):
    """Run ``steps`` steps on random data; ``check(old_masks)`` after every step."""
    gen = torch.Generator().manual_seed(1)
    for _ in range(steps):
        old = {n: m.clone() for n, m in engine.masks.items()}
        x = torch.randn(8, model[0].in_features, generator=gen)
        opt.zero_grad()
        model(x).pow(2).mean().backward()
        engine.step_optimizer()
        check(old)


def _check_layer(engine, opt, name, old, pattern):
    mask, p = engine.masks[name], engine.param(name)
    assert conforms(pattern, mask)
    assert torch.all(p[~mask] == 0)  # masked weights are physically zero
    fresh = mask & ~old
    assert torch.all(p[fresh] == 0)  # new connections start at zero ...
    buf = opt.state[p].get("momentum_buffer")
    if buf is not None:
        assert torch.all(buf[fresh] == 0)  # ... with zero optimizer state


@FAST
@given(method=st.sampled_from(["rigl", "set", "snfs"]), spec=st.sampled_from(PATTERNS),
       seed=st.integers(0, 2**16), alpha=st.sampled_from([0.3, 0.5, 0.9]))
def test_dynamic_methods_keep_the_pattern_after_every_update(method, spec, seed, alpha):
    torch.manual_seed(seed)
    model = mlp()
    opt = torch.optim.SGD(model.parameters(), lr=0.1, momentum=0.9)
    pattern = parse_pattern(spec)
    sparsity = 1 - pattern.n / pattern.m if pattern.kind == "nm" else 0.5
    engine = SparsityEngine(model, opt, method, sparsity=sparsity, total_steps=40, pattern=spec, delta_t=2,
                            alpha=alpha, seed=seed)
    start = {n: int(m.sum()) for n, m in engine.masks.items()}
    start_groups = {n: groups(m, pattern.m) for n, m in engine.masks.items()} if pattern.kind == "nm" else {}
    churn = []

    def check(old):
        for name in engine.masks:
            _check_layer(engine, opt, name, old[name], pattern)
            assert int(engine.masks[name].sum()) == start[name]  # exact count after every update
            if pattern.kind == "nm":  # exactly N in every group of M, every step
                assert torch.equal(groups(engine.masks[name], pattern.m), start_groups[name])
                assert bool((start_groups[name] == pattern.n).all())
        churn.append(sum(int((engine.masks[n] & ~old[n]).sum()) for n in old))

    _train(engine, model, opt, 12, check)
    assert sum(churn) > 0  # the topology did change


@pytest.mark.parametrize("spec", PATTERNS)
def test_static_mask_is_random_whole_units_and_seeded(spec):
    pattern = parse_pattern(spec)
    sparsity = 1 - pattern.n / pattern.m if pattern.kind == "nm" else 0.75

    def masks(seed):
        e = SparsityEngine(mlp(), None, "static", sparsity=sparsity, distribution="uniform", dense_first=False,
                           pattern=spec, seed=seed)
        return {n: m.clone() for n, m in e.masks.items()}, e

    a, e = masks(3)
    b, _ = masks(3)
    c, _ = masks(4)
    assert all(torch.equal(a[n], b[n]) for n in a)  # identical seeds, identical masks
    assert any(not torch.equal(a[n], c[n]) for n in a)
    for n, m in a.items():
        assert conforms(pattern, m)
        assert int(m.sum()) == pattern.count(tuple(m.shape), 1 - sparsity)


@pytest.mark.parametrize("spec", ["2:4", "2:8", "block:4x4", "channel", "channel:in"])
def test_gmp_prunes_gradually_in_whole_units(spec):
    pattern = parse_pattern(spec)
    final = 1 - pattern.n / pattern.m if pattern.kind == "nm" else 0.75
    model = mlp()
    opt = torch.optim.SGD(model.parameters(), lr=0.05, momentum=0.9)
    engine = SparsityEngine(model, opt, "gmp", sparsity=final, distribution="uniform", dense_first=False,
                            total_steps=12, pattern=spec, start=0, end=8, frequency=2)
    seen = []

    def check(old):
        for name, m in engine.masks.items():
            _check_layer(engine, opt, name, old[name], pattern)
            if pattern.kind == "nm":  # the kept-per-group count follows the schedule, equal in every group
                per = groups(m, pattern.m)
                assert bool((per == per[0]).all())
        seen.append(float(engine.masks["0.weight"].float().mean()))

    _train(engine, model, opt, 12, check)
    assert seen[0] > seen[-1] and seen == sorted(seen, reverse=True)
    for name, m in engine.masks.items():  # the end: exactly the target
        assert int(m.sum()) == pattern.count(tuple(m.shape), 1 - final)
        if pattern.kind == "nm":
            assert bool((groups(m, pattern.m) == pattern.n).all())
    if pattern.kind == "nm":  # gradual: some step kept between N and M per group
        assert any(pattern.n / pattern.m < d < 1.0 for d in seen)


@pytest.mark.parametrize("method", ["snip", "grasp", "synflow"])
@pytest.mark.parametrize("spec", ["2:4", "block:4x4", "channel", "channel:in"])
def test_prune_at_init_pools_scores_per_unit(method, spec):
    torch.manual_seed(0)
    pattern = parse_pattern(spec)
    sparsity = 0.5
    model = mlp()
    opts = {"scope": "layer"} | ({"rounds": 5} if method == "synflow" else {})
    engine = SparsityEngine(model, None, method, sparsity=sparsity, distribution="erk", pattern=spec, **opts)
    batch = (torch.randn(16, 16), torch.randint(0, 8, (16,)))
    engine.method.prune_at_init(engine, batch, nn.functional.cross_entropy, input_shape=(16,))
    for name, m in engine.masks.items():
        assert conforms(pattern, m)
        assert int(m.sum()) == pattern.count(tuple(m.shape), engine.densities[name])
        assert torch.all(engine.param(name)[~m] == 0)


def test_snip_channel_keeps_the_channels_of_highest_pooled_saliency():
    torch.manual_seed(0)
    model = mlp()
    engine = SparsityEngine(model, None, "snip", sparsity=0.5, distribution="uniform", dense_first=False,
                            pattern="channel", scope="layer")
    batch = (torch.randn(16, 16), torch.randint(0, 8, (16,)))
    engine.method.prune_at_init(engine, batch, nn.functional.cross_entropy)
    scores = engine.method.last_scores["0.weight"]
    want = torch.zeros(32, dtype=torch.bool)
    want[torch.sort(scores.sum(1), descending=True, stable=True).indices[:16]] = True
    assert torch.equal(engine.masks["0.weight"].all(1), want)


@pytest.mark.parametrize("spec", ["2:4", "block:4x4", "channel", "channel:in"])
def test_imp_layer_scope_prunes_in_whole_units(spec):
    pattern = parse_pattern(spec)
    sparsity = 0.5
    model = mlp()
    engine = SparsityEngine(model, None, "imp", sparsity=sparsity, distribution="uniform", dense_first=False,
                            pattern=spec, scope="layer", prune_fraction=0.2)
    plan = engine.method.plan
    for level in plan:
        for name, k in level.items():
            assert k % pattern.units(engine.masks[name].shape)[1] == 0
    masks = dict(engine.masks.items())
    for level in plan[1:]:
        masks = magnitude_prune({t.name: t.param for t in engine.targets}, masks, level, "layer", engine.patterns)
        for name, m in masks.items():
            assert conforms(pattern, m) and int(m.sum()) == level[name]
    assert plan[-1] == {n: pattern.count(tuple(m.shape), 1 - sparsity) for n, m in masks.items()}


# --- distributions ----------------------------------------------------------------------------
def test_nm_fixes_density_and_refuses_a_mismatching_sparsity():
    plan = plan_densities(mlp(), 0.5, "erk", pattern="2:4")
    assert plan.exact_densities() == {"0.weight": 0.5, "2.weight": 0.5}
    with pytest.raises(ConfigError, match="sparsity.sparsity=0.5"):
        plan_densities(mlp(), 0.9, "erk", pattern="2:4")


def test_nm_layers_leave_the_budget_of_the_others():
    model = mlp()
    plan = plan_densities(model, 0.8, "uniform", dense_first=False, pattern="1:4",
                          pattern_overrides={"2.*": "unstructured"})
    assert plan.densities["0.weight"] == 0.25 and abs(plan.densities["2.weight"] - 0.2) < 1e-12
    assert str(plan.pattern("0.weight")) == "1:4" and str(plan.pattern("2.weight")) == "unstructured"


def test_block_and_channel_round_counts_down_to_whole_units():
    plan = plan_densities(mlp(), 0.7, "uniform", dense_first=False, pattern="block:4x4")
    # 32x16 has 32 blocks: 32 - floor(0.7·32) = 10 blocks; 8x32 has 16: 16 - 11 = 5 blocks
    assert plan.counts == {"0.weight": 160, "2.weight": 80}
    plan = plan_densities(mlp(), 0.7, "uniform", dense_first=False, pattern="channel")
    assert plan.counts == {"0.weight": 10 * 16, "2.weight": 3 * 32}


def test_density_report_shows_the_pattern_and_the_real_density():
    e = SparsityEngine(mlp(), None, "static", sparsity=0.7, distribution="uniform", dense_first=False,
                       pattern="channel")
    layer = e.density_report()["layers"]["0.weight"]
    assert layer["pattern"] == "channel" and layer["density"] == 10 / 32


# --- combinations that make no sense are one-line ConfigErrors ------------------------------------
@pytest.mark.parametrize("kwargs,match", [
    (dict(method="rigl", sparsity=0.5, pattern="2:3"), "divisible by 3"),
    (dict(method="rigl", sparsity=0.5, pattern="block:3x4"), "3x4 blocks"),
    (dict(method="rigl", sparsity=0.5, pattern="2:4", redistribution="momentum"), "redistribution=none"),
    (dict(method="sparse_momentum", sparsity=0.5, pattern="2:4"), "redistribution=none"),
    (dict(method="gem_miner", sparsity=0.5, pattern="2:4"), "unstructured"),
    (dict(method="edge_popup", sparsity=0.5, pattern="channel"), "unstructured"),
    (dict(method="gmp", sparsity=0.5, pattern="2:4", scope="global"), "scope=layer"),
    (dict(method="imp", sparsity=0.5, pattern="block:4x4"), "scope=layer"),
    (dict(method="rigl", sparsity=0.5, pattern="2:4", pattern_overrides={"fc*": "unstructured"}), "matches no"),
])
def test_meaningless_combinations_are_config_errors(kwargs, match):
    method = kwargs.pop("method")
    with pytest.raises(ConfigError, match=match) as err:
        SparsityEngine(mlp(), None, method, total_steps=100, **kwargs)
    assert "\n" not in str(err.value)


def test_sparse_backend_refuses_structured_patterns():
    from sparsetrain.sparsity.storage import BackendPolicy

    with pytest.raises(ConfigError, match="backend=masked"):
        SparsityEngine(mlp(), None, "rigl", sparsity=0.5, pattern="2:4", total_steps=10, storage=BackendPolicy())
    e = SparsityEngine(mlp(), None, "rigl", sparsity=0.5, pattern="2:4", total_steps=10)
    with pytest.raises(ConfigError, match="unstructured"):
        e.use_storage(BackendPolicy())


def test_resolve_first_override_wins():
    shapes = {"a.weight": (8, 8), "b.weight": (8, 8)}
    got = resolve(shapes, "2:4", {"a.*": "channel", "*": "block:2x2"})
    assert {n: str(p) for n, p in got.items()} == {"a.weight": "channel", "b.weight": "block:2x2"}


@pytest.mark.parametrize("method", sorted(METHODS))
@pytest.mark.parametrize("spec", ["2:4", "block:4x4", "channel", "channel:in"])
def test_every_method_keeps_the_pattern_or_refuses_in_one_line(method, spec):
    """Contract over the registry: a method either builds masks of whole units, or says why not."""
    if not METHODS.get(method).uses_masks:
        return  # dense baselines attach no engine (the run refuses a pattern: tests/cli)
    try:
        engine = SparsityEngine(mlp(), None, method, sparsity=0.5, distribution="uniform", dense_first=False,
                                total_steps=100, pattern=spec)
    except ConfigError as e:
        assert "\n" not in str(e) and ("unstructured" in str(e) or "scope=layer" in str(e)), str(e)
        return
    pattern = parse_pattern(spec)
    assert all(conforms(pattern, m) for m in engine.masks.values())


def test_a_checkpoint_of_another_pattern_is_refused():
    a = SparsityEngine(mlp(), None, "rigl", sparsity=0.5, pattern="2:4", total_steps=10)
    b = SparsityEngine(mlp(), None, "rigl", sparsity=0.5, total_steps=10)
    with pytest.raises(CheckpointError, match="pattern=2:4"):
        b.load_state_dict(a.state_dict())
    c = SparsityEngine(mlp(), None, "rigl", sparsity=0.5, pattern="2:4", total_steps=10, seed=5)
    c.load_state_dict(a.state_dict())
    assert all(torch.equal(c.masks[n], a.masks[n]) for n in a.masks)
