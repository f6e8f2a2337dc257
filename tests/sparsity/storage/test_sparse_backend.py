"""The truly sparse CPU backend agrees with the masked-dense engine and keeps its invariants."""
import copy

import pytest
import torch
from torch import nn

from sparsetrain.errors import CheckpointError, ConfigError
from sparsetrain.sparsity.backend import SparseEngine, use_dense_backend, use_sparse_backend
from sparsetrain.sparsity.storage import BackendPolicy
from sparsetrain.sparsity.storage.csr import SparseLinear, densify_model, export_sparse, load_sparse, sparsify_model
from sparsetrain.sparsity.storage.csr.indices import carry, flat_from_csr, match, random_flat, transpose
from sparsetrain.sparsity.storage.csr.streaming import streaming_topk
from sparsetrain.sparsity.engine import SparsityEngine
from sparsetrain.sparsity.topk import topk_mask


def mlp(seed=0, dtype=torch.float64):
    torch.manual_seed(seed)
    return nn.Sequential(nn.Linear(20, 64), nn.ReLU(), nn.Linear(64, 48), nn.ReLU(), nn.Linear(48, 5)).to(dtype)


def batches(n, seed=1, dtype=torch.float64):
    g = torch.Generator().manual_seed(seed)
    return [(torch.randn(16, 20, generator=g, dtype=dtype), torch.randint(0, 5, (16,), generator=g))
            for _ in range(n)]


def train(model, engine, opt, data):
    loss = None
    for x, y in data:
        opt.zero_grad()
        # as in a training loop, the previous step's graph is still alive during this forward
        loss = nn.functional.cross_entropy(model(x), y)
        loss.backward()
        if engine.after_backward():
            opt.step()
        engine.after_step()


def pair(method, make_opt, **kw):
    """The same model, optimizer and engine settings on both backends (every layer compressed)."""
    opts = dict(sparsity=0.8, distribution="erk", total_steps=40, seed=3, **kw)
    a, b = mlp(), mlp()
    oa, ob = make_opt(a), make_opt(b)
    ea = SparsityEngine(a, oa, method, **opts)
    eb = SparseEngine(b, ob, method, max_density=1.0, min_size=0, block_elems=100, **opts)
    return (a, oa, ea), (b, ob, eb)


def sgd(m):
    return torch.optim.SGD(m.parameters(), lr=0.1, momentum=0.9, weight_decay=1e-4)


def adam(m):
    return torch.optim.Adam(m.parameters(), lr=0.01)


def assert_same_state(dense, sparse, all_compressed=True):
    """Masks, weights and per-weight optimizer state (at active positions) agree."""
    (a, oa, ea), (b, ob, eb) = dense, sparse
    if all_compressed:
        assert set(eb.layers) == set(ea.masks)
    for name, mask in ea.masks.items():
        layer = eb.layers.get(name)
        assert torch.equal(layer.mask() if layer else eb.masks[name], mask), name
        w = layer.dense_weight() if layer else eb.param(name).detach()
        assert torch.allclose(w, ea.param(name).detach(), atol=1e-12), name
        p = eb.param(name)
        for key, value in ob.state[p].items():
            if torch.is_tensor(value) and value.shape == p.shape:
                want = oa.state[ea.param(name)][key]
                got = value if layer else value[mask]
                assert torch.allclose(got, want[mask], atol=1e-12), (name, key)
    for xa, xb in zip(a.parameters(), b.parameters()):
        if xa.shape == xb.shape:  # biases
            assert torch.allclose(xa, xb, atol=1e-12)


# --- kernels ----------------------------------------------------------------------------------------
@pytest.mark.parametrize("dtype,tol,cache", [(torch.float64, 1e-12, True), (torch.float32, 1e-5, True),
                                             (torch.float64, 1e-12, False)])
def test_forward_and_gradients_match_masked_dense(dtype, tol, cache):
    torch.manual_seed(0)
    lin = nn.Linear(50, 30).to(dtype)
    mask = torch.rand(30, 50) < 0.2
    with torch.no_grad():
        lin.weight.mul_(mask)
    layer = SparseLinear.from_dense(lin, mask, cache_transpose=cache)
    x = torch.randn(4, 3, 50, dtype=dtype, requires_grad=True)  # extra batch dimension
    xs = x.detach().clone().requires_grad_()
    y, ys = lin(x), layer(xs)
    g = torch.randn_like(y)
    y.backward(g)
    ys.backward(g)
    assert torch.allclose(ys, y, atol=tol)
    assert torch.allclose(xs.grad, x.grad, atol=tol)
    assert torch.allclose(layer.values.grad, lin.weight.grad[mask], atol=tol)
    assert torch.allclose(layer.bias.grad, lin.bias.grad, atol=tol)
    assert layer.values.grad.shape == (int(mask.sum()),)
    assert (layer._transposed is not None) == cache                # Wᵀ kept only when asked


def test_weight_gradient_by_hand():
    # W = [[0, 2], [3, 0]] (2 nonzeros), x = [[1, 10]], g = [[1, 100]]: ∂L/∂W = gᵀx = [[1, 10], [100, 1000]]
    layer = SparseLinear(2, 2, torch.tensor([1, 2]), torch.tensor([2.0, 3.0]), bias=None)
    x = torch.tensor([[1.0, 10.0]], requires_grad=True)
    y = layer(x)
    assert y.tolist() == [[20.0, 3.0]]
    y.backward(torch.tensor([[1.0, 100.0]]))
    assert layer.values.grad.tolist() == [10.0, 100.0]          # only the two active entries
    assert x.grad.tolist() == [[300.0, 2.0]]                     # g W


def test_csr_helpers():
    crow, col = torch.tensor([0, 2, 2, 3], dtype=torch.int32), torch.tensor([0, 3, 1], dtype=torch.int32)
    assert flat_from_csr(crow, col, 4).tolist() == [0, 3, 9]
    t = transpose(crow, col, (3, 4))                               # Wᵀ is 4 × 3
    assert t.crow.tolist() == [0, 1, 2, 2, 3] and t.row.tolist() == [0, 2, 0] and t.perm.tolist() == [0, 2, 1]
    pos, found = match(torch.tensor([0, 3, 9]), torch.tensor([3, 5, 9]))
    assert found.tolist() == [True, False, True]
    assert carry(torch.tensor([1.0, 2.0, 3.0]), pos, found).tolist() == [2.0, 0.0, 3.0]
    flat = random_flat((100, 37), 500, torch.Generator().manual_seed(0))
    assert flat.numel() == 500 and torch.unique(flat).numel() == 500 and bool((flat.diff() > 0).all())


@pytest.mark.parametrize("bias", [True, False])
def test_sparse_linear_output_is_not_a_view_and_takes_an_inplace_relu(bias):
    g = torch.Generator().manual_seed(4)
    lin = nn.Linear(12, 9, bias=bias).double()
    mask = torch.rand(9, 12, generator=g) < 0.4
    with torch.no_grad():
        lin.weight.mul_(mask)
    sp = SparseLinear.from_dense(lin, mask)
    x = torch.randn(5, 12, generator=g, dtype=torch.float64, requires_grad=True)
    x2 = x.detach().clone().requires_grad_()
    y = sp(x)
    assert y._base is None and y.T.is_contiguous()           # yᵀ is the next layer's contiguous xᵀ
    nn.functional.relu(y, inplace=True).square().sum().backward()
    nn.functional.relu(lin(x2)).square().sum().backward()
    assert torch.allclose(x.grad, x2.grad, atol=1e-12)
    assert torch.allclose(sp.values.grad, lin.weight.grad[mask], atol=1e-12)
    if bias:
        assert torch.allclose(sp.bias.grad, lin.bias.grad, atol=1e-12)


@pytest.mark.parametrize("block", [1, 7, 64, 10_000])
@pytest.mark.parametrize("neg_inf", [0.0, 0.5])
def test_streaming_topk_equals_topk_mask(block, neg_inf):
    g = torch.Generator().manual_seed(block)
    scores = torch.randint(0, 5, (600,), generator=g).float()     # many ties: the tie rule matters
    scores[::37] = float("nan")
    # −∞ scores tie with the excluded entries inside a block: eligible ones must still be chosen
    scores[torch.rand(600, generator=g) < neg_inf] = -float("inf")
    eligible = torch.rand(600, generator=g) < 0.7
    for k in (0, 1, 13, 150, int(eligible.sum()) - 1, int(eligible.sum())):
        blocks = [(i, scores[i:i + block], torch.nonzero(~eligible[i:i + block]).squeeze(1))
                  for i in range(0, 600, block)]
        got = streaming_topk(blocks, k)
        want = torch.nonzero(topk_mask(scores, k, eligible=eligible)).squeeze(1)
        assert torch.equal(got, want), k


# --- engine equivalence -------------------------------------------------------------------------------
DYNAMIC = {"delta_t": 3}
GMP = {"start": 1, "end": 9, "frequency": 2}


@pytest.mark.parametrize("method,make_opt,options", [
    ("rigl", sgd, DYNAMIC), ("set", sgd, DYNAMIC), ("rigl", adam, DYNAMIC), ("static", sgd, {}),
    ("snfs", sgd, DYNAMIC), ("snfs", adam, DYNAMIC),
    *[("rigl", opt, {**DYNAMIC, "redistribution": r}) for r in ("momentum", "magnitude") for opt in (sgd, adam)],
    ("set", adam, {**DYNAMIC, "redistribution": "nonzeros"}),
    ("gmp", sgd, GMP), ("gmp", adam, {**GMP, "scope": "global"}),
], ids=lambda v: v if isinstance(v, str) else getattr(v, "__name__", None) or "-".join(
    str(x) for k, x in v.items() if k in ("redistribution", "scope")) or "default")
def test_training_matches_masked_dense(method, make_opt, options):
    dense, sparse = pair(method, make_opt, **options)
    assert_same_state(dense, sparse)
    counts = {n: l.nnz for n, l in sparse[2].layers.items()}
    data = batches(11)                                                 # updates at steps 3, 6, 9
    train(dense[0], dense[2], dense[1], data)
    train(sparse[0], sparse[2], sparse[1], data)
    if method != "static":
        assert dense[2].last_update is not None and dense[2].last_update["step"] == 9
        assert sparse[2].last_update["per_layer"] == dense[2].last_update["per_layer"]
        assert (sum(sparse[2].last_update["per_layer"].values()) > 0) == (method != "gmp")
    nnz = {n: l.nnz for n, l in sparse[2].layers.items()}
    if method == "gmp" or options.get("redistribution", "none") not in ("none", "nonzeros"):
        assert nnz != counts                                           # per-layer counts moved
    if method == "gmp":
        assert sum(nnz.values()) == sum(int(m.sum()) for m in dense[2].masks.values()) < sum(counts.values())
    for name, ema in dense[2].method.state_dict().get("ema", {}).items():  # SNFS / momentum: dense EMA
        assert torch.allclose(sparse[2].method.ema[name], ema, atol=1e-12), name
    assert_same_state(dense, sparse)


def test_switching_backends_mid_run_keeps_the_trajectory():
    (a, oa, ea), _ = pair("rigl", sgd, delta_t=3)
    b, ob = mlp(), None
    ob = sgd(b)
    eb = SparsityEngine(b, ob, "rigl", sparsity=0.8, distribution="erk", total_steps=40, seed=3, delta_t=3)
    data = batches(10)
    train(a, ea, oa, data)                                             # masked-dense throughout
    eb = use_sparse_backend(b, eb, max_density=1.0, min_size=0)
    train(b, eb, ob, data[:4])                                         # sparse, with an update at 3
    eb = use_dense_backend(b, eb)
    assert type(eb) is SparsityEngine and all(type(m) is not SparseLinear for m in b)
    train(b, eb, ob, data[4:])                                         # dense again, updates at 6, 9
    for name in ea.masks:
        assert torch.equal(ea.masks[name], eb.masks[name])
        assert torch.allclose(ea.param(name), eb.param(name), atol=1e-12)
        # masked-dense keeps stale momentum at inactive positions (never read: regrown weights get
        # zero state); the sparse backend drops it. Active positions must agree.
        mask = ea.masks[name]
        assert torch.allclose(oa.state[ea.param(name)]["momentum_buffer"][mask],
                              ob.state[eb.param(name)]["momentum_buffer"][mask], atol=1e-12)


def test_rigl_grows_where_the_dense_gradient_is_largest():
    (_, _, ea), (b, ob, eb) = pair("rigl", sgd, delta_t=1, start=0)
    x, y = batches(1)[0]
    ob.zero_grad()
    nn.functional.cross_entropy(b(x), y).backward()
    assert not eb.after_backward()                                   # RigL skips the SGD step
    name, layer = next(iter(eb.layers.items()))
    grad = eb.dense_grad(name)                                        # gᵀx, formed from the capture
    old = layer.mask()
    eb.after_step()
    grown = layer.mask() & ~old
    assert int(grown.sum()) > 0
    assert float(grad.abs()[grown].min()) >= float(grad.abs()[~layer.mask() & ~old].max())


def test_update_invariants_exact_count_zero_init_zero_state():
    _, (b, ob, eb) = pair("set", adam, delta_t=2)                  # updates at steps 2, 4, ...
    counts = {n: l.nnz for n, l in eb.layers.items()}
    train(b, eb, ob, batches(2))
    x, y = batches(1, seed=5)[0]
    ob.zero_grad()
    nn.functional.cross_entropy(b(x), y).backward()
    assert eb.after_backward()                                         # SET takes the SGD/Adam step
    ob.step()
    before = {n: (l.flat_indices(), l.values.detach().clone(), ob.state[l.values]["exp_avg"].clone())
              for n, l in eb.layers.items()}
    eb.after_step()                                                    # step 2: topology update
    assert eb.last_update["step"] == 2
    for name, layer in eb.layers.items():
        assert layer.nnz == counts[name] == int(eb.masks[name].sum())
        old_flat, old_values, old_m = before[name]
        pos, found = match(old_flat, layer.flat_indices())
        assert int((~found).sum()) == eb.last_update["per_layer"][name] > 0
        assert bool((layer.values[~found] == 0).all())
        for key in ("exp_avg", "exp_avg_sq"):
            assert bool((ob.state[layer.values][key][~found] == 0).all())
        assert torch.equal(ob.state[layer.values]["exp_avg"][found], old_m[pos[found]])
        assert torch.equal(layer.values.detach()[found], old_values[pos[found]])


def test_mixed_backends_and_policy():
    model = mlp()
    engine = SparsityEngine(model, sgd(model), "set", sparsity=0.9, distribution="erk", total_steps=20)
    sp = use_sparse_backend(model, engine, max_density=0.2, min_size=2000)
    assert set(sp.layers) == {"2.weight"}                             # 20×64 and 48×5 are too small
    assert isinstance(model[2], SparseLinear) and type(model[0]) is nn.Linear
    assert sp.is_compressed("2.weight") and not sp.is_compressed("0.weight")
    train(model, sp, sp.optimizer, batches(3))
    rep = sp.density_report()
    assert rep["model_params"] == sum(p.numel() for p in mlp().parameters())
    with pytest.raises(ConfigError):
        use_sparse_backend(model, sp)
    policy = BackendPolicy(0.1, 100, {"head*": "dense", "big": "sparse"})
    assert policy.choose("head.weight", 10 ** 6, 10 ** 4) == "dense"
    assert policy.choose("big", 10, 9) == "sparse"
    assert policy.choose("x", 10 ** 6, 5 * 10 ** 4) == "sparse" and policy.choose("x", 10 ** 6, 5 * 10 ** 5) == "dense"
    # 90 % sparsity of 4096² leaves N − floor(0.9 N) = 1,677,722 active: density 0.10000002 still counts
    assert policy.choose("x", 4096 * 4096, 1677722) == "sparse" and policy.choose("x", 4096 * 4096, 1677723) == "dense"
    with pytest.raises(ConfigError):
        BackendPolicy(overrides={"x": "csr"})


def test_snfs_forms_the_dense_gradient_every_step(caplog):
    with caplog.at_level("INFO", logger="sparsetrain.sparsity"):
        (a, oa, ea), (b, ob, eb) = pair("snfs", sgd, delta_t=5)
    assert any("dense per-weight statistic" in r.getMessage() for r in caplog.records)
    for x, y in batches(3):                                            # steps 0-2: no topology update
        for model, opt in ((a, oa), (b, ob)):
            opt.zero_grad()
            nn.functional.cross_entropy(model(x), y).backward()
        for name in eb.layers:
            assert not eb.method.is_update_step(eb.step)
            assert torch.allclose(eb.dense_grad(name), ea.dense_grad(name), atol=1e-12), name
        for model, opt, engine in ((a, oa, ea), (b, ob, eb)):
            engine.step_optimizer()
    assert_same_state((a, oa, ea), (b, ob, eb))


def big_mlp(dtype=torch.float64):
    """Two layers above the default policy's min_size (300×256, 256×256) and a small head."""
    torch.manual_seed(0)
    return nn.Sequential(nn.Linear(300, 256), nn.ReLU(), nn.Linear(256, 256), nn.ReLU(), nn.Linear(256, 10)).to(dtype)


def big_batches(n, seed=1):
    g = torch.Generator().manual_seed(seed)
    return [(torch.randn(16, 300, generator=g, dtype=torch.float64), torch.randint(0, 10, (16,), generator=g))
            for _ in range(n)]


def gmp_pair(make_opt, **policy):
    """GMP from density 1.0 to 0.05 (pruning at steps 0, 2, ..., 8) on both backends; the sparse
    engine under the default policy (or ``policy``) starts with every layer dense-stored."""
    opts = dict(sparsity=0.95, distribution="erk", total_steps=12, seed=3, start=0, end=8, frequency=2)
    a, b = big_mlp(), big_mlp()
    oa, ob = make_opt(a), make_opt(b)
    return (a, oa, SparsityEngine(a, oa, "gmp", **opts)), (b, ob, SparseEngine(b, ob, "gmp", **opts, **policy))


@pytest.mark.parametrize("make_opt", [sgd, adam])
def test_gmp_compresses_big_layers_once_within_the_policy(make_opt):
    dense, sparse = gmp_pair(make_opt)
    b, ob, eb = sparse
    assert not eb.layers                                               # density 1: all dense-stored
    compressed = []
    for batch in big_batches(12):
        train(dense[0], dense[2], dense[1], [batch])
        train(b, eb, ob, [batch])
        compressed.append(sorted(eb.layers))
    # ERK at 0.95: the big layers pass density 0.1 at the pruning step 6 (0.055); the head ends at 0.56
    assert compressed[5] == [] and compressed[6] == compressed[-1] == ["0.weight", "2.weight"]
    assert isinstance(b[0], SparseLinear) and isinstance(b[2], SparseLinear) and type(b[4]) is nn.Linear
    assert eb.layers["0.weight"].density < 0.05 and b[0].values in ob.param_groups[0]["params"]
    assert_same_state(dense, sparse, all_compressed=False)


def test_gmp_checkpoint_after_automatic_compression():
    _, (b, ob, eb) = gmp_pair(adam)
    data = big_batches(12)
    train(b, eb, ob, data[:7])                                         # compressed at step 6
    state = copy.deepcopy({"model": b.state_dict(), "opt": ob.state_dict(), "engine": eb.state_dict()})
    _, (c, oc, ec) = gmp_pair(adam)
    assert ec.restore_structure(state["engine"]) == ["0.weight", "2.weight"]
    c.load_state_dict(state["model"])
    oc.load_state_dict(state["opt"])
    ec.load_state_dict(state["engine"])
    _, (e, oe, ee) = gmp_pair(adam)                                    # the engine's state first works too
    again = copy.deepcopy(state)  # optimizers load state tensors without copying: no sharing with oc
    ee.load_state_dict(again["engine"])
    e.load_state_dict(again["model"])
    oe.load_state_dict(again["opt"])
    train(b, eb, ob, data[7:])                                         # pruning at step 8 on all three
    train(c, ec, oc, data[7:])
    train(e, ee, oe, data[7:])
    for x, y in zip(c.parameters(), e.parameters()):
        assert torch.equal(x, y)
    assert set(ec.layers) == set(eb.layers) and eb.last_update["step"] == ec.last_update["step"] == 8
    bad = copy.deepcopy(state["engine"])
    bad["config"]["method"] = "rigl"
    _, (d, _, ed) = gmp_pair(adam)
    with pytest.raises(CheckpointError, match="method 'rigl'"):
        ed.load_state_dict(bad)
    assert not ed.layers and type(d[0]) is nn.Linear                  # refused before compressing
    for x, y in zip(b.parameters(), c.parameters()):
        assert torch.equal(x, y)
    for name, layer in eb.layers.items():
        assert torch.equal(layer.flat_indices(), ec.layers[name].flat_indices())
        assert torch.equal(ob.state[layer.values]["exp_avg"], oc.state[ec.layers[name].values]["exp_avg"])


def test_set_masks_repatterns_compressed_layers_and_compresses_newly_sparse_ones():
    dense, sparse = gmp_pair(sgd, overrides={"2.weight": "sparse"})  # 2.weight compressed at density 1
    assert set(sparse[2].layers) == {"2.weight"}
    data = big_batches(4)
    train(dense[0], dense[2], dense[1], data[:1])
    train(sparse[0], sparse[2], sparse[1], data[:1])
    g = torch.Generator().manual_seed(0)
    masks = {n: torch.rand(m.shape, generator=g) < d
             for (n, m), d in zip(dense[2].masks.items(), (0.05, 0.3, 0.5))}
    for engine in (dense[2], sparse[2]):
        engine.set_masks(masks, reason="test")
    assert list(sparse[2].layers) == ["0.weight", "2.weight"]          # 0.weight: now within the policy
    assert sparse[2].layers["2.weight"].nnz == int(masks["2.weight"].sum())
    assert_same_state(dense, sparse, all_compressed=False)
    train(dense[0], dense[2], dense[1], data[1:])
    train(sparse[0], sparse[2], sparse[1], data[1:])
    assert_same_state(dense, sparse, all_compressed=False)


def test_snfs_checkpoint_round_trip_is_exact():
    _, (b, ob, eb) = pair("snfs", adam, delta_t=2, redistribution="momentum")
    counts = [l.nnz for l in eb.layers.values()]
    train(b, eb, ob, batches(3))                                       # update at step 2
    assert [l.nnz for l in eb.layers.values()] != counts               # redistribution moved counts
    state = copy.deepcopy({"model": b.state_dict(), "opt": ob.state_dict(), "engine": eb.state_dict()})
    _, (c, oc, ec) = pair("snfs", adam, delta_t=2, redistribution="momentum")
    c.load_state_dict(state["model"])
    oc.load_state_dict(state["opt"])
    ec.load_state_dict(state["engine"])
    assert set(ec.method.ema) == set(eb.method.ema) == set(eb.layers)
    data = batches(4, seed=7)                                          # updates at steps 4 and 6
    train(b, eb, ob, data)
    train(c, ec, oc, data)
    assert ec.last_update == eb.last_update and ec.last_update["step"] == 6
    for name, layer in eb.layers.items():
        other = ec.layers[name]
        assert torch.equal(layer.flat_indices(), other.flat_indices()), name
        assert torch.equal(layer.values, other.values), name
        assert torch.equal(eb.method.ema[name], ec.method.ema[name]), name
        for key in ("exp_avg", "exp_avg_sq"):
            assert torch.equal(ob.state[layer.values][key], oc.state[other.values][key]), (name, key)


def test_sparsify_and_densify_round_trip_keep_outputs_and_state():
    model = mlp()
    opt = sgd(model)
    engine = SparsityEngine(model, opt, "static", sparsity=0.8, distribution="erk", total_steps=10)
    train(model, engine, opt, batches(2))
    x = batches(1, seed=9)[0][0]
    ref = model(x)
    mom = opt.state[model[2].weight]["momentum_buffer"].clone()
    masks = {n: m.clone() for n, m in engine.masks.items()}
    layers = sparsify_model(model, masks, max_density=1.0, min_size=0, optimizer=opt)
    assert set(layers) == set(masks)
    assert torch.allclose(model(x), ref, atol=1e-12)
    assert torch.equal(opt.state[model[2].values]["momentum_buffer"], mom[masks["2.weight"]])
    back = densify_model(model, opt)
    assert all(torch.equal(back[n], masks[n]) for n in masks)
    assert torch.allclose(model(x), ref, atol=1e-12)
    assert torch.equal(opt.state[model[2].weight]["momentum_buffer"], mom * masks["2.weight"])


def test_checkpoint_round_trip():
    (_, _, _), (b, ob, eb) = pair("rigl", sgd, delta_t=2)
    train(b, eb, ob, batches(3))
    state = copy.deepcopy({"model": b.state_dict(), "opt": ob.state_dict(), "engine": eb.state_dict()})
    _, (c, oc, ec) = pair("rigl", sgd, delta_t=2)
    c.load_state_dict(state["model"])
    oc.load_state_dict(state["opt"])
    ec.load_state_dict(state["engine"])
    data = batches(3, seed=7)
    train(b, eb, ob, data)
    train(c, ec, oc, data)
    for name in eb.layers:
        assert torch.equal(eb.layers[name].flat_indices(), ec.layers[name].flat_indices())
        assert torch.allclose(eb.layers[name].values, ec.layers[name].values, atol=1e-12)
    bad = copy.deepcopy(state["engine"])
    bad["masks"]["2.weight"] = torch.ones(48, 64, dtype=torch.bool)
    with pytest.raises(CheckpointError):
        ec.load_state_dict(bad)


def test_from_sparse_model_has_the_engine_interface():
    torch.manual_seed(0)
    model = nn.Sequential(SparseLinear.random(30, 40, 0.1), nn.ReLU(), SparseLinear.random(40, 4, 0.5))
    opt = adam(model)
    eng = SparseEngine.from_sparse_model(model, opt, "rigl", total_steps=10, delta_t=2)
    ref = SparseEngine(mlp(), None, "rigl", sparsity=0.9, total_steps=10, max_density=1.0, min_size=0)
    assert set(vars(eng)) == set(vars(ref))
    nnz = [l.nnz for l in eng.layers.values()]
    x, y = torch.randn(8, 30), torch.randint(0, 4, (8,))
    for _ in range(4):
        opt.zero_grad()
        nn.functional.cross_entropy(model(x), y).backward()
        eng.step_optimizer()
    assert eng.last_update["step"] == 2 and [l.nnz for l in eng.layers.values()] == nnz


def test_export_load_round_trip(tmp_path):
    model = mlp(dtype=torch.float32)
    engine = SparsityEngine(model, None, "static", sparsity=0.9, distribution="erk", total_steps=10)
    sp = use_sparse_backend(model, engine, max_density=0.5, min_size=1000)
    x = torch.randn(7, 20)
    with torch.no_grad():
        ref = model(x)
    path = tmp_path / "m.safetensors"
    export_sparse(model, path, masks=sp.masks)
    ckpt = load_sparse(path)
    assert set(ckpt.masks()) == set(sp.masks)
    for name, mask in sp.masks.items():
        assert torch.equal(ckpt.masks()[name], mask.to_dense() if mask.layout != torch.strided else mask)
    fresh = mlp(seed=5, dtype=torch.float32)
    ckpt.load_into(fresh)                         # compressed layers come back as SparseLinear
    assert isinstance(fresh[2], SparseLinear)
    with torch.no_grad():
        assert torch.allclose(fresh(x), ref, atol=1e-6)
    dense = mlp(seed=6, dtype=torch.float32)
    dense.load_state_dict(ckpt.dense_state_dict())
    with torch.no_grad():
        assert torch.allclose(dense(x), ref, atol=1e-6)
    dense_bytes = sum(t.numel() * t.element_size() for t in mlp(dtype=torch.float32).state_dict().values())
    assert path.stat().st_size < dense_bytes


def test_export_compresses_masked_conv_weights_too(tmp_path):
    torch.manual_seed(0)
    model = nn.Sequential(nn.Conv2d(3, 8, 3), nn.Flatten(), nn.Linear(8 * 4 * 4, 4))
    engine = SparsityEngine(model, None, "static", sparsity=0.7, distribution="uniform", dense_first=False,
                            total_steps=10)
    x = torch.randn(2, 3, 6, 6)
    with torch.no_grad():
        ref = model(x)
    export_sparse(model, tmp_path / "c.safetensors", masks=engine.masks)
    ckpt = load_sparse(tmp_path / "c.safetensors")
    assert set(ckpt.shapes) == {"0.weight", "2.weight"} and ckpt.shapes["0.weight"] == (8, 3, 3, 3)
    assert torch.equal(ckpt.masks()["0.weight"], engine.masks["0.weight"])
    fresh = nn.Sequential(nn.Conv2d(3, 8, 3), nn.Flatten(), nn.Linear(8 * 4 * 4, 4))
    ckpt.load_into(fresh)
    with torch.no_grad():
        assert torch.allclose(fresh(x), ref, atol=1e-6)
    with pytest.raises(CheckpointError):
        ckpt.load_into(mlp(dtype=torch.float32))
