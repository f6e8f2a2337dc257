"""Compressed convolutions: the sparse conv map and its gradients equal F.conv2d with the masked
dense weight; training on the conv storage matches the masked-dense engine step for step."""
import pytest
import torch
import torch.nn.functional as F
from torch import nn

from sparsetrain.flops import count_flops
from sparsetrain.sparsity.backend import SparseEngine
from sparsetrain.sparsity.engine import SparsityEngine
from sparsetrain.sparsity.storage import BackendPolicy
from sparsetrain.sparsity.storage.conv import SparseConv2d
from sparsetrain.sparsity.storage.conv.functional import from_chwn, sparseprop_supports, to_chwn
from sparsetrain.sparsity.storage.csr import native
from sparsetrain.sparsity.storage.csr import export_sparse, load_sparse

from test_sparse_backend import adam, assert_same_state, sgd, train
from helpers import ROOT, cifar10_tree

GEOMETRIES = [dict(), dict(stride=2, padding=1), dict(padding=(2, 1), dilation=(2, 1), stride=(1, 2)),
              dict(padding=0, stride=3)]
HAS_SPARSEPROP = sparseprop_supports(SparseConv2d.random(2, 2, 3, 0.5).geometry, torch.float32)


def check_against_dense(kernel, dtype, geometry, batch, kernel_size=3, tol=1e-10):
    torch.manual_seed(0)
    conv = nn.Conv2d(3, 5, kernel_size, **geometry).to(dtype)
    mask = torch.rand_like(conv.weight) < 0.4
    layer = SparseConv2d.from_dense(conv, mask)
    layer.kernel = kernel
    x = torch.randn(batch, 3, 9, 8, dtype=dtype, requires_grad=True)
    w = (conv.weight.detach() * mask).requires_grad_()
    ref = F.conv2d(x, w, conv.bias, **geometry)
    y = layer(x)
    assert torch.allclose(y, ref, atol=tol)
    g = torch.randn_like(y)
    gx, gv, gb = torch.autograd.grad(y, (x, layer.values, layer.bias), g)
    rx, rw, rb = torch.autograd.grad(ref, (x, w, conv.bias), g)
    assert torch.allclose(gx, rx, atol=tol) and torch.allclose(gb, rb, atol=tol)
    assert torch.allclose(gv, rw.reshape(-1)[layer.flat_indices()], atol=tol)   # only at the nonzeros
    return layer


@pytest.mark.parametrize("geometry", GEOMETRIES, ids=str)
def test_mkl_conv_matches_dense_float64(geometry):
    check_against_dense("mkl", torch.float64, geometry, batch=3)


@pytest.mark.skipif(not HAS_SPARSEPROP, reason="sparseprop not installed")
@pytest.mark.parametrize("kernel", ["auto", "sparseprop"])
@pytest.mark.parametrize("batch", [1, 5, 16])
@pytest.mark.parametrize("geometry", GEOMETRIES[:2], ids=str)
def test_sparseprop_conv_matches_dense_float32(geometry, batch, kernel):
    layer = check_against_dense(kernel, torch.float32, geometry, batch, tol=1e-4)
    assert layer.uses_sparseprop()
    if layer.plan().route(torch.zeros(batch, 3, 9, 8)) is not None:  # else the unfold path also cached Wᵀ's structure
        assert layer.index_bytes() == 4 * (6 + layer.nnz) + 2 * 5 * 4 + 2 * layer.nnz   # CSR + sparseprop's


@pytest.mark.skipif(not HAS_SPARSEPROP, reason="sparseprop not installed")
def test_auto_kernel_sends_batches_sparseprop_handles_badly_to_the_unfold_path():
    # sparseprop's batch kernels want a multiple of 8 examples; under "auto" another batch takes its
    # column kernel (stride 1, more than 14 output columns) or is padded (at most a quarter of zero
    # examples), else it runs on unfold + native/MKL, as 1x1 kernels on small maps always do
    def routes(layer, side, batches=(1, 7, 8, 12, 15, 16, 30)):
        return [layer.plan().route(torch.zeros(n, 4, side, side)) for n in batches]
    s1, s2 = SparseConv2d.random(4, 4, 3, 0.5, padding=1), SparseConv2d.random(4, 4, 3, 0.5, stride=2, padding=1)
    assert routes(s2, 32) == [None, "padded", "batch", None, "padded", "batch", "padded"]  # pads 7,1,0,4,1,0,2
    assert routes(s1, 15) == ["columns", "columns", "batch", "columns", "columns", "batch", "columns"]
    assert routes(s1, 14) == [None, "padded", "batch", None, "padded", "batch", "padded"]
    pointwise = SparseConv2d.random(4, 4, 1, 0.5)
    assert routes(pointwise, 14) == [None] * 7
    assert routes(pointwise, 15)[:3] == ["columns", "columns", "batch"]
    pointwise.kernel = "sparseprop"
    assert routes(pointwise, 14)[:3] == ["columns", "columns", "batch"]
    s2.kernel = "sparseprop"                                       # asked for by name: every batch
    assert routes(s2, 32)[:2] == ["padded", "padded"]
    s1.kernel = "sparseprop"
    assert routes(s1, 7)[:2] == ["columns", "columns"]
    s2.kernel = "auto"
    assert s2.plan().unfold() == ("native" if native.available() else "mkl")


@pytest.mark.skipif(not native.available(), reason="the native kernels were not built")
@pytest.mark.parametrize("batch", [1, 5])
@pytest.mark.parametrize("geometry", GEOMETRIES, ids=str)
def test_native_conv_matches_dense_float32(geometry, batch):
    layer = check_against_dense("native", torch.float32, geometry, batch, tol=1e-4)
    assert layer.plan().pattern.kernel == "native"


@pytest.mark.skipif(not native.available(), reason="the native kernels were not built")
def test_auto_conv_kernel_takes_native_where_sparseprop_does_not_cover_the_layer():
    layer = SparseConv2d.random(2, 3, 3, 0.5, dilation=2)          # dilated: not sparseprop's
    assert not layer.uses_sparseprop() and layer.plan().pattern.kernel == "native"
    assert SparseConv2d.random(2, 3, 3, 0.5, dtype=torch.float64).plan().pattern.kernel == "mkl"


def test_gradcheck_and_unsupported_geometry_falls_back():
    torch.manual_seed(0)
    layer = SparseConv2d.random(2, 3, (2, 3), 0.5, dtype=torch.float64, stride=(2, 1), padding=1)
    assert not layer.uses_sparseprop()                      # float64, non-square: unfold + MKL
    x = torch.randn(2, 2, 5, 4, dtype=torch.float64, requires_grad=True)
    assert torch.autograd.gradcheck(lambda x, v, b: F.conv2d(x, _dense(layer, v), b, stride=(2, 1), padding=1)
                                    - layer(x), (x, layer.values, layer.bias))  # identically zero
    assert torch.autograd.gradcheck(lambda x, v: SparseConv2d.forward(layer, x), (x, layer.values))
    assert layer(x[0]).shape == layer(x[:1]).shape[1:]      # unbatched input
    with pytest.raises(ValueError):
        SparseConv2d.from_dense(nn.Conv2d(4, 4, 3, groups=2))


def _dense(layer, v):
    w = torch.zeros(layer.n_rows * layer.n_cols, dtype=v.dtype).index_put((layer.flat_indices(),), v)
    return w.view(layer.weight_shape)


def test_to_conv_random_init_and_flops():
    layer = SparseConv2d.random(16, 32, 3, 0.1, padding=1, generator=torch.Generator().manual_seed(1))
    assert layer.nnz == round(0.1 * 32 * 16 * 9) and layer.values.abs().max() <= 1 / (16 * 9) ** 0.5
    conv = layer.to_conv()
    x = torch.randn(2, 16, 6, 6)
    assert torch.allclose(conv(x), layer(x), atol=1e-5)
    got = count_flops(nn.Sequential(layer), (16, 6, 6))
    ref = count_flops(nn.Sequential(conv), (16, 6, 6), {"0.weight": layer.density})
    assert got.sparse == pytest.approx(ref.sparse) and got.dense == ref.dense


# --- step-for-step equivalence with the masked-dense engine --------------------------------------
def convnet(seed=0):
    torch.manual_seed(seed)
    return nn.Sequential(nn.Conv2d(3, 8, 3, padding=1), nn.BatchNorm2d(8), nn.ReLU(),
                         nn.Conv2d(8, 12, 3, stride=2, padding=1, bias=False), nn.ReLU(),
                         nn.Conv2d(12, 10, 1), nn.ReLU(), nn.AdaptiveAvgPool2d(1), nn.Flatten(),
                         nn.Linear(10, 5)).double()


def image_batches(n, seed=1):
    g = torch.Generator().manual_seed(seed)
    return [(torch.randn(6, 3, 8, 8, generator=g, dtype=torch.float64), torch.randint(0, 5, (6,), generator=g))
            for _ in range(n)]


def conv_pair(method, make_opt, **kw):
    opts = dict(sparsity=0.7, distribution="erk", total_steps=40, seed=3, **kw)
    a, b = convnet(), convnet()
    oa, ob = make_opt(a), make_opt(b)
    ea = SparsityEngine(a, oa, method, **opts)
    eb = SparseEngine(b, ob, method, max_density=1.0, min_size=0, conv_min_size=0, conv_kernel="mkl", block_elems=50,
                      overrides={"9.*": "dense"}, **opts)
    return (a, oa, ea), (b, ob, eb)


@pytest.mark.parametrize("method,make_opt,options", [
    ("rigl", sgd, {"delta_t": 3}), ("rigl", adam, {"delta_t": 3}), ("set", sgd, {"delta_t": 3}),
    ("static", adam, {}), ("snfs", sgd, {"delta_t": 3}),
    ("gmp", sgd, {"start": 1, "end": 9, "frequency": 2}),
], ids=lambda v: v if isinstance(v, str) else getattr(v, "__name__", "-"))
def test_conv_training_matches_masked_dense(method, make_opt, options):
    dense, sparse = conv_pair(method, make_opt, **options)
    assert {type(m) for m in sparse[2].layers.values()} == {SparseConv2d} and len(sparse[2].layers) == 3
    assert_same_state(dense, sparse, all_compressed=False)
    data = image_batches(10)                                          # updates at steps 3, 6, 9
    train(dense[0], dense[2], dense[1], data)
    train(sparse[0], sparse[2], sparse[1], data)
    if method != "static":
        assert sparse[2].last_update["per_layer"] == dense[2].last_update["per_layer"]
    assert_same_state(dense, sparse, all_compressed=False)
    for name, ema in dense[2].method.state_dict().get("ema", {}).items():
        assert torch.allclose(sparse[2].method.ema[name], ema, atol=1e-12), name


def test_rigl_conv_grow_scores_are_the_dense_gradient_by_blocks():
    dense, sparse = conv_pair("rigl", sgd, delta_t=3)
    x, y = image_batches(1)[0]
    name = "3.weight"
    sparse[2].stores[name].prepare_step(capture=True)   # as the engine does before an update step
    for model, engine, _ in (dense, sparse):
        nn.functional.cross_entropy(model(x), y).backward()
    want = dense[2].dense_grad(name)
    assert torch.allclose(sparse[2].dense_grad(name), want, atol=1e-12)
    assert torch.allclose(sparse[2].dense_grad_rows(name, slice(2, 5)), want.reshape(12, -1)[2:5], atol=1e-12)


def test_policy_leaves_grouped_small_and_uncovered_convs_masked():
    def net():
        return nn.Sequential(nn.Conv2d(16, 16, 3, groups=16), nn.Conv2d(16, 16, 3), nn.Conv2d(16, 64, 3),
                             nn.Conv2d(64, 64, 3, dilation=2))

    eng = SparseEngine(net(), None, "static", sparsity=0.95, distribution="uniform", dense_first=False)
    # grouped: unsupported; 16·16·9 < conv_min_size; dilated: sparseprop does not cover it (auto kernel)
    assert set(eng.layers) == ({"2.weight"} if HAS_SPARSEPROP else set())
    eng = SparseEngine(net(), None, "static", sparsity=0.95, distribution="uniform", dense_first=False,
                       conv_kernel="mkl", conv_min_size=0)
    assert set(eng.layers) == {"1.weight", "2.weight", "3.weight"}
    with pytest.raises(Exception):
        BackendPolicy(conv_kernel="cuda")


def test_conv_export_load_and_densify_round_trip(tmp_path):
    (a, oa, ea), (b, ob, eb) = conv_pair("rigl", sgd, delta_t=3)
    train(b, eb, ob, image_batches(4))
    b.eval()
    x = image_batches(1, seed=5)[0][0]
    with torch.no_grad():
        ref = b(x)
    export_sparse(b, tmp_path / "c.safetensors", masks=eb.masks)
    ckpt = load_sparse(tmp_path / "c.safetensors")
    assert ckpt.shapes["3.weight"] == (12, 8, 3, 3)
    fresh = convnet(seed=7).eval()
    ckpt.load_into(fresh)
    assert isinstance(fresh[3], SparseConv2d) and fresh[3].nnz == eb.layers["3.weight"].nnz
    with torch.no_grad():
        assert torch.allclose(fresh(x), ref, atol=1e-10)
    from sparsetrain.sparsity.backend import use_dense_backend
    use_dense_backend(b, eb)
    assert not eb.layers and isinstance(b[3], nn.Conv2d)
    with torch.no_grad():
        assert torch.allclose(b(x), ref, atol=1e-10)


def test_cli_trains_the_wrn_config_on_the_sparse_backend(tmp_path):
    """``--set sparsity.backend=sparse`` on the WRN-22-2 CIFAR-10 config (tiny real-format files):
    the wide convolutions are compressed, grouped ones are not present, the run completes."""
    import json
    from sparsetrain.cli import main

    cifar10_tree(tmp_path / "data", per_batch=8)
    config = ROOT / "configs" / "cifar10_wrn22_2_rigl.toml"
    before = torch.get_num_threads()
    try:
        assert main(["train", "--quiet", "--config", str(config), "--data-dir", str(tmp_path / "data"),
                     "--out-dir", str(tmp_path / "runs"), "--set", "train.steps=3", "--set", "data.batch_size=8",
                     "--set", "train.eval_every=3", "--set", "sparsity.sparsity=0.95",
                     "--set", 'sparsity.options={"delta_t": 2, "end": 3}', "--set", "sparsity.backend=sparse"]) == 0
    finally:
        torch.set_num_threads(before)
    (run,) = [p for p in (tmp_path / "runs").iterdir() if p.is_dir()]
    summary = json.loads((run / "summary.json").read_text())
    convs = [n for n, v in summary["layers"].items() if len(v["shape"]) == 4]
    assert summary["backend"] == "sparse"
    assert set(convs) & set(summary["compressed_layers"]) and len(summary["compressed_layers"]) >= 10


# --- built sparse from the start ---------------------------------------------------------------
def test_build_sparse_creates_compressed_layers_with_the_plans_counts_and_init():
    from sparsetrain.sparsity.distributions import plan_densities
    from sparsetrain.sparsity.storage.build import build_sparse
    from sparsetrain.sparsity.storage.csr import SparseLinear

    def factory():
        return nn.Sequential(nn.Conv2d(3, 64, 3, padding=1), nn.BatchNorm2d(64), nn.ReLU(),
                             nn.Conv2d(64, 64, 3, padding=1), nn.Conv2d(64, 64, 3, groups=64), nn.ReLU(),
                             nn.AdaptiveAvgPool2d(1), nn.Flatten(), nn.Linear(64, 300), nn.Linear(300, 10))

    with torch.device("meta"):
        plan = plan_densities(factory(), 0.9, "erk")
    model = build_sparse(factory, 0.9, "erk", init="cnn", seed=1)
    assert not any(t.is_meta for t in list(model.parameters()) + list(model.buffers()))
    assert isinstance(model[3], SparseConv2d) and isinstance(model[8], SparseLinear)
    assert type(model[4]) is nn.Conv2d                                  # grouped: built dense
    assert model[3].nnz == plan.counts["3.weight"] and model[8].nnz == plan.counts["8.weight"]
    assert bool((model[1].weight == 1).all()) and bool((model[3].bias == 0).all())   # the cnn init rule
    std = (2 / (64 * 9)) ** 0.5                                        # kaiming-normal, fan-out
    assert 0.8 * std < float(model[3].values.detach().std()) < 1.2 * std
    opt = torch.optim.SGD(model.parameters(), lr=0.1, momentum=0.9)
    engine = SparsityEngine(model, opt, "rigl", total_steps=10, delta_t=1)
    assert {"3.weight", "8.weight", "9.weight"} <= set(engine.layers)
    nn.functional.cross_entropy(model(torch.randn(4, 3, 8, 8)), torch.tensor([0, 1, 2, 3])).backward()
    engine.step_optimizer()
    assert engine.layers["3.weight"].nnz == plan.counts["3.weight"]


@pytest.mark.skipif(not HAS_SPARSEPROP, reason="sparseprop not installed")
@pytest.mark.parametrize("batch", [5, 16])
def test_in_place_layers_may_follow_a_sparse_conv(batch):
    layer = SparseConv2d.random(4, 8, 3, 0.3, padding=1, stride=2)
    x = torch.randn(batch, 4, 6, 6, requires_grad=True)
    nn.Sequential(layer, nn.ReLU(inplace=True))(x).sum().backward()
    assert x.grad is not None and layer.values.grad is not None


def test_layout_copies_match_the_permutes_and_never_alias():
    x = torch.randn(5, 3, 4, 6)
    xt = to_chwn(x)
    assert torch.equal(xt, x.permute(1, 2, 3, 0)) and xt.is_contiguous()
    assert torch.equal(from_chwn(xt), x) and torch.equal(from_chwn(xt, 2), x[:2])
    one = torch.randn(1, 3, 4, 6)         # a batch of one is already in C×H×W×N order: read through a view,
    assert to_chwn(one).data_ptr() == one.data_ptr()    # but a layer's output is always a tensor of its own
    assert torch.equal(from_chwn(to_chwn(one)), one) and from_chwn(to_chwn(one)).data_ptr() != one.data_ptr()


@pytest.mark.skipif(not HAS_SPARSEPROP, reason="sparseprop not installed")
@pytest.mark.parametrize("batch", [1, 3, 8])
def test_sparseprop_inference_and_bias_only_gradients(batch):
    layer = SparseConv2d.random(4, 6, 3, 0.5, padding=1)
    layer.kernel = "sparseprop"
    conv = layer.to_conv()
    x = torch.randn(batch, 4, 16, 16)
    with torch.no_grad():                             # no C×H×W×N copy kept for a backward pass
        assert torch.allclose(layer(x), conv(x), atol=1e-5)
    layer.values.requires_grad_(False)                # only the bias trains: the backward still runs
    layer(x).sum().backward()
    conv(x).sum().backward()
    assert torch.allclose(layer.bias.grad, conv.bias.grad, atol=1e-4)
