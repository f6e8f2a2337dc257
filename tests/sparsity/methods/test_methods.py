"""Drop/grow rules of each method on hand-made cases, redistribution, and a contract test over
every registered method (sparsity/methods/)."""
import dataclasses

import pytest
import torch
from hypothesis import given, settings
from hypothesis import strategies as st
from torch import nn

from sparsetrain import METHODS, SparsityEngine
from sparsetrain.sparsity.methods.redistribution import apportion, layer_statistic
from sparsetrain.sparsity.topk import topk_mask


# --- the 8-weight example ------------------------------------------------------------------------
# Linear(4, 2) without bias; flat indices 0..7 row by row.
W = torch.tensor([[0.5, -0.1, 0.9, 0.3],
                  [-0.8, 0.2, 0.05, 0.7]])
MASK = torch.tensor([[1, 1, 0, 1],
                     [0, 1, 0, 0]], dtype=torch.bool)  # active: 0, 1, 3, 5
G = torch.tensor([[9.0, 0.2, 0.1, 8.0],
                  [0.5, -3.0, 2.0, 1.0]])


def eight_weight_engine(method, **options):
    lin = nn.Linear(4, 2, bias=False)
    opt = torch.optim.SGD(lin.parameters(), lr=0.1, momentum=0.9)
    eng = SparsityEngine(lin, opt, method, sparsity=0.5, total_steps=10, **options)
    with torch.no_grad():
        # inactive weights are deliberately left nonzero, so zero-init of new connections shows
        lin.weight.copy_(W)
    eng.masks["weight"] = MASK.clone()
    opt.state[lin.weight]["momentum_buffer"] = torch.ones(2, 4)
    lin.weight.grad = G.clone()
    return lin, opt, eng


def flat(mask):
    return torch.nonzero(mask.reshape(-1)).squeeze(1).tolist()


@pytest.mark.parametrize("via", ["update_masks", "hooks"])
def test_rigl_eight_weights_by_hand(via):
    # drop 0.5·4 = 2 smallest |w| among active {0: .5, 1: .1, 3: .3, 5: .2} → drop 1 and 5, keep 0, 3
    # grow 2 largest |g| outside the kept set {1: .2, 2: .1, 4: .5, 5: 3, 6: 2, 7: 1} → 5 and 6
    # (0 and 3 have larger |g| but are kept, so they are not candidates)
    if via == "update_masks":
        lin, opt, eng = eight_weight_engine("rigl")
        eng.update_masks(0.5)
    else:
        lin, opt, eng = eight_weight_engine("rigl", delta_t=1, start=0, alpha=0.5, decay="constant")
        assert eng.after_backward() is False  # update step: no optimizer step
        eng.after_step()
    assert flat(eng.masks["weight"]) == [0, 3, 5, 6]
    # 5 was dropped and regrown: keeps 0.2; 6 is truly new: zero (was 0.05); the rest is masked
    assert lin.weight.detach().reshape(-1).tolist() == pytest.approx([0.5, 0, 0, 0.3, 0, 0.2, 0, 0])
    # only the truly new connection gets zero optimizer state (5 keeps its momentum)
    assert opt.state[lin.weight]["momentum_buffer"].reshape(-1).tolist() == [1, 1, 1, 1, 1, 1, 0, 1]
    assert eng.last_update["per_layer"] == {"weight": 1}


def test_ties_go_to_lower_index_in_drop_and_grow():
    lin, opt, eng = eight_weight_engine("rigl")
    with torch.no_grad():
        lin.weight.copy_(torch.tensor([[0.5, -0.5, 0.0, 0.5], [0.0, -0.5, 0.0, 0.0]]))
    lin.weight.grad = torch.ones(2, 4)
    eng.update_masks(0.5)
    # all |w| tie: keep the lower indices 0, 1 (drop 3, 5); all |g| tie: grow 2, 3 of {2..7}
    assert flat(eng.masks["weight"]) == [0, 1, 2, 3]
    assert lin.weight.detach().reshape(-1).tolist() == [0.5, -0.5, 0.0, 0.5, 0, 0, 0, 0]


def test_set_grows_exactly_n_at_its_random_scores():
    lin, opt, eng = eight_weight_engine("set", seed=3)
    scores = torch.rand(2, 4, generator=torch.Generator().set_state(eng.generator.get_state()))
    eng.update_masks(0.5)
    keep = torch.zeros(8, dtype=torch.bool)
    keep[[0, 3]] = True  # as for RigL: drop 1 and 5
    grow = topk_mask(scores.reshape(-1), 2, eligible=~keep)
    assert eng.masks["weight"].reshape(-1).tolist() == (keep | grow).tolist()
    assert int(eng.masks["weight"].sum()) == 4


@pytest.mark.parametrize("seed", range(5))
def test_set_at_full_density_regrows_exactly_what_it_dropped(seed):
    torch.manual_seed(seed)
    model = nn.Sequential(nn.Linear(5, 7), nn.ReLU(), nn.Linear(7, 3))
    before = [p.detach().clone() for p in model.parameters()]
    eng = SparsityEngine(model, None, "set", sparsity=0.0, total_steps=10, seed=seed)
    for f in (0.5, 1.0):
        eng.update_masks(f)
        # never more than N active, no new connection, every weight keeps its value
        assert all(bool(m.all()) for m in eng.masks.values())
        assert eng.last_update["grown"] == 0
        assert all(torch.equal(p, q) for p, q in zip(model.parameters(), before))


def test_rigl_reads_the_true_dense_gradient():
    torch.manual_seed(0)
    lin = nn.Linear(5, 3, bias=False).double()
    eng = SparsityEngine(lin, None, "rigl", sparsity=0.6, total_steps=10, delta_t=1, start=0)
    x, y = torch.randn(4, 5, dtype=torch.float64), torch.randn(4, 3, dtype=torch.float64)
    ((lin(x) - y) ** 2).sum(1).mean().backward()
    assert eng.after_backward() is False
    w = lin.weight.detach()  # already masked, so this is M⊙W
    # L = 1/B Σ_b ||W x_b − y_b||² → ∂L/∂W = 2/B · (W X − Y) Xᵀ, dense at masked positions too
    analytic = (2 / 4 * (x @ w.T - y).T @ x).abs()
    captured = eng.method._grad_scores["weight"]
    masked = ~eng.masks["weight"]
    assert bool((analytic[masked] > 1e-6).all())
    assert torch.allclose(captured, analytic, rtol=1e-12, atol=1e-12)
    old = eng.masks["weight"].clone()
    keep = topk_mask(w.abs(), int(old.sum()) - int(0.3 * 6), eligible=old)  # f(0) = α = 0.3, floor(0.3·6) = 1
    eng.after_step()
    expected = keep | topk_mask(analytic, 1, eligible=~keep)
    assert torch.equal(eng.masks["weight"], expected)


def run_and_record(method, steps=12, **options):
    torch.manual_seed(0)
    model = nn.Sequential(nn.Linear(6, 8), nn.ReLU(), nn.Linear(8, 2))
    opt = torch.optim.SGD(model.parameters(), lr=0.1)
    eng = SparsityEngine(model, opt, method, sparsity=0.5, total_steps=steps, delta_t=3, **options)
    ran = []
    for _ in range(steps):
        opt.zero_grad()
        nn.functional.mse_loss(model(torch.randn(4, 6)), torch.randn(4, 2)).backward()
        ran.append(eng.after_backward())
        if ran[-1]:
            opt.step()
        eng.after_step()
    return ran


def test_rigl_skips_the_optimizer_step_exactly_on_update_steps():
    # ΔT = 3, T_end = 0.75·12 = 9: updates at 3 and 6
    assert run_and_record("rigl") == [s not in (3, 6) for s in range(12)]
    assert run_and_record("rigl", skip_optimizer_step=False) == [True] * 12
    assert run_and_record("set") == [True] * 12
    assert run_and_record("snfs") == [True] * 12


# --- redistribution ---------------------------------------------------------------------------------
def test_apportion_by_hand():
    big = {"a": 100, "b": 100, "c": 100}
    assert apportion({"a": 1, "b": 2, "c": 1}, 8, big, fallback={}) == {"a": 2, "b": 4, "c": 2}
    # 10/3 each: floors 3, 3, 3; the one left goes to the first name among equal remainders
    assert apportion({"a": 1, "b": 1, "c": 1}, 10, big, fallback={}) == {"a": 4, "b": 3, "c": 3}
    # shares 6 and 2, but a holds only 2: its excess goes to b
    assert apportion({"a": 3, "b": 1}, 8, {"a": 2, "b": 100}, fallback={}) == {"a": 2, "b": 6}
    # zero statistics: the fallback split; nothing to hand out: zeros
    assert apportion({"a": 0, "b": 0}, 5, {"a": 9, "b": 9}, fallback={"a": 2, "b": 3}) == {"a": 2, "b": 3}
    assert apportion({"a": 1, "b": 0}, 0, {"a": 9, "b": 9}, fallback={}) == {"a": 0, "b": 0}
    # a layer with room but zero statistic takes what the others cannot hold
    assert apportion({"a": 1, "b": 0, "c": 0}, 10, {"a": 2, "b": 4, "c": 5}, fallback={}) == {"a": 2, "b": 4, "c": 4}


@settings(max_examples=40, deadline=None)
@given(data=st.data(), n=st.integers(1, 5))
def test_apportion_sums_exactly_within_capacity(data, n):
    names = [f"l{i}" for i in range(n)]
    stats = {k: data.draw(st.floats(0, 10)) for k in names}
    cap = {k: data.draw(st.integers(0, 50)) for k in names}
    total = data.draw(st.integers(0, sum(cap.values())))
    out = apportion(stats, total, cap, fallback={k: 0 for k in names})
    if sum(stats.values()) > 0 or total == 0:
        assert sum(out.values()) == total
    assert all(0 <= out[k] <= cap[k] for k in names)
    if sum(stats.values()) > 0 and all(c >= total for c in cap.values()):
        # unconstrained: largest remainder is within one slot of the exact proportional share
        s = sum(stats.values())
        assert all(abs(out[k] - total * stats[k] / s) < 1 for k in names)


def test_layer_statistic_by_hand():
    w = torch.tensor([[1.0, -2.0], [3.0, 0.0]])
    m = torch.tensor([[True, True], [False, False]])
    ema = torch.tensor([[0.5, -0.5], [9.0, 9.0]])
    assert layer_statistic("magnitude", w[m], None) == 1.5
    assert layer_statistic("nonzeros", w[m], None) == 2.0
    assert layer_statistic("momentum", w[m], ema[m]) == 0.5
    assert layer_statistic("momentum", w[m], None) == 0.0


def train_counts(method, steps=24, **options):
    torch.manual_seed(0)
    model = nn.Sequential(nn.Linear(10, 20), nn.ReLU(), nn.Linear(20, 15), nn.ReLU(), nn.Linear(15, 4))
    opt = torch.optim.SGD(model.parameters(), lr=0.1, momentum=0.9)
    eng = SparsityEngine(model, opt, method, sparsity=0.8, total_steps=steps, delta_t=2, alpha=0.5,
                         decay="constant", end_fraction=1.0, **options)
    g = torch.Generator().manual_seed(1)
    history = []
    for _ in range(steps):
        opt.zero_grad()
        x = torch.randn(8, 10, generator=g)
        nn.functional.cross_entropy(model(x), torch.randint(0, 4, (8,), generator=g)).backward()
        if eng.after_backward():
            opt.step()
        eng.after_step()
        for t in eng.targets:
            assert bool((t.param[~eng.masks[t.name]] == 0).all())
        history.append([int(m.sum()) for m in eng.masks.values()])
    return history


@pytest.mark.parametrize("method,options", [("snfs", {"redistribution": "momentum"}), ("sparse_momentum", {}),
                                            ("rigl", {"redistribution": "magnitude"}),
                                            ("set", {"redistribution": "magnitude"})])
def test_redistribution_keeps_the_global_count(method, options):
    history = train_counts(method, **options)
    assert len({sum(h) for h in history}) == 1
    assert len({tuple(h) for h in history}) > 1  # per-layer counts did move


def test_rigl_without_redistribution_keeps_every_layer():
    assert len({tuple(h) for h in train_counts("rigl")}) == 1


# --- contract: every registered method ---------------------------------------------------------------
@pytest.mark.parametrize("name", METHODS.names())
def test_every_registered_method_runs_through_the_hooks(name):
    cls = METHODS.get(name)
    fields = {f.name for f in dataclasses.fields(cls.Options)}
    options = {k: v for k, v in {"delta_t": 2, "end_fraction": 1.0}.items() if k in fields}
    torch.manual_seed(0)
    model = nn.Sequential(nn.Linear(6, 12), nn.ReLU(), nn.Linear(12, 3))
    opt = torch.optim.Adam(model.parameters(), lr=0.01)
    eng = SparsityEngine(model, opt, name, sparsity=0.7, total_steps=8, **options)
    start = [int(m.sum()) for m in eng.masks.values()]
    per_layer = getattr(eng.method.options, "redistribution", "none") == "none"
    prev = start
    for _ in range(8):
        opt.zero_grad()
        nn.functional.cross_entropy(model(torch.randn(5, 6)), torch.randint(0, 3, (5,))).backward()
        eng.step_optimizer()
        now = [int(m.sum()) for m in eng.masks.values()]
        if cls.starts_dense:  # dense-to-sparse (gmp, snip, ...): layers only ever lose weights
            assert all(n <= p for n, p in zip(now, prev))
        else:
            assert sum(now) == sum(start)
            if per_layer:
                assert now == start
        prev = now
        for t in eng.targets:
            assert bool((t.param[~eng.masks[t.name]] == 0).all())
    assert eng.step == 8
    state = eng.state_dict()
    eng.load_state_dict(state)
    assert eng.method.describe()["method"] == name
