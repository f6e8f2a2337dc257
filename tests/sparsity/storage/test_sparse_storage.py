"""Layer stores: every registered storage keeps the store contract; engines are built only through
``SparsityEngine.__init__``; methods declare whether they run on compressed stores; compressed layers
count their own FLOPs; the package's layering (flops below sparsity, no import of the compat module)."""
import ast
import copy
from pathlib import Path

import pytest
import torch
from torch import nn

import sparsetrain
from sparsetrain.errors import ConfigError
from sparsetrain.flops import _counter_for, count_flops, register_counter
from sparsetrain.registry import METHODS
from sparsetrain.sparsity import backend
from sparsetrain.sparsity.backend import SparseEngine, build_sparse_engine, use_dense_backend, use_sparse_backend
from sparsetrain.sparsity.engine import SparsityEngine
from sparsetrain.sparsity.methods.base import Method
from sparsetrain.sparsity.methods.rigl import RigL
from sparsetrain.sparsity.storage import STORAGES, BackendPolicy, GrowScores, LayerStore, MaskedDenseStore
from sparsetrain.sparsity.storage.csr import SparseLinear, SparseLSTM

SRC = Path(sparsetrain.__file__).parent
ALL_SPARSE = BackendPolicy(max_density=1.0, min_size=0, overrides={"*": "sparse"})


def model(seed=0):
    torch.manual_seed(seed)
    net = nn.Sequential(nn.Linear(12, 16), nn.ReLU(), nn.Linear(16, 5)).double()
    net.add_module("rnn", nn.LSTM(5, 4).double())  # forward does not use it: only its stores matter
    net.add_module("conv", nn.Conv2d(3, 4, 3, padding=1).double())  # run on its own by step()
    return net


def step(net):
    loss = net[:3](torch.randn(6, 12, dtype=torch.float64)).pow(2).sum()
    (loss + net.conv(torch.randn(2, 3, 5, 5, dtype=torch.float64)).pow(2).sum()).backward()


def engines():
    """(kind, engine, optimizer) with every layer in each kind of store: masked-dense and every
    registered storage (forced onto all layers it can take)."""
    out = []
    for kind in ["masked", *STORAGES]:
        net = model()
        opt = torch.optim.Adam(net.parameters(), lr=0.01)
        eng = SparsityEngine(net, opt, "set", sparsity=0.7, distribution="erk", total_steps=10, seed=1)
        if kind != "masked":
            eng._install(STORAGES.get(kind).compress(eng.model, eng.stores, ALL_SPARSE, opt, announce=False))
            assert any(s.compressed for s in eng.stores.values()), kind
        step(net)
        eng.step_optimizer()
        step(net)  # a gradient to read
        out.append((kind, eng, opt))
    return out


def dense(mask):
    return mask.to_dense() if mask.layout != torch.strided else mask


def state_of(opt, store):
    return {k: v for k, v in opt.state[store.param].items() if torch.is_tensor(v) and v.shape == store.param.shape}


@pytest.mark.parametrize("kind,eng,opt", engines(), ids=lambda v: v if isinstance(v, str) else "")
def test_every_store_keeps_the_contract(kind, eng, opt):
    for name, store in eng.stores.items():
        assert isinstance(store, LayerStore) and store.name == name
        mask = dense(store.mask)
        assert mask.dtype == torch.bool and tuple(mask.shape) == store.shape and store.numel == mask.numel()
        assert store.n_active() == int(mask.sum()) == store.active_values().numel()
        assert eng.param(name) is store.param and eng.is_compressed(name) == store.compressed
        if store.compressed:
            assert store.param.numel() == store.n_active()                    # optimizer state is nnz-sized
        else:
            assert bool((store.param.detach()[~mask] == 0).all())             # masked weights are zero
        rows = slice(1, 3)
        assert torch.equal(store.dense_grad_rows(rows), store.dense_grad().reshape(store.shape[0], -1)[rows])
        saved = copy.deepcopy(store.mask_state())
        store.load_mask(saved)
        assert torch.equal(dense(store.mask), mask)


@pytest.mark.parametrize("kind,eng,opt", engines(), ids=lambda v: v if isinstance(v, str) else "")
def test_every_store_updates_with_exact_counts_zero_init_and_zero_state(kind, eng, opt):
    g = torch.Generator().manual_seed(0)
    for name, store in eng.stores.items():
        mask, n = dense(store.mask).clone(), store.n_active()
        values = dict(zip(torch.nonzero(mask.reshape(-1)).squeeze(1).tolist(), store.active_values().tolist()))
        states = {k: dict(zip(values, store.active_values(v).tolist() if store.compressed else v[mask].tolist()))
                  for k, v in state_of(opt, store).items()}
        scores = torch.rand(store.shape, generator=g, dtype=torch.float64)
        grow = GrowScores(lambda: scores, lambda rows, n_cols: scores.reshape(-1, n_cols)[rows])
        fresh = store.update(2, 2, store.param.detach().abs(), grow, lambda t: t, opt)
        new = dense(store.mask)
        assert store.n_active() == n and int(new.sum()) == n                  # exact count
        positions = torch.nonzero(new.reshape(-1)).squeeze(1).tolist()
        assert fresh == len(set(positions) - set(values)) > 0
        after = dict(zip(positions, store.active_values().tolist()))
        for key, tensor in state_of(opt, store).items():
            got = dict(zip(positions, store.active_values(tensor).tolist() if store.compressed
                           else tensor[new].tolist()))
            assert all(got[p] == (states[key][p] if p in values else 0.0) for p in positions), key
        assert all(after[p] == (values[p] if p in values else 0.0) for p in positions)
        target = torch.rand(store.shape, generator=g) < 0.5
        store.set_mask(target, opt)
        assert torch.equal(dense(store.mask), target) and store.n_active() == int(target.sum())


def test_every_way_to_build_an_engine_goes_through_init(monkeypatch):
    calls = []
    original = SparsityEngine.__init__

    def counting(self, *args, **kwargs):
        calls.append(self)
        original(self, *args, **kwargs)

    monkeypatch.setattr(SparsityEngine, "__init__", counting)
    a = SparsityEngine(model(), None, "set", sparsity=0.8, total_steps=10)
    b = SparseEngine(model(), None, "set", sparsity=0.8, total_steps=10, max_density=1.0, min_size=0)
    c = SparsityEngine.from_sparse_model(nn.Sequential(SparseLinear.random(8, 6, 0.3)), None, "set", total_steps=10)
    d = SparseEngine.from_sparse_model(nn.Sequential(SparseLSTM.random(4, 3, 0.5)), None, "rigl", total_steps=10)
    assert calls == [a, b, c, d]
    assert use_sparse_backend(a.model, a, min_size=0, max_density=1.0) is a and a.layers  # same object
    assert use_dense_backend(a.model, a) is a and not a.layers
    assert len(calls) == 4 and all(type(e) is SparsityEngine for e in calls)
    assert not SparsityEngine.__subclasses__() and not isinstance(SparseEngine, type)
    assert not hasattr(SparsityEngine, "from_engine")


def test_a_model_built_sparse_needs_no_sparsity_and_a_dense_one_does():
    eng = SparsityEngine.from_sparse_model(nn.Sequential(SparseLinear.random(8, 6, 0.25)), None, "set",
                                           total_steps=10)
    assert eng.densities == {"0.weight": 12 / 48} and eng.config["distribution"] == "custom"
    with pytest.raises(ConfigError, match="sparsity .* is required"):
        SparsityEngine(model(), None, "set", total_steps=10)


def test_methods_declare_whether_they_run_on_compressed_stores():
    assert backend.compressible_methods() == ["gmp", "rigl", "set", "snfs", "static"]
    assert Method.runs_on_compressed is False
    refused = [n for n in METHODS.names() if n not in backend.compressible_methods()]
    assert "snip" in refused
    for name in refused:
        with pytest.raises(ConfigError) as err:
            build_sparse_engine(model(), None, name, device=torch.device("cpu"), world=1, backend_options={},
                                sparsity=0.8, total_steps=10)
        message = str(err.value)
        assert "\n" not in message and f"use sparsity.backend=masked for '{name}'" in message


def test_whole_layer_grow_scores_get_the_default_row_hook():
    class Negative(RigL):  # overrides the whole-layer scores only: RigL's row hook would score |grad|
        def grow_scores(self, engine, name):
            self.calls += 1
            return -engine.dense_grad(name).abs()

    assert Negative.grow_scores_rows is Method.grow_scores_rows and RigL.grow_scores_rows is not Method.grow_scores_rows
    eng = SparsityEngine(model(), None, "rigl", sparsity=0.5, total_steps=10)
    method = Negative()
    method.calls = 0
    name = "2.weight"
    eng.param(name).grad = torch.randn(eng.stores[name].shape, dtype=torch.float64)
    blocks = [method.grow_scores_rows(eng, name, slice(r, min(5, r + 2)), 16) for r in range(0, 5, 2)]
    assert torch.equal(torch.cat(blocks), -eng.param(name).grad.abs())
    assert method.calls == 1                                                 # once per layer, not per block


def test_compressed_layers_count_their_own_flops_through_the_registry():
    torch.manual_seed(0)
    lin = nn.Linear(40, 30)
    mask = torch.rand(30, 40) < 0.2
    sparse = nn.Sequential(SparseLinear.from_dense(lin, mask))
    ref = count_flops(nn.Sequential(lin), (40,), {"0.weight": float(mask.double().mean())})
    got = count_flops(sparse, (40,))
    assert got.sparse == pytest.approx(ref.sparse) and got.dense == ref.dense

    class Twice(nn.Linear):
        pass

    def twice(m, inputs, output, density):
        return [("", tuple(m.weight.shape), 1.0, 2, 2.0)]

    assert _counter_for(Twice(2, 2)) is _counter_for(nn.Linear(2, 2))       # isinstance: the base rule
    register_counter(Twice, twice)
    assert _counter_for(Twice(2, 2)) is twice and _counter_for(nn.Linear(2, 2)) is not twice


def _imports(path: Path) -> set:
    tree = ast.parse(path.read_text())
    out = set()
    for node in ast.walk(tree):
        if isinstance(node, ast.ImportFrom):
            out.add("." * node.level + (node.module or ""))
        elif isinstance(node, ast.Import):
            out.update(a.name for a in node.names)
    return out


def test_layering_of_flops_storage_and_the_compat_module():
    assert not any("sparse" in m or "sparsity" in m for m in _imports(SRC / "flops.py"))
    for path in (SRC / "sparsity").rglob("*.py"):
        for m in _imports(path):
            assert not m.endswith(".sparse") and m != "sparsetrain.sparse", (path, m)
    import sparsetrain.sparse as compat
    for name in ("use_sparse_backend", "use_dense_backend", "export_sparse", "load_sparse", "SparseLinear",
                 "SparseLSTM", "SparseGRU", "SparseEngine"):
        assert getattr(compat, name) is not None


def test_masks_view_reads_and_writes_the_stores():
    eng = SparsityEngine(model(), None, "set", sparsity=0.8, total_steps=10)
    name = "0.weight"
    new = torch.zeros(16, 12, dtype=torch.bool)
    new[0, :3] = True
    eng.masks[name] = new
    assert eng.stores[name].mask is new and isinstance(eng.stores[name], MaskedDenseStore)
    eng.apply_masks()
    assert int((eng.param(name) != 0).sum()) <= 3
    use_sparse_backend(eng.model, eng, min_size=0, max_density=1.0)
    with pytest.raises(ConfigError, match="set_masks"):
        eng.masks[name] = new
