"""SparseLSTM / SparseGRU agree with nn.LSTM / nn.GRU, and the sparse engine trains RNNs like the
masked-dense engine."""
import copy
import logging

import pytest
import torch
from torch import nn

from sparsetrain.errors import ConfigError
from sparsetrain.flops import count_flops
from sparsetrain.models.rnn import RNNLanguageModel
from sparsetrain.sparsity.backend import SparseEngine, use_dense_backend, use_sparse_backend
from sparsetrain.sparsity.storage.csr import (SparseGRU, SparseLinear, SparseLSTM, densify_model, export_sparse,
                                              load_sparse, sparsify_model)
from sparsetrain.sparsity.engine import SparsityEngine
from sparsetrain.sparsity.storage.csr import native

VOCAB = 11
PAIRS = [(nn.LSTM, SparseLSTM), (nn.GRU, SparseGRU)]


def masked_rnn(cls, layers, batch_first, bias=True, seed=0, density=0.4, dtype=torch.float64):
    """A float64 nn.LSTM/nn.GRU (input 7, hidden 5) with random masks applied; returns (rnn, masks)."""
    torch.manual_seed(seed)
    rnn = cls(7, 5, num_layers=layers, batch_first=batch_first, bias=bias).to(dtype)
    masks = {}
    with torch.no_grad():
        for name, p in rnn.named_parameters():
            if name.startswith("weight"):
                masks[name] = torch.rand(p.shape) < density
                p.mul_(masks[name])
    return rnn, masks


def states(out):
    """h_n (and c_n) of an RNN's result as a tuple."""
    return out[1] if isinstance(out[1], tuple) else (out[1],)


# --- the modules -------------------------------------------------------------------------------------
@pytest.mark.parametrize("cls,sparse_cls", PAIRS)
@pytest.mark.parametrize("layers", [1, 2])
@pytest.mark.parametrize("batch_first", [False, True])
@pytest.mark.parametrize("kernel", ["mkl", "native"])
def test_forward_states_and_all_gradients_match_torch(cls, sparse_cls, layers, batch_first, kernel):
    # float64 runs on MKL; the native kernels are float32 (compared at float32 tolerance)
    dtype, tol = (torch.float64, 1e-12) if kernel == "mkl" else (torch.float32, 1e-5)
    if kernel == "native" and not native.available():
        pytest.skip("the native kernels were not built")
    rnn, masks = masked_rnn(cls, layers, batch_first, dtype=dtype)
    sp = sparse_cls.from_dense(rnn, masks)
    for layer in sp.matrices().values():
        layer.kernel = kernel
    assert type(sp) is sparse_cls and isinstance(sp.weight_hh_l0, SparseLinear)
    g = torch.Generator().manual_seed(1)
    x = torch.randn((3, 4, 7) if batch_first else (4, 3, 7), generator=g, dtype=dtype)  # T=4, B=3
    h0 = [torch.randn(layers, 3, 5, generator=g, dtype=dtype) for _ in range(2 if cls is nn.LSTM else 1)]
    inputs = [t.clone().requires_grad_() for t in [x] + h0], [t.clone().requires_grad_() for t in [x] + h0]
    outs = []
    for module, (xi, *hi) in ((rnn, inputs[0]), (sp, inputs[1])):
        out = module(xi, tuple(hi) if cls is nn.LSTM else hi[0])
        outs.append(out)
    (ya, *sa), (yb, *sb) = [(o[0], *states(o)) for o in outs]
    assert ya.shape == yb.shape and [s.shape for s in sa] == [s.shape for s in sb]
    assert torch.allclose(ya, yb, atol=tol)
    for a, b in zip(sa, sb):
        assert torch.allclose(a, b, atol=tol)
    # a loss reading the output and every final state
    weights = [torch.randn(t.shape, generator=g, dtype=dtype) for t in [ya, *sa]]
    sum((w * t).sum() for w, t in zip(weights, [ya, *sa])).backward()
    sum((w * t).sum() for w, t in zip(weights, [yb, *sb])).backward()
    for a, b in zip(*inputs):
        assert torch.allclose(a.grad, b.grad, atol=tol)                  # input, h0 (, c0)
    for name, layer in sp.matrices().items():
        dense_grad = getattr(rnn, name).grad
        assert torch.allclose(layer.values.grad, dense_grad[masks[name]], atol=tol), name
        bias = name.replace("weight", "bias")
        assert torch.allclose(getattr(sp, bias).grad, getattr(rnn, bias).grad, atol=tol), bias


@pytest.mark.parametrize("cls,sparse_cls", PAIRS)
def test_no_bias_unbatched_and_default_state(cls, sparse_cls):
    rnn, masks = masked_rnn(cls, 2, False, bias=False)
    sp = sparse_cls.from_dense(rnn, masks)
    assert sp.bias is False and not any(n.startswith("bias") for n, _ in sp.named_parameters())
    x = torch.randn(6, 7, dtype=torch.float64)                                # (T, in): no batch dimension
    ya, yb = rnn(x), sp(x)
    assert yb[0].shape == (6, 5) and states(yb)[0].shape == (2, 5)
    assert torch.allclose(ya[0], yb[0], atol=1e-12)
    assert all(torch.allclose(a, b, atol=1e-12) for a, b in zip(states(ya), states(yb)))


@pytest.mark.parametrize("cls,sparse_cls", PAIRS)
def test_inter_layer_dropout_like_torch(cls, sparse_cls):
    rnn, masks = masked_rnn(cls, 3, True)
    rnn.dropout = 0.5
    sp = sparse_cls.from_dense(rnn, masks)
    assert sp.dropout == 0.5 and sp.training
    x = torch.randn(2, 5, 7, dtype=torch.float64)
    torch.manual_seed(7)
    ya = rnn(x)[0]
    torch.manual_seed(7)
    yb = sp(x)[0]
    torch.manual_seed(8)
    yc = sp(x)[0]
    assert torch.allclose(ya, yb, atol=1e-12)                  # same dropout masks as torch's kernel
    assert not torch.allclose(yb, yc)                          # ... and dropout is really applied
    rnn.eval(), sp.eval()
    assert torch.allclose(rnn(x)[0], sp(x)[0], atol=1e-12)


@pytest.mark.parametrize("cls,sparse_cls", PAIRS)
def test_captured_factors_give_the_dense_gradient_summed_over_time(cls, sparse_cls):
    rnn, masks = masked_rnn(cls, 2, True)
    sp = sparse_cls.from_dense(rnn, masks)
    for layer in sp.matrices().values():
        layer.capture = []
    x = torch.randn(3, 4, 7, dtype=torch.float64)
    rnn(x)[0].pow(2).sum().backward()
    sp(x)[0].pow(2).sum().backward()
    for name, layer in sp.matrices().items():
        assert len(layer.capture) == 1                          # all time steps at once
        grad = sum(g.T @ xx for xx, g in layer.capture)
        assert torch.allclose(grad, getattr(rnn, name).grad, atol=1e-12), name


def test_to_dense_round_trip_and_bad_input():
    rnn, masks = masked_rnn(nn.LSTM, 2, True)
    sp = SparseLSTM.from_dense(rnn, masks)
    back = sp.to_dense()
    assert type(back) is nn.LSTM and back.batch_first and back.num_layers == 2
    for name, p in rnn.named_parameters():
        assert torch.equal(getattr(back, name), p), name
    assert back.bias_ih_l1 is sp.bias_ih_l1                              # biases are shared, not copied
    with pytest.raises(ConfigError, match="converts LSTM, not GRU"):
        SparseLSTM.from_dense(nn.GRU(3, 4))
    with pytest.raises(ValueError, match="initial state"):
        sp(torch.randn(2, 3, 7, dtype=torch.float64), (torch.zeros(1, 2, 5), torch.zeros(1, 2, 5)))


@pytest.mark.parametrize("kind,match", [({"bidirectional": True}, "bidirectional"), ({"proj_size": 2}, "proj_size")])
def test_unsupported_lstm_is_refused(kind, match):
    with pytest.raises(ConfigError, match=match):
        SparseLSTM.from_dense(nn.LSTM(3, 4, **kind))


def test_random_sparse_gru_trains_with_from_sparse_model():
    torch.manual_seed(0)
    model = nn.Sequential()
    model.add_module("rnn", SparseGRU.random(6, 10, 0.2, num_layers=2, generator=torch.Generator().manual_seed(1)))
    assert [l.nnz for l in model.rnn.matrices().values()] == [36, 60, 60, 60]   # count_active(30·6 or 30·10, 0.2)
    assert all(float(p.detach().abs().max()) <= 10 ** -0.5 for p in model.parameters())
    opt = torch.optim.SGD(model.parameters(), lr=0.1)
    eng = SparseEngine.from_sparse_model(model, opt, "rigl", total_steps=10, delta_t=2)
    assert set(eng.layers) == {"rnn.weight_ih_l0", "rnn.weight_hh_l0", "rnn.weight_ih_l1", "rnn.weight_hh_l1"}
    assert {t.module_name for t in eng.targets} == {"rnn"}
    x = torch.randn(5, 3, 6)
    for _ in range(3):
        opt.zero_grad()
        model.rnn(x)[0].pow(2).sum().backward()
        eng.step_optimizer()
    assert eng.last_update["step"] == 2 and eng.last_update["grown"] > 0
    assert [l.nnz for l in model.rnn.matrices().values()] == [36, 60, 60, 60]


# --- the engine ------------------------------------------------------------------------------------
def lm(cell="lstm", layers=2, dropout=0.0, seed=0):
    torch.manual_seed(seed)
    return RNNLanguageModel(cell, VOCAB, 8, 12, layers, (), dropout, False).double()


def token_batches(n, seed=1):
    g = torch.Generator().manual_seed(seed)
    return [torch.randint(0, VOCAB, (3, 7), generator=g) for _ in range(n)]


def lm_train(model, engine, opt, data):
    for i, tokens in enumerate(data):
        opt.zero_grad()
        torch.manual_seed(100 + i)                              # same dropout masks on both backends
        logits = model(tokens[:, :-1])
        nn.functional.cross_entropy(logits.reshape(-1, VOCAB), tokens[:, 1:].reshape(-1)).backward()
        if engine.after_backward():
            opt.step()
        engine.after_step()


def lm_pair(method, cell="lstm", dropout=0.0, **kw):
    opts = dict(sparsity=0.7, distribution="erk", total_steps=40, seed=3, delta_t=3, **kw)
    a, b = lm(cell, dropout=dropout), lm(cell, dropout=dropout)
    oa = torch.optim.SGD(a.parameters(), lr=0.2, momentum=0.9)
    ob = torch.optim.SGD(b.parameters(), lr=0.2, momentum=0.9)
    ea = SparsityEngine(a, oa, method, **opts)
    eb = SparseEngine(b, ob, method, max_density=1.0, min_size=0, block_elems=50, **opts)
    return (a, oa, ea), (b, ob, eb)


def momentum(opt, p):
    return opt.state.get(p, {}).get("momentum_buffer")


def assert_same_lm_state(dense, sparse, trained=True):
    (a, oa, ea), (b, ob, eb) = dense, sparse
    assert set(eb.layers) == set(ea.masks)
    for name, layer in eb.layers.items():
        mask = ea.masks[name]
        assert torch.equal(layer.mask(), mask), name
        assert torch.allclose(layer.dense_weight(), ea.param(name).detach(), atol=1e-10), name
        if trained:
            mom = momentum(oa, ea.param(name))[mask]
            assert torch.allclose(momentum(ob, layer.values), mom, atol=1e-10), name
    dense_params = dict(a.named_parameters())
    for name, p in b.named_parameters():
        if name in dense_params:                                      # biases, embedding
            assert torch.allclose(p, dense_params[name], atol=1e-10), name
            if trained:
                assert torch.allclose(momentum(ob, p), momentum(oa, dense_params[name]), atol=1e-10), name


@pytest.mark.parametrize("method,cell,dropout", [("rigl", "lstm", 0.0), ("rigl", "gru", 0.2),
                                                 ("set", "lstm", 0.2), ("set", "gru", 0.0)])
def test_lm_training_matches_masked_dense(method, cell, dropout):
    dense, sparse = lm_pair(method, cell, dropout)
    b, eb = sparse[0], sparse[2]
    assert isinstance(b.rnn, SparseLSTM if cell == "lstm" else SparseGRU)
    assert {"rnn.weight_ih_l0", "rnn.weight_hh_l1", "readout.weight"} <= set(eb.layers)
    assert eb.layers["rnn.weight_hh_l1"] is b.rnn.weight_hh_l1
    assert_same_lm_state(dense, sparse, trained=False)
    data = token_batches(7)
    lm_train(*[dense[i] for i in (0, 2, 1)], data)
    lm_train(*[sparse[i] for i in (0, 2, 1)], data)
    assert dense[2].last_update["step"] == 6 and dense[2].last_update["grown"] > 0
    per_layer = dense[2].last_update["per_layer"]
    assert per_layer["rnn.weight_hh_l0"] > 0 and sparse[2].last_update["per_layer"] == per_layer
    assert_same_lm_state(dense, sparse)


def test_state_dict_keys_and_density_report():
    (a, _, ea), (b, _, eb) = lm_pair("rigl")
    assert set(eb.state_dict()["masks"]) == set(ea.state_dict()["masks"])
    assert "rnn.weight_hh_l0.values" in b.state_dict() and "rnn.bias_hh_l0" in b.state_dict()
    ra, rb = ea.density_report(), eb.density_report()
    assert ra["layers"] == rb["layers"] and ra["model_params"] == rb["model_params"]


def test_round_trip_sparse_dense_sparse_keeps_outputs_and_state():
    _, (b, ob, eb) = lm_pair("rigl")
    lm_train(b, eb, ob, token_batches(4))                                       # incl. the update at step 3
    tokens = token_batches(1, seed=9)[0]
    b.eval()
    ref = b(tokens)
    values = {n: (l.values.detach().clone(), ob.state[l.values]["momentum_buffer"].clone(), l.mask())
              for n, l in eb.layers.items()}
    dense = use_dense_backend(b, eb)
    assert type(b.rnn) is nn.LSTM and not b.rnn.training
    assert torch.allclose(b(tokens), ref, atol=1e-12)
    for name, (v, mom, mask) in values.items():
        w = dense.param(name)
        assert w is b.get_parameter(name) and torch.equal(dense.masks[name], mask)
        assert torch.equal(w.detach()[mask], v) and bool((w.detach()[~mask] == 0).all())
        assert torch.equal(ob.state[w]["momentum_buffer"][mask], mom)
    again = use_sparse_backend(b, dense, max_density=1.0, min_size=0)
    assert isinstance(b.rnn, SparseLSTM) and set(again.layers) == set(values)
    assert torch.allclose(b(tokens), ref, atol=1e-12)
    for name, (v, mom, mask) in values.items():
        layer = again.layers[name]
        assert torch.equal(layer.values.detach(), v) and torch.equal(ob.state[layer.values]["momentum_buffer"], mom)
    assert {id(p) for g in ob.param_groups for p in g["params"]} == {id(p) for p in b.parameters()}


def test_sparsify_and_densify_model_functions():
    model = lm("gru")
    engine = SparsityEngine(model, None, "static", sparsity=0.8, distribution="erk", total_steps=10)
    tokens = token_batches(1)[0]
    ref = model(tokens)
    masks = {n: m.clone() for n, m in engine.masks.items()}
    layers = sparsify_model(model, masks, max_density=1.0, min_size=0)
    assert isinstance(model.rnn, SparseGRU) and set(layers) == set(masks)
    assert torch.allclose(model(tokens), ref, atol=1e-12)
    back = densify_model(model)
    assert type(model.rnn) is nn.GRU and set(back) == set(masks)
    assert all(torch.equal(back[n], masks[n]) for n in masks)
    assert torch.allclose(model(tokens), ref, atol=1e-12)


def test_rnn_is_compressed_whole_or_not_at_all(caplog):
    model = lm()
    custom = {"rnn.weight_ih_l0": 0.1, "rnn.weight_hh_l0": 0.1, "rnn.weight_ih_l1": 0.1,
              "rnn.weight_hh_l1": 0.5, "readout.weight": 0.1}
    opts = dict(sparsity=0.8, distribution="custom", custom=custom, total_steps=10)
    with caplog.at_level(logging.INFO, logger="sparsetrain.sparsity"):
        eng = SparseEngine(model, None, "set", max_density=0.2, min_size=0, **opts)
    assert type(model.rnn) is nn.LSTM and set(eng.layers) == {"readout.weight"}
    assert "leaving dense 'rnn': rnn.weight_hh_l1 too dense" in caplog.text
    forced = lm()
    eng = SparseEngine(forced, None, "set", max_density=0.2, min_size=0, overrides={"rnn": "sparse"}, **opts)
    assert isinstance(forced.rnn, SparseLSTM) and "rnn.weight_hh_l1" in eng.layers
    first_dense = lm()                                           # uniform keeps the first layer dense
    with caplog.at_level(logging.INFO, logger="sparsetrain.sparsity"):
        eng = SparseEngine(first_dense, None, "set", sparsity=0.8, distribution="uniform", total_steps=10,
                           max_density=1.0, min_size=0)
    assert type(first_dense.rnn) is nn.LSTM and "rnn.weight_ih_l0 not sparsified" in caplog.text


def test_bidirectional_lstm_is_left_dense_with_the_message(caplog):
    torch.manual_seed(0)
    model = nn.Sequential()
    model.add_module("rnn", nn.LSTM(6, 8, bidirectional=True))
    model.add_module("head", nn.Linear(16, 3))
    with caplog.at_level(logging.INFO, logger="sparsetrain.sparsity"):
        eng = SparseEngine(model, None, "set", sparsity=0.8, total_steps=10, max_density=1.0, min_size=0)
    assert type(model.rnn) is nn.LSTM and set(eng.layers) == {"head.weight"}
    assert "bidirectional RNNs are not supported by the sparse backend; it stays dense" in caplog.text
    out, _ = model.rnn(torch.randn(4, 2, 6))
    assert model.head(out).shape == (4, 2, 3)                       # the dense layer still trains as masked-dense
    with pytest.raises(ConfigError, match="cannot compress 'rnn'.*bidirectional"):
        SparseEngine(model, None, "set", sparsity=0.8, total_steps=10, overrides={"rnn": "sparse"})


def test_export_load_round_trip_with_rnn(tmp_path):
    _, (b, ob, eb) = lm_pair("set")
    lm_train(b, eb, ob, token_batches(4))
    b.eval()
    tokens = token_batches(1, seed=9)[0]
    with torch.no_grad():
        ref = b(tokens)
    path = tmp_path / "lm.safetensors"
    export_sparse(b, path)
    ckpt = load_sparse(path)
    assert {"rnn.weight_ih_l0", "rnn.weight_hh_l1"} <= set(ckpt.shapes)
    assert torch.equal(ckpt.masks()["rnn.weight_hh_l1"], eb.layers["rnn.weight_hh_l1"].mask())
    for fresh in (lm(seed=5), b):                              # a dense model, and one already sparse
        ckpt.load_into(fresh.eval())
        assert isinstance(fresh.rnn, SparseLSTM) and isinstance(fresh.readout, SparseLinear)
        with torch.no_grad():
            assert torch.allclose(fresh(tokens), ref, atol=1e-12)
    dense = lm(seed=6).eval()
    dense.load_state_dict(ckpt.dense_state_dict())
    with torch.no_grad():
        assert torch.allclose(dense(tokens), ref, atol=1e-12)
    kept_dense = lm(seed=7).eval()
    ckpt.load_into(kept_dense, compress=False)
    assert type(kept_dense.rnn) is nn.LSTM
    with torch.no_grad():
        assert torch.allclose(kept_dense(tokens), ref, atol=1e-12)


def test_flops_of_a_compressed_rnn_equal_the_masked_dense_count():
    (a, _, ea), (b, _, eb) = lm_pair("set")
    densities = {n: float(m.double().mean()) for n, m in ea.masks.items()}
    dense = count_flops(a, (6,), densities, input_dtype=torch.long)
    sparse = count_flops(b, (6,), input_dtype=torch.long)                  # compressed layers know their density
    assert [r.name for r in sparse.rows] == [r.name for r in dense.rows]
    assert "rnn.weight_hh_l1" in [r.name for r in sparse.rows]
    for r, s in zip(dense.rows, sparse.rows):
        assert s.dense == r.dense and s.sparse == pytest.approx(r.sparse) and s.density == pytest.approx(r.density)


def test_gmp_compresses_the_rnn_once_sparse_enough_and_resumes():
    opts = dict(sparsity=0.9, distribution="erk", total_steps=12, seed=3, start=0, end=8, frequency=2)

    def make(sparse=True):
        m = lm()
        o = torch.optim.SGD(m.parameters(), lr=0.2, momentum=0.9)
        return m, o, (SparseEngine(m, o, "gmp", max_density=0.3, min_size=0, **opts) if sparse
                      else SparsityEngine(m, o, "gmp", **opts))

    (a, oa, ea), (b, ob, eb) = make(False), make()
    assert type(b.rnn) is nn.LSTM and not eb.layers                   # density 1 at the start
    data = token_batches(12)
    lm_train(a, ea, oa, data[:9])
    lm_train(b, eb, ob, data[:9])
    assert isinstance(b.rnn, SparseLSTM) and "rnn.weight_hh_l1" in eb.layers
    for name, layer in eb.layers.items():
        assert torch.equal(layer.mask(), ea.masks[name])
        assert torch.allclose(layer.dense_weight(), ea.param(name).detach(), atol=1e-10), name
    state = copy.deepcopy({"model": b.state_dict(), "opt": ob.state_dict(), "engine": eb.state_dict()})
    c, oc, ec = make()
    assert set(ec.restore_structure(state["engine"])) == set(eb.layers)
    c.load_state_dict(state["model"])
    oc.load_state_dict(state["opt"])
    ec.load_state_dict(state["engine"])
    lm_train(b, eb, ob, data[9:])
    lm_train(c, ec, oc, data[9:])
    for (n, x), y in zip(b.named_parameters(), c.parameters()):
        assert torch.equal(x, y), n
